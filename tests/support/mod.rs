//! Test support shared by the integration tests: an HTTP/TLS test server, a test PKI, a CONNECT
//! proxy and the Kubernetes API simulator built on them.

pub mod http_server;
pub mod kube_sim;
pub mod pki;
pub mod proxy;
