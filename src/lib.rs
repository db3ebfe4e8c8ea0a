//! scalr-agent: one static binary that plays every role of a Scalr agent pool on Kubernetes.
//!
//! The library holds every role so integration tests drive the same code the binary runs; `main.rs`
//! only parses the command line and dispatches.

pub mod check;
pub mod config;
pub mod controller;
pub mod http;
pub mod install;
pub mod ipc;
pub mod kube;
pub mod logging;
pub mod model;
pub mod permissions;
pub mod platform;
pub mod probe;
pub mod runner;
pub mod secret;
pub mod shutdown;
pub mod threads;
pub mod version;
pub mod worker;
