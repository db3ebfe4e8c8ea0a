//! [`BinaryCacheError`]: why a tool binary could not be provisioned or the cache not cleaned.

use std::path::PathBuf;
use std::time::Duration;

use super::DownloadError;

/// Why provisioning or cleanup failed.
#[derive(Debug)]
pub enum BinaryCacheError {
    /// The tool or version is not a safe path component.
    InvalidName { what: &'static str, value: String },
    /// The expected checksum is not a SHA-256 hex digest.
    InvalidChecksum { tool: String, given: String },
    /// Opening or taking a lock file failed.
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process held the lock for longer than we wait.
    LockTimeout { path: PathBuf, waited: Duration },
    /// The download failed.
    Download {
        tool: String,
        version: String,
        source: DownloadError,
    },
    /// The download or the binary in it is larger than allowed.
    TooLarge {
        tool: String,
        version: String,
        limit: u64,
    },
    /// The download does not have the expected checksum; nothing was cached.
    ChecksumMismatch {
        tool: String,
        version: String,
        expected: String,
        actual: String,
    },
    /// The download is an archive format the agent cannot read yet.
    UnsupportedFormat {
        tool: String,
        version: String,
        format: &'static str,
    },
    /// The `.tar.gz` is corrupt.
    Unpack {
        tool: String,
        version: String,
        detail: String,
    },
    /// The `.tar.gz` holds no regular file named like the tool.
    MemberMissing { tool: String, version: String },
    /// Writing into the cache failed.
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Removing from the cache failed.
    Cleanup {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The version vanished between our locks every time (cleanup racing us).
    Contended { tool: String, version: String },
}

impl std::fmt::Display for BinaryCacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use BinaryCacheError::*;
        match self {
            InvalidName { what, value } => write!(
                f,
                "the platform sent {value:?} as a tool {what}; only letters, digits, '.', '_', \
                 '-' and '+' are accepted (a platform fault: report it)"
            ),
            InvalidChecksum { tool, given } => write!(
                f,
                "the platform sent {given:?} as the checksum of {tool}, which is not a SHA-256 \
                 hex digest (a platform fault: retry the run)"
            ),
            Lock { path, source } => write!(
                f,
                "cannot lock {}: {source}; is the cache volume mounted read-write and does it \
                 support file locks?",
                path.display()
            ),
            LockTimeout { path, waited } => write!(
                f,
                "waited {}s for another process holding {}; a pod may be stuck downloading on \
                 the shared cache, retry the run",
                waited.as_secs(),
                path.display()
            ),
            Download {
                tool,
                version,
                source,
            } => write!(
                f,
                "downloading {tool} {version} failed: {source}; retry the run"
            ),
            TooLarge {
                tool,
                version,
                limit,
            } => write!(
                f,
                "{tool} {version} is larger than {limit} bytes; the agent refuses it"
            ),
            ChecksumMismatch {
                tool,
                version,
                expected,
                actual,
            } => write!(
                f,
                "{tool} {version} downloaded with SHA-256 {actual}, expected {expected}; the \
                 download was corrupted or tampered with, nothing was cached; retry the run"
            ),
            UnsupportedFormat {
                tool,
                version,
                format,
            } => write!(
                f,
                "{tool} {version} is served as a {format} archive, which this agent cannot \
                 unpack yet; serve the plain binary or a .tar.gz"
            ),
            Unpack {
                tool,
                version,
                detail,
            } => write!(f, "{tool} {version}: corrupt .tar.gz ({detail})"),
            MemberMissing { tool, version } => {
                write!(f, "the {tool} {version} archive holds no file named {tool}")
            }
            Write { path, source } => write!(
                f,
                "cannot write {}: {source}; check the cache volume (free space, permissions)",
                path.display()
            ),
            Cleanup { path, source } => write!(
                f,
                "cannot remove {} from the binary cache: {source}",
                path.display()
            ),
            Contended { tool, version } => write!(
                f,
                "{tool} {version} kept disappearing from the cache while provisioning it \
                 (cleanup on another pod?); retry the run"
            ),
        }
    }
}

impl std::error::Error for BinaryCacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BinaryCacheError::Lock { source, .. }
            | BinaryCacheError::Write { source, .. }
            | BinaryCacheError::Cleanup { source, .. } => Some(source),
            BinaryCacheError::Download { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
