//! The shared tool binary cache (`$SCALR_AGENT_CACHE_DIR/binaries`): provisions a tool release
//! (terraform, tofu, ...) once per cache, however many pods share the volume, and cleans it up.
//!
//! Called on the worker's main thread while it provisions a run; the download itself is injected
//! (the platform client in production, a test server in tests). Layout:
//!
//! ```text
//! binaries/<tool>/<version>/<tool>      the executable (0755), complete once visible
//! binaries/<tool>/<version>/.sha256     the checksum of the download it came from
//! binaries/<tool>/<version>.lock        advisory lock: exclusive = writing or removing,
//!                                       shared = a run is using this binary (its lease)
//! binaries/<tool>/.tmp-…                staging of a download in progress (same filesystem)
//! ```
//!
//! **Provisioning** takes the shared lock and returns at once if the version is present with the
//! expected checksum. Otherwise it takes the exclusive lock, checks again (another pod may have just
//! finished), downloads into a staging directory while hashing, verifies, fsyncs, renames the
//! staging directory to `<version>` and fsyncs the parent, so a partial binary is never visible
//! under its final name. It then goes back to the shared lock and hands it to the caller as the
//! lease in [`CachedBinary`], held for as long as the run uses the binary.
//!
//! **Cleanup** takes each version's lock without waiting; a version whose lock is held (a lease, or a
//! download) is in use and never removed. Of the others, versions unused for more than
//! `SCALR_AGENT_BINARY_CACHE_THRESHOLD_DAYS` are removed, then the least recently used until the
//! cache fits `SCALR_AGENT_BINARY_CACHE_SIZE_LIMIT_MB` (soft: binaries in use may keep it above).
//! "Used" is the version directory's mtime, set at every provisioning. Lock files are kept (a few
//! bytes per version ever used): removing a lock file another process has open would let two
//! processes believe they hold the same lock.
//!
//! **Locks** are `flock(2)` through `std::fs::File::lock*`: they work between processes and pods on
//! one node (emptyDir, hostPath, local volumes). On NFS the Linux client turns `flock` into NFS
//! byte-range locks, which work across nodes when the server supports locking (NFSv4, or NFSv3 with
//! lockd) and silently stay node-local with the `nolock` mount option; other ReadWriteMany drivers
//! (CephFS, EFS, Azure Files) vary. Without working cross-node locks two pods may download the same
//! version at once: each writes its own staging directory and the renames are atomic, so the result
//! is still one complete binary, but cleanup on one node can then remove a binary a pod on another
//! node is using.
//!
//! Archive formats: a plain executable or a `.tar.gz` holding it. Zip archives (HashiCorp's release
//! format) are refused with [`BinaryCacheError::UnsupportedFormat`]: reading them needs a zip crate.

mod unpack;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::checksum::{self, HashingWriter};
use super::eviction::{self, Candidate, Policy};
use crate::config::settings::BinaryCache as BinaryCacheSettings;

/// The cache's directory under `SCALR_AGENT_CACHE_DIR`.
pub const BINARIES_DIR: &str = "binaries";
/// Largest download accepted: 2 GiB.
pub const MAX_DOWNLOAD_BYTES: u64 = 2 << 30;
/// Longest wait for another process's download or cleanup to finish: 15 minutes.
pub const LOCK_WAIT: Duration = Duration::from_secs(15 * 60);
/// Staging directories older than this belong to a crashed process and are removed by cleanup.
pub const STALE_STAGING: Duration = Duration::from_secs(24 * 3600);
/// Times provisioning starts over when a version vanishes between two locks (cleanup raced it).
const ATTEMPTS: u32 = 3;
/// Name of the checksum file inside a version directory.
const SHA256_FILE: &str = ".sha256";

/// What a download closure returns on failure.
pub type DownloadError = Box<dyn std::error::Error + Send + Sync>;

/// A tool release to provision, as the platform describes it.
#[derive(Clone, Copy, Debug)]
pub struct ToolRelease<'a> {
    /// `terraform`, `tofu`, ...: also the executable's name.
    pub tool: &'a str,
    pub version: &'a str,
    /// SHA-256 (hex) of the download: the plain binary or the archive.
    pub sha256: &'a str,
}

/// A provisioned binary and its lease: while this value lives, cleanup never removes it.
#[derive(Debug)]
pub struct CachedBinary {
    path: PathBuf,
    downloaded: bool,
    _lease: File,
}

impl CachedBinary {
    /// The executable.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this call downloaded it (false: it was already cached).
    pub fn downloaded(&self) -> bool {
        self.downloaded
    }
}

/// What [`BinaryCache::cleanup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// `(tool, version)` of every version removed.
    pub removed: Vec<(String, String)>,
    /// Versions kept because a run or a download holds them.
    pub in_use: Vec<(String, String)>,
    /// Bytes in the cache before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The shared binary cache.
#[derive(Clone, Debug)]
pub struct BinaryCache {
    root: PathBuf,
    settings: BinaryCacheSettings,
}

