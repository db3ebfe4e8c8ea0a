//! scalr-agent library: every role of the binary lives here so integration tests can drive it.

pub mod install;
pub mod ipc;
pub mod probe;
pub mod runner;
