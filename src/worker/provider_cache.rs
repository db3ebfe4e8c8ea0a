//! The shared provider cache: a Terraform filesystem mirror (unpacked layout) under
//! `$SCALR_AGENT_CACHE_DIR/providers` that later runs install from.
//!
//! Each run gets its own `TF_PLUGIN_CACHE_DIR`; after a successful `terraform init` the worker calls
//! [`ProviderCache::publish`] on its main thread, which copies into the mirror the packages from
//! that plugin cache that are **verified**: recorded in the run's `.terraform.lock.hcl` at the same
//! version and with an `h1:` hash equal to the hash of the copied files (see [`dirhash`]). Copies
//! run on `SCALR_AGENT_PROVIDER_CACHE_CONCURRENCY` named threads. Each package is copied into a
//! staging directory on the same volume (`$CACHE_DIR/.providers-staging`), hashed as it is copied,
//! fsynced and renamed into place, so Terraform never sees a partial package; a package another pod
//! published first is left alone. Layout, as Terraform expects of an unpacked mirror:
//!
//! ```text
//! providers/<hostname>/<namespace>/<type>/<version>/<os>_<arch>/terraform-provider-<type>_v<version>…
//! ```
//!
//! **Size.** `SCALR_AGENT_PROVIDER_CACHE_SIZE_LIMIT_MB` is soft: after publishing, the least
//! recently used packages (a package's directory mtime, set when published and whenever a run uses
//! it) are removed until the mirror fits, but never one used within [`MIN_IDLE`]: Terraform links a
//! run's plugin cache to mirror packages instead of copying them, so a package may be in use by a
//! running plan without any lock we could see.
//!
//! **Trust.** The lock file comes from the run directory, which the run's own hooks can write, so
//! runs sharing a cache volume share trust: a run can only publish packages whose files match the
//! hashes in its own lock file, but a hostile run could write a lock file matching a hostile
//! package. A workspace with a committed lock file is protected (Terraform checks the mirror's
//! package against it); give mutually distrusting workspaces separate agent pools or caches.
//! Symbolic links in the plugin cache are followed only into the plugin cache itself or the
//! `trusted_roots` the caller names (the mirrors it configured), never elsewhere, so a hook cannot
//! make the worker copy a file such as a mounted Secret.

pub mod dirhash;
pub mod lock_file;
mod publish;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::settings::ProviderCache as ProviderCacheSettings;
pub use lock_file::LockedProvider;

/// The mirror's directory under `SCALR_AGENT_CACHE_DIR`.
pub const PROVIDERS_DIR: &str = "providers";
/// Staging for copies in progress, under `SCALR_AGENT_CACHE_DIR` (same volume, outside the mirror).
pub const STAGING_DIR: &str = ".providers-staging";
/// The lock file's name in the run's working directory.
pub const LOCK_FILE_NAME: &str = ".terraform.lock.hcl";
/// A package used more recently than this is never evicted: 24 hours, longer than a run lasts.
pub const MIN_IDLE: Duration = Duration::from_secs(24 * 3600);

/// A provider package: one platform of one version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId {
    /// `hostname/namespace/type`, lower-case.
    pub address: String,
    pub version: String,
    /// `os_arch`, e.g. `linux_amd64`.
    pub platform: String,
}

impl std::fmt::Display for PackageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.address, self.version, self.platform)
    }
}

/// Why a package of the run's plugin cache was not published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The lock file does not select this provider version.
    NotInLockFile,
    /// The lock file has no `h1:` hash to check the files against.
    NoH1Hash,
    /// The files' hash is none of the lock file's.
    HashMismatch { computed: String },
    /// A symbolic link leading outside the plugin cache and the trusted roots.
    UntrustedLink,
    /// The package holds something other than files and directories.
    NotRegular,
    /// Larger than the whole cache may be.
    TooLarge { bytes: u64 },
    /// Reading or copying failed.
    Io(String),
}

/// What [`ProviderCache::publish`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Copied into the mirror by this call.
    pub published: Vec<PackageId>,
    /// Already in the mirror (marked as used).
    pub present: Vec<PackageId>,
    pub skipped: Vec<(PackageId, SkipReason)>,
    /// Removed afterwards to respect the size limit.
    pub evicted: Vec<PackageId>,
}

/// The shared provider mirror.
#[derive(Clone, Debug)]
pub struct ProviderCache {
    mirror: PathBuf,
    staging: PathBuf,
    settings: ProviderCacheSettings,
}