impl BinaryCache {
    /// The cache under `cache_dir` (`SCALR_AGENT_CACHE_DIR`) with the configured limits.
    pub fn new(cache_dir: &Path, settings: &BinaryCacheSettings) -> Self {
        BinaryCache {
            root: cache_dir.join(BINARIES_DIR),
            settings: settings.clone(),
        }
    }

    /// `$CACHE_DIR/binaries`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the cached binary of `release`, downloading it with `download` (which writes the
    /// release's bytes into the writer it is given) if no pod has yet. Blocks while another process
    /// downloads the same version, at most [`LOCK_WAIT`].
    pub fn provision(
        &self,
        release: &ToolRelease<'_>,
        download: &mut dyn FnMut(&mut dyn Write) -> Result<(), DownloadError>,
    ) -> Result<CachedBinary, BinaryCacheError> {
        check_name("tool", release.tool)?;
        check_name("version", release.version)?;
        let expected = checksum::parse_sha256(release.sha256).ok_or_else(|| {
            BinaryCacheError::InvalidChecksum {
                tool: release.tool.to_string(),
                given: release.sha256.chars().take(80).collect(),
            }
        })?;
        let tool_dir = self.root.join(release.tool);
        make_dirs(&tool_dir)?;
        let lock_path = tool_dir.join(format!("{}.lock", release.version));
        let lock = open_lock(&lock_path)?;
        let version_dir = tool_dir.join(release.version);
        let binary = version_dir.join(release.tool);
        let lock_error = |source| BinaryCacheError::Lock {
            path: lock_path.clone(),
            source,
        };
        let mut downloaded = false;
        for _ in 0..ATTEMPTS {
            acquire(&lock, &lock_path, true)?;
            if is_cached(&version_dir, &binary, &expected) {
                touch(&version_dir);
                return Ok(CachedBinary {
                    path: binary,
                    downloaded,
                    _lease: lock,
                });
            }
            lock.unlock().map_err(lock_error)?;
            acquire(&lock, &lock_path, false)?;
            if !is_cached(&version_dir, &binary, &expected) {
                // A version with another checksum (republished): nobody holds it, we do.
                remove_dir(&tool_dir, &version_dir)?;
                let staging = fetch(&tool_dir, release, &expected, download)?;
                std::fs::rename(&staging, &version_dir).map_err(|source| {
                    let _ = std::fs::remove_dir_all(&staging);
                    BinaryCacheError::Write {
                        path: version_dir.clone(),
                        source,
                    }
                })?;
                sync_dir(&tool_dir)?;
                downloaded = true;
            }
            lock.unlock().map_err(lock_error)?;
        }
        Err(BinaryCacheError::Contended {
            tool: release.tool.to_string(),
            version: release.version.to_string(),
        })
    }

    /// Removes versions unused for longer than the threshold, then the least recently used until
    /// the cache fits its size limit; never a version in use. Leftover staging directories of
    /// crashed processes go too.
    pub fn cleanup(&self, now: SystemTime) -> Result<CleanupReport, BinaryCacheError> {
        let mut report = CleanupReport::default();
        let mut held = Vec::new(); // (tool_dir, version, lock held exclusively or None if in use)
        let mut items = Vec::new();
        for tool in list_dir(&self.root)? {
            let tool_dir = self.root.join(&tool);
            if tool.starts_with('.') || !tool_dir.is_dir() {
                continue;
            }
            for name in list_dir(&tool_dir)? {
                let path = tool_dir.join(&name);
                if name.starts_with(".tmp-") || name.starts_with(".trash-") {
                    let age = mtime(&path).and_then(|t| now.duration_since(t).ok());
                    if name.starts_with(".trash-") || age.is_some_and(|a| a > STALE_STAGING) {
                        let _ = std::fs::remove_dir_all(&path);
                    }
                    continue;
                }
                if name.starts_with('.') || name.ends_with(".lock") || !path.is_dir() {
                    continue;
                }
                let lock_path = tool_dir.join(format!("{name}.lock"));
                let lock = open_lock(&lock_path)?;
                let lock = match lock.try_lock() {
                    Ok(()) => Some(lock),
                    Err(std::fs::TryLockError::WouldBlock) => None,
                    Err(std::fs::TryLockError::Error(source)) => {
                        return Err(BinaryCacheError::Lock {
                            path: lock_path,
                            source,
                        });
                    }
                };
                let size = dir_size(&path);
                report.bytes_before += size;
                if lock.is_none() {
                    report.in_use.push((tool.clone(), name.clone()));
                }
                items.push(Candidate {
                    size,
                    last_used: mtime(&path).unwrap_or(now),
                    pinned: lock.is_none(),
                });
                held.push((tool_dir.clone(), tool.clone(), name, lock));
            }
        }
        let policy = Policy {
            size_limit: self.settings.size_limit_mb.saturating_mul(1 << 20),
            max_idle: Some(Duration::from_secs(
                u64::from(self.settings.threshold_days) * 86_400,
            )),
            min_idle: Duration::ZERO,
        };
        let chosen = eviction::plan(&items, &policy, now);
        report.bytes_after = report.bytes_before;
        for i in chosen {
            let (tool_dir, tool, version, _lock) = &held[i];
            remove_dir(tool_dir, &tool_dir.join(version))?;
            report.bytes_after -= items[i].size;
            report.removed.push((tool.clone(), version.clone()));
        }
        Ok(report)
    }
}

