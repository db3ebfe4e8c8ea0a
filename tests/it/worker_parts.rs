//! The worker's provisioning building blocks against real things: hostile archives extracted on a
//! real filesystem next to a sentinel directory, the binary cache downloading from a real HTTP
//! server from 8 threads and 8 processes, and the provider cache, CLI configuration and backend
//! override used by real Terraform.

mod archive;
mod binary_cache;
mod terraform;
