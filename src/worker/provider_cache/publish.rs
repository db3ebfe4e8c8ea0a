//! The I/O of the provider cache: scanning a plugin cache or the mirror, copying verified packages
//! through the staging directory on `provider-copy-N` threads, and evicting.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::{
    LockedProvider, MIN_IDLE, PackageId, ProviderCache, ProviderCacheError, PublishReport,
    SkipReason, dirhash,
};
use crate::worker::eviction::{self, Candidate, Policy};

/// Every package below `root` (`<host>/<ns>/<type>/<version>/<platform>`), sorted. The first four
/// levels must be real directories; the platform level may be a symbolic link (Terraform links
/// plugin-cache entries to mirror packages). Names starting with `.` are skipped.
fn packages(root: &Path) -> Result<Vec<(PackageId, PathBuf)>, ProviderCacheError> {
    let mut found = Vec::new();
    let mut level: Vec<(Vec<String>, PathBuf)> = vec![(Vec::new(), root.to_path_buf())];
    for depth in 0..5 {
        let mut next = Vec::new();
        for (names, dir) in level {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound && depth == 0 => return Ok(found),
                Err(source) => return Err(ProviderCacheError::Scan { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| ProviderCacheError::Scan {
                    path: dir.clone(),
                    source,
                })?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if name.starts_with('.') || !(kind.is_dir() || (depth == 4 && kind.is_symlink())) {
                    continue;
                }
                let mut names = names.clone();
                names.push(name);
                next.push((names, entry.path()));
            }
        }
        level = next;
    }
    for (names, path) in level {
        found.push((
            PackageId {
                address: names[..3].join("/").to_ascii_lowercase(),
                version: names[3].clone(),
                platform: names[4].clone(),
            },
            path,
        ));
    }
    found.sort();
    Ok(found)
}

fn target_of(cache: &ProviderCache, id: &PackageId) -> PathBuf {
    cache
        .mirror
        .join(&id.address)
        .join(&id.version)
        .join(&id.platform)
}

enum Copied {
    Published,
    Present,
}

pub(super) fn publish(
    cache: &ProviderCache,
    plugin_cache_dir: &Path,
    locked: &[LockedProvider],
    trusted_roots: &[PathBuf],
) -> Result<PublishReport, ProviderCacheError> {
    let mut report = PublishReport::default();
    let mut tasks = Vec::new();
    for (id, path) in packages(plugin_cache_dir)? {
        let Some(lock) = locked
            .iter()
            .find(|l| l.address == id.address && l.version == id.version)
        else {
            report.skipped.push((id, SkipReason::NotInLockFile));
            continue;
        };
        let target = target_of(cache, &id);
        if target.is_dir() {
            touch(&target);
            report.present.push(id);
            continue;
        }
        tasks.push((
            id,
            path,
            lock.h1_hashes().map(str::to_string).collect::<Vec<_>>(),
        ));
    }
    if tasks.is_empty() {
        return Ok(report);
    }
    std::fs::create_dir_all(&cache.staging).map_err(|source| ProviderCacheError::Prepare {
        path: cache.staging.clone(),
        source,
    })?;
    // Links may lead into the plugin cache itself or a root the caller trusts, compared after
    // resolving every link on the way.
    let mut roots = vec![plugin_cache_dir.to_path_buf()];
    roots.extend(trusted_roots.iter().cloned());
    let roots: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();

    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let workers = (cache.settings.concurrency.max(1) as usize).min(tasks.len());
    let spawned = std::thread::scope(|scope| -> io::Result<()> {
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("provider-copy-{i}"))
                .spawn_scoped(scope, || {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some((id, path, hashes)) = tasks.get(k) else {
                            break;
                        };
                        let outcome = copy_one(cache, id, path, hashes, &roots);
                        results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((k, outcome));
                    }
                })?;
        }
        Ok(())
    });
    spawned.map_err(|source| ProviderCacheError::Spawn { source })?;
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(k, _)| *k);
    for (k, outcome) in results {
        let id = tasks[k].0.clone();
        match outcome {
            Ok(Copied::Published) => report.published.push(id),
            Ok(Copied::Present) => report.present.push(id),
            Err(reason) => {
                log::info!("provider {id} not cached: {reason:?}");
                report.skipped.push((id, reason));
            }
        }
    }
    Ok(report)
}

fn io_skip(e: io::Error) -> SkipReason {
    SkipReason::Io(e.to_string())
}

