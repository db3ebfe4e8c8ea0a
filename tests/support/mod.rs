//! Test support shared by the integration tests: an HTTP/TLS test server, a test PKI and a CONNECT
//! proxy. The platform and Kubernetes simulators build on these.

pub mod http_server;
pub mod pki;
pub mod proxy;
