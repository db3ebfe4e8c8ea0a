//! Test support shared by the integration tests: an HTTP/TLS test server, a test PKI, a CONNECT
//! proxy, the real tools (helm, kubectl, terraform) and the simulators (platform, Kubernetes API)
//! built on these. Each test binary or example uses a part of it, so unused items are expected.

#![allow(dead_code)]

pub mod http_server;
pub mod kube_sim;
pub mod pki;
pub mod platform_sim;
pub mod proxy;
pub mod tools;