fn copy_one(
    cache: &ProviderCache,
    id: &PackageId,
    path: &Path,
    hashes: &[String],
    roots: &[PathBuf],
) -> Result<Copied, SkipReason> {
    let target = target_of(cache, id);
    let source = std::fs::canonicalize(path).map_err(io_skip)?;
    if std::fs::canonicalize(&target).is_ok_and(|t| t == source) {
        return Ok(Copied::Present);
    }
    if !roots.iter().any(|root| source.starts_with(root)) {
        return Err(SkipReason::UntrustedLink);
    }
    if hashes.is_empty() {
        return Err(SkipReason::NoH1Hash);
    }
    let bytes = tree_size(&source)?;
    let limit = cache.settings.size_limit_mb.saturating_mul(1 << 20);
    if bytes > limit {
        return Err(SkipReason::TooLarge { bytes });
    }
    let staging = unique_dir(&cache.staging, "copy").map_err(io_skip)?;
    let result = (|| {
        let mut files = Vec::new();
        copy_tree(&source, &staging, "", &mut files)?;
        let computed = dirhash::h1_from_files(&mut files);
        if !hashes.contains(&computed) {
            return Err(SkipReason::HashMismatch { computed });
        }
        let parent = target.parent().expect("a package path has five components");
        std::fs::create_dir_all(parent).map_err(io_skip)?;
        match std::fs::rename(&staging, &target) {
            Ok(()) => {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io_skip)?;
                Ok(Copied::Published)
            }
            // Another pod published it first: theirs is as good as ours.
            Err(e) if target.is_dir() => {
                log::debug!("provider {id} published concurrently ({e})");
                Ok(Copied::Present)
            }
            Err(e) => Err(io_skip(e)),
        }
    })();
    if !matches!(result, Ok(Copied::Published)) {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Copies regular files and directories from `src` into the new directory `dst`, collecting each
/// file's path (relative, `/`-separated) and the SHA-256 of the bytes written.
fn copy_tree(
    src: &Path,
    dst: &Path,
    prefix: &str,
    files: &mut Vec<(String, [u8; 32])>,
) -> Result<(), SkipReason> {
    for entry in std::fs::read_dir(src).map_err(io_skip)? {
        let entry = entry.map_err(io_skip)?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| !n.contains('\n')) else {
            return Err(SkipReason::NotRegular);
        };
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(io_skip)?;
        let to = dst.join(name);
        if kind.is_dir() {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&to)
                .map_err(io_skip)?;
            copy_tree(&entry.path(), &to, &rel, files)?;
        } else if kind.is_file() {
            let digest = copy_file(&entry.path(), &to).map_err(io_skip)?;
            files.push((rel, digest));
        } else {
            return Err(SkipReason::NotRegular);
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> io::Result<[u8; 32]> {
    let mut input = File::open(from)?;
    let executable = input.metadata()?.permissions().mode() & 0o111 != 0;
    let mut output = OpenOptions::new().write(true).create_new(true).open(to)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
    }
    output.set_permissions(std::fs::Permissions::from_mode(if executable {
        0o755
    } else {
        0o644
    }))?;
    output.sync_all()?;
    Ok(hasher.finalize().into())
}

/// Total size of the regular files below `dir`; anything else makes the package unusable.
fn tree_size(dir: &Path) -> Result<u64, SkipReason> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(io_skip)? {
        let entry = entry.map_err(io_skip)?;
        let kind = entry.file_type().map_err(io_skip)?;
        if kind.is_dir() {
            total += tree_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata().map_err(io_skip)?.len();
        } else {
            return Err(SkipReason::NotRegular);
        }
    }
    Ok(total)
}

fn unique_dir(parent: &Path, what: &str) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{what}-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o755).create(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            other => return other.map(|()| path),
        }
    }
}

/// Marks a package as used now. Best effort: failing only makes it look older.
fn touch(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.set_modified(SystemTime::now())) {
        log::debug!("could not mark {} as used: {e}", dir.display());
    }
}

pub(super) fn evict(
    cache: &ProviderCache,
    now: SystemTime,
) -> Result<Vec<PackageId>, ProviderCacheError> {
    let found: Vec<_> = packages(&cache.mirror)?
        .into_iter()
        .filter(|(_, path)| std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()))
        .collect();
    let items: Vec<Candidate> = found
        .iter()
        .map(|(_, path)| Candidate {
            size: tree_size(path).unwrap_or(0),
            last_used: std::fs::metadata(path)
                .and_then(|m| m.modified())
                .unwrap_or(now),
            pinned: false,
        })
        .collect();
    let policy = Policy {
        size_limit: cache.settings.size_limit_mb.saturating_mul(1 << 20),
        max_idle: None,
        min_idle: MIN_IDLE,
    };
    remove_stale_staging(cache, now);
    let mut evicted = Vec::new();
    for i in eviction::plan(&items, &policy, now) {
        let (id, path) = &found[i];
        std::fs::create_dir_all(&cache.staging).map_err(|source| ProviderCacheError::Prepare {
            path: cache.staging.clone(),
            source,
        })?;
        let trash =
            unique_dir(&cache.staging, "evict").map_err(|source| ProviderCacheError::Evict {
                path: path.clone(),
                source,
            })?;
        let moved = trash.join("package");
        match std::fs::rename(path, &moved) {
            Ok(()) => {}
            // Another pod evicted it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = std::fs::remove_dir(&trash);
                continue;
            }
            Err(source) => {
                let _ = std::fs::remove_dir(&trash);
                return Err(ProviderCacheError::Evict {
                    path: path.clone(),
                    source,
                });
            }
        }
        std::fs::remove_dir_all(&trash).map_err(|source| ProviderCacheError::Evict {
            path: trash.clone(),
            source,
        })?;
        evicted.push(id.clone());
    }
    Ok(evicted)
}

/// Removes staging directories a crashed process left behind (older than [`MIN_IDLE`]).
fn remove_stale_staging(cache: &ProviderCache, now: SystemTime) {
    let Ok(entries) = std::fs::read_dir(&cache.staging) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > MIN_IDLE));
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
