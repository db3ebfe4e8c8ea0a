//! Test support shared by the integration tests: an HTTP/TLS test server, a test PKI and a CONNECT
//! proxy, and the platform simulator built on them.

pub mod http_server;
pub mod pki;
pub mod platform_sim;
pub mod proxy;
