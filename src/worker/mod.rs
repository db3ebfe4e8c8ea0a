//! The worker's building blocks for provisioning a run: the configuration version archive, the
//! shared tool binary and provider caches, the Terraform CLI configuration and backend override, and
//! the `SCALR_AGENT_ENV` file hooks write. The worker role wires them to the platform client.

pub mod agent_env;
pub mod archive;
pub mod binary_cache;
mod checksum;
mod eviction;
pub mod provider_cache;
pub mod tf_config;