/// Downloads into a fresh staging directory and leaves the verified executable there as `<tool>`
/// with its `.sha256`; the staging directory is removed on any failure.
fn fetch(
    tool_dir: &Path,
    release: &ToolRelease<'_>,
    expected: &str,
    download: &mut dyn FnMut(&mut dyn Write) -> Result<(), DownloadError>,
) -> Result<PathBuf, BinaryCacheError> {
    let staging = Staging::create(tool_dir, release.version)?;
    let dir = staging.path.clone();
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BinaryCacheError::Write { path, source }
    };
    let raw = dir.join(".download");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&raw)
        .map_err(write_error(&raw))?;
    let mut out = HashingWriter::new(BufWriter::new(file), MAX_DOWNLOAD_BYTES);
    if let Err(source) = download(&mut out).and_then(|()| out.flush().map_err(Into::into)) {
        return Err(if out.over_limit() {
            BinaryCacheError::TooLarge {
                tool: release.tool.to_string(),
                version: release.version.to_string(),
                limit: MAX_DOWNLOAD_BYTES,
            }
        } else {
            BinaryCacheError::Download {
                tool: release.tool.to_string(),
                version: release.version.to_string(),
                source,
            }
        });
    }
    let (writer, actual) = out.finish();
    if actual != expected {
        return Err(BinaryCacheError::ChecksumMismatch {
            tool: release.tool.to_string(),
            version: release.version.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    drop(writer);
    let binary = dir.join(release.tool);
    unpack::into_binary(&raw, &binary, release)?;
    let file = File::open(&binary).map_err(write_error(&binary))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(write_error(&binary))?;
    file.sync_all().map_err(write_error(&binary))?;
    let sum = dir.join(SHA256_FILE);
    let mut f = File::create(&sum).map_err(write_error(&sum))?;
    f.write_all(expected.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(write_error(&sum))?;
    sync_dir(&dir)?;
    Ok(staging.keep())
}

/// A staging directory removed on drop unless kept.
struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Staging {
    fn create(tool_dir: &Path, version: &str) -> Result<Staging, BinaryCacheError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = tool_dir.join(format!(".tmp-{version}-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => return Ok(Staging { path, keep: false }),
                // Another pod with the same pid (pid namespaces): take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(BinaryCacheError::Write { path, source }),
            }
        }
    }

    fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn is_cached(version_dir: &Path, binary: &Path, expected: &str) -> bool {
    std::fs::read_to_string(version_dir.join(SHA256_FILE)).is_ok_and(|sum| sum.trim() == expected)
        && std::fs::symlink_metadata(binary).is_ok_and(|m| m.is_file())
}

/// Takes the shared or the exclusive lock, waiting at most [`LOCK_WAIT`]: a stuck holder must not
/// stall a run forever. Polls because `flock` has no timeout.
fn acquire(lock: &File, path: &Path, shared: bool) -> Result<(), BinaryCacheError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let attempt = if shared {
            lock.try_lock_shared()
        } else {
            lock.try_lock()
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(BinaryCacheError::LockTimeout {
                    path: path.to_path_buf(),
                    waited: LOCK_WAIT,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(BinaryCacheError::Lock {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn open_lock(path: &Path) -> Result<File, BinaryCacheError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| BinaryCacheError::Lock {
            path: path.to_path_buf(),
            source,
        })
}

fn make_dirs(path: &Path) -> Result<(), BinaryCacheError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| BinaryCacheError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Renames `dir` away (atomic: readers see it or nothing) and deletes it; no-op if missing.
fn remove_dir(tool_dir: &Path, dir: &Path) -> Result<(), BinaryCacheError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let trash = tool_dir.join(format!(
        ".trash-{}-{}-{}",
        name.unwrap_or_default(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    match std::fs::rename(dir, &trash) {
        Ok(()) => std::fs::remove_dir_all(&trash).map_err(|source| BinaryCacheError::Cleanup {
            path: trash,
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BinaryCacheError::Cleanup {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), BinaryCacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| BinaryCacheError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Marks a version as just used (its directory's mtime). Best effort: a read-only cache still
/// serves binaries, it only ages them wrongly.
fn touch(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.set_modified(SystemTime::now())) {
        log::debug!("could not mark {} as used: {e}", dir.display());
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
}

/// Names in `dir`, sorted (reports list versions in a stable order); none if it is missing.
fn list_dir(dir: &Path) -> Result<Vec<String>, BinaryCacheError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(BinaryCacheError::Cleanup {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Tool names and versions become path components: letters, digits, `.`, `_`, `-`, `+`, not
/// starting with `.`, at most 128 characters.
fn check_name(what: &'static str, value: &str) -> Result<(), BinaryCacheError> {
    let ok = (1..=128).contains(&value.len())
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(BinaryCacheError::InvalidName {
            what,
            value: value.chars().take(80).collect(),
        })
    }
}

mod error;
pub use error::BinaryCacheError;

#[cfg(test)]
mod tests;