impl ProviderCache {
    /// The mirror under `cache_dir` (`SCALR_AGENT_CACHE_DIR`) with the configured limits.
    pub fn new(cache_dir: &Path, settings: &ProviderCacheSettings) -> Self {
        ProviderCache {
            mirror: cache_dir.join(PROVIDERS_DIR),
            staging: cache_dir.join(STAGING_DIR),
            settings: settings.clone(),
        }
    }

    /// `$CACHE_DIR/providers`: the `filesystem_mirror` path for the CLI configuration.
    pub fn mirror_dir(&self) -> &Path {
        &self.mirror
    }

    /// Whether the cache is enabled (`SCALR_AGENT_PROVIDER_CACHE_ENABLED`).
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Creates the mirror directory so Terraform can be pointed at it before anything is cached.
    pub fn ensure_dir(&self) -> Result<(), ProviderCacheError> {
        std::fs::create_dir_all(&self.mirror).map_err(|source| ProviderCacheError::Prepare {
            path: self.mirror.clone(),
            source,
        })
    }

    /// Publishes the verified packages of `plugin_cache_dir` (the run's `TF_PLUGIN_CACHE_DIR`)
    /// according to `lock_file` (the run's `.terraform.lock.hcl`; a missing one verifies nothing),
    /// then evicts to the size limit. Symbolic links are followed into `plugin_cache_dir` and
    /// `trusted_roots` only. Does nothing when the cache is disabled. Per-package problems are
    /// reported in [`PublishReport::skipped`]; only an unreadable lock file or mirror is an error.
    pub fn publish(
        &self,
        plugin_cache_dir: &Path,
        lock_file: &Path,
        trusted_roots: &[PathBuf],
    ) -> Result<PublishReport, ProviderCacheError> {
        if !self.settings.enabled {
            return Ok(PublishReport::default());
        }
        let locked = match std::fs::read_to_string(lock_file) {
            Ok(text) => lock_file::parse(&text).map_err(|e| ProviderCacheError::ParseLockFile {
                path: lock_file.to_path_buf(),
                line: e.line,
                detail: e.detail,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ProviderCacheError::ReadLockFile {
                    path: lock_file.to_path_buf(),
                    source,
                });
            }
        };
        self.ensure_dir()?;
        let mut report = publish::publish(self, plugin_cache_dir, &locked, trusted_roots)?;
        report.evicted = self.evict(SystemTime::now())?;
        Ok(report)
    }

    /// Removes least recently used packages idle for at least [`MIN_IDLE`] until the mirror fits
    /// its size limit; returns what it removed.
    pub fn evict(&self, now: SystemTime) -> Result<Vec<PackageId>, ProviderCacheError> {
        publish::evict(self, now)
    }
}

/// Why publishing or eviction failed as a whole.
#[derive(Debug)]
pub enum ProviderCacheError {
    /// The lock file exists but cannot be read.
    ReadLockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The lock file is not what Terraform writes.
    ParseLockFile {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    /// The mirror or staging directory cannot be created.
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Listing the plugin cache or the mirror failed.
    Scan {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Removing a package from the mirror failed.
    Evict {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A copy thread could not be started.
    Spawn { source: std::io::Error },
}

impl std::fmt::Display for ProviderCacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ProviderCacheError::*;
        match self {
            ReadLockFile { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ParseLockFile { path, line, detail } => write!(
                f,
                "{}:{line}: {detail}; the provider cache only trusts lock files written by \
                 terraform init (was it edited by a hook?)",
                path.display()
            ),
            Prepare { path, source } => write!(
                f,
                "cannot create {}: {source}; is the cache volume mounted read-write?",
                path.display()
            ),
            Scan { path, source } => write!(f, "cannot list {}: {source}", path.display()),
            Evict { path, source } => write!(
                f,
                "cannot remove {} from the provider cache: {source}",
                path.display()
            ),
            Spawn { source } => write!(f, "cannot start a provider copy thread: {source}"),
        }
    }
}

impl std::error::Error for ProviderCacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProviderCacheError::ReadLockFile { source, .. }
            | ProviderCacheError::Prepare { source, .. }
            | ProviderCacheError::Scan { source, .. }
            | ProviderCacheError::Evict { source, .. }
            | ProviderCacheError::Spawn { source } => Some(source),
            ProviderCacheError::ParseLockFile { .. } => None,
        }
    }
}
