//! Safe extraction of a configuration version (a `.tar.gz` upload) into the run directory.
//!
//! Runs on the worker's main thread while it provisions a run; receives the download as a `Read`
//! and the SHA-256 the platform recorded, and writes files only inside the run directory.
//!
//! **Checksum while streaming.** The compressed bytes are hashed as they arrive and extraction
//! proceeds at the same time; at the end the digest is compared and, on a mismatch (or any other
//! error), everything extracted is removed. We chose this over buffering the download to a temporary
//! file first because every entry is validated before it is written anyway, so unverified bytes can
//! only ever land inside the run directory, which nothing reads until `extract` returns `Ok`; and a
//! hostile stream (a member claiming 10 GB, a million members, a gzip bomb) is refused after reading
//! only its first bytes instead of after downloading and storing all of it.
//!
//! **Rules** (anything else is refused with an [`ArchiveError`] naming the member and the rule):
//! regular files, directories, symbolic links and hard links only — no devices, FIFOs or sparse
//! files; relative paths without `..`; a symbolic link's target, resolved from the link's directory
//! through the links the archive made, stays inside; a hard link names a regular file extracted
//! earlier; no member is written through a symbolic link (every path is walked with `O_NOFOLLOW`
//! from the run directory's descriptor, see `safe_fs`); files keep only their owner's permission
//! bits (no setuid/setgid/sticky, group or other bits; always owner-readable and writable);
//! directories are `0700`; size, count, path and metadata limits from [`Limits`]. GNU long names
//! and PAX records are decoded by the `tar` crate; we never call its `unpack`.

mod error;
mod safe_fs;
mod stream;
mod tree;

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;

pub use error::ArchiveError;
use error::display_name;
use stream::{Budgeted, Fault, HashingSource, Meter};
pub use tree::MAX_LINK_HOPS;
use tree::{Components, LinkProblem, Node, PathProblem, Tree};

/// Default limit on the files' total uncompressed size: 1 GiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 1 << 30;
/// Default limit on the number of members (directories and links count): 100,000.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// Default limit on one member's size: 512 MiB.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 512 << 20;
/// Default limit on the compressed download: 1 GiB.
pub const DEFAULT_MAX_COMPRESSED_BYTES: u64 = 1 << 30;
/// Default limit on a member path's length in bytes (Linux `PATH_MAX`).
pub const DEFAULT_MAX_PATH_BYTES: usize = 4096;
/// Default limit on a member path's depth in components.
pub const DEFAULT_MAX_DEPTH: usize = 128;
/// Decompressed bytes allowed between two members' data: the next header with its GNU long name or
/// PAX records, and after the last member, the end-of-archive blocks and padding. 1 MiB.
pub const METADATA_ALLOWANCE: u64 = 1 << 20;

/// Extraction limits; [`Limits::default`] holds the documented defaults, tests lower them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_total_bytes: u64,
    pub max_entries: u64,
    pub max_entry_bytes: u64,
    pub max_compressed_bytes: u64,
    pub max_path_bytes: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            max_compressed_bytes: DEFAULT_MAX_COMPRESSED_BYTES,
            max_path_bytes: DEFAULT_MAX_PATH_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// What an extraction produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// Members read, of every type.
    pub entries: u64,
    /// Regular files written (hard links included).
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// The verified SHA-256 of the download, lower-case hex.
    pub sha256: String,
}

/// Extracts the `.tar.gz` read from `source` into `run_dir` and verifies that the compressed bytes
/// have SHA-256 `expected_sha256` (hex).
///
/// `run_dir` must be missing (it is created, mode `0700`, its parent must exist) or empty. On any
/// error nothing from the archive remains: a directory this call created is removed, one that
/// existed is emptied again.
pub fn extract(
    source: &mut dyn Read,
    expected_sha256: &str,
    run_dir: &Path,
    limits: &Limits,
) -> Result<Extracted, ArchiveError> {
    let expected = super::checksum::parse_sha256(expected_sha256).ok_or_else(|| {
        ArchiveError::InvalidChecksum {
            given: display_name(expected_sha256.as_bytes()),
        }
    })?;
    let created = prepare_run_dir(run_dir)?;
    let result = extract_into(source, &expected, run_dir, limits);
    if result.is_err() {
        remove_extracted(run_dir, created);
    }
    result
}

fn prepare_run_dir(run_dir: &Path) -> Result<bool, ArchiveError> {
    let fail = |detail: String| ArchiveError::PrepareRunDir {
        path: run_dir.to_path_buf(),
        detail,
    };
    match std::fs::symlink_metadata(run_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut builder = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(run_dir).map_err(|e| fail(e.to_string()))?;
            Ok(true)
        }
        Err(e) => Err(fail(e.to_string())),
        Ok(meta) if !meta.is_dir() => Err(fail("it exists and is not a directory".into())),
        Ok(_) => {
            let mut children = std::fs::read_dir(run_dir).map_err(|e| fail(e.to_string()))?;
            if children.next().is_some() {
                return Err(fail("it is not empty".into()));
            }
            Ok(false)
        }
    }
}

/// Best effort: the error being reported matters more than a failed clean-up, which is logged.
fn remove_extracted(run_dir: &Path, created: bool) {
    let result = if created {
        std::fs::remove_dir_all(run_dir)
    } else {
        std::fs::read_dir(run_dir).and_then(|children| {
            for child in children {
                let path = child?.path();
                // `remove_dir_all` does not follow symbolic links.
                if std::fs::symlink_metadata(&path)?.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
            Ok(())
        })
    };
    if let Err(e) = result {
        log::warn!(
            "could not remove the rejected configuration version from {}: {e}",
            run_dir.display()
        );
    }
}

fn extract_into(
    source: &mut dyn Read,
    expected: &str,
    run_dir: &Path,
    limits: &Limits,
) -> Result<Extracted, ArchiveError> {
    let root = safe_fs::open_root(run_dir).map_err(|e| ArchiveError::PrepareRunDir {
        path: run_dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    let meter = Meter::new(METADATA_ALLOWANCE);
    let mut hashing = HashingSource::new(source, limits.max_compressed_bytes, meter.clone());
    let mut extractor = Extractor {
        root,
        tree: Tree::default(),
        limits,
        meter: meter.clone(),
        entries: 0,
        files: 0,
        bytes: 0,
    };
    {
        let decoder = GzDecoder::new(&mut hashing);
        let mut archive = tar::Archive::new(Budgeted::new(decoder, meter.clone()));
        let entries = archive.entries().map_err(|e| stream_error(&meter, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| stream_error(&meter, e))?;
            extractor.entry(&mut entry)?;
        }
        // Read the end-of-archive blocks and the rest of the gzip member: this checks its CRC and
        // length, and bounds trailing junk by the metadata allowance.
        meter.grant(METADATA_ALLOWANCE);
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_error(&meter, e))?;
    }
    // Whatever follows the gzip member is part of the download the checksum covers.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| stream_error(&meter, e))?;
    if let Some((link, target, problem)) = extractor.tree.escaping_links().into_iter().next() {
        return Err(link_error(&join(&link), &target, problem));
    }
    let actual = hashing.finish();
    if actual != expected {
        return Err(ArchiveError::ChecksumMismatch {
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(Extracted {
        entries: extractor.entries,
        files: extractor.files,
        bytes: extractor.bytes,
        sha256: actual,
    })
}

/// Classifies a read failure: the download, a limit, or a corrupt archive.
fn stream_error(meter: &Meter, e: io::Error) -> ArchiveError {
    match meter.take_fault() {
        Some(Fault::Source(source)) => ArchiveError::Download { source },
        Some(Fault::CompressedTooLarge { limit }) => ArchiveError::CompressedTooLarge { limit },
        Some(Fault::OverBudget) => ArchiveError::MetadataTooLarge {
            limit: METADATA_ALLOWANCE,
        },
        None => ArchiveError::Corrupt {
            detail: e.to_string(),
        },
    }
}

fn join(path: &[OsString]) -> String {
    let joined = path
        .iter()
        .map(|c| c.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    display_name(joined.as_bytes())
}

fn link_error(entry: &str, target: &Path, problem: LinkProblem) -> ArchiveError {
    ArchiveError::LinkEscapes {
        entry: entry.to_string(),
        target: display_name(target.as_os_str().as_encoded_bytes()),
        rule: match problem {
            LinkProblem::Absolute => "is absolute",
            LinkProblem::Escapes => "resolves outside the configuration directory",
            LinkProblem::Loop => "loops through too many links",
            LinkProblem::Empty => "has an empty target",
        },
    }
}

/// Per-extraction state: the run directory's descriptor, what was made so far, counters.
struct Extractor<'l> {
    root: OwnedFd,
    tree: Tree,
    limits: &'l Limits,
    meter: Rc<Meter>,
    entries: u64,
    files: u64,
    bytes: u64,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let name = display_name(&raw);
        let size = entry.size();
        if size > self.limits.max_entry_bytes {
            return Err(ArchiveError::EntryTooLarge {
                entry: name,
                size,
                limit: self.limits.max_entry_bytes,
            });
        }
        if self.bytes.saturating_add(size) > self.limits.max_total_bytes {
            return Err(ArchiveError::TotalTooLarge {
                entry: name,
                limit: self.limits.max_total_bytes,
            });
        }
        // This member's data, padded to the next block, then the next header(s).
        self.meter
            .grant(size.div_ceil(512) * 512 + METADATA_ALLOWANCE);

        let kind = entry.header().entry_type();
        match kind {
            EntryType::XGlobalHeader => return Ok(()), // PAX defaults: nothing we use
            EntryType::Char => return Err(device(name, "character device")),
            EntryType::Block => return Err(device(name, "block device")),
            EntryType::Fifo => return Err(ArchiveError::Fifo { entry: name }),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            other => {
                return Err(ArchiveError::UnsupportedType {
                    entry: name,
                    type_byte: other.as_byte(),
                });
            }
        }
        let path = self.check_path(&raw, &name)?;
        // Old archivers mark directories as regular files whose name ends in '/'.
        let is_dir = kind == EntryType::Directory || (kind.is_file() && raw.ends_with(b"/"));
        if is_dir {
            return self.open_dir(&path, &name).map(drop);
        }
        if path.is_empty() {
            return Err(ArchiveError::InvalidPath {
                entry: name,
                rule: "names the configuration directory itself but is not a directory".into(),
            });
        }
        match kind {
            EntryType::Symlink => self.symlink(entry, path, name),
            EntryType::Link => self.hard_link(entry, path, name),
            _ => self.file(entry, path, name, size),
        }
    }

    fn check_path(&self, raw: &[u8], name: &str) -> Result<Components, ArchiveError> {
        tree::check_path(raw, self.limits.max_path_bytes, self.limits.max_depth).map_err(
            |problem| {
                let entry = name.to_string();
                match problem {
                    PathProblem::Absolute => ArchiveError::AbsolutePath { entry },
                    PathProblem::ParentTraversal => ArchiveError::ParentTraversal { entry },
                    PathProblem::TooLong { limit } => ArchiveError::InvalidPath {
                        entry,
                        rule: format!("the path is longer than {limit} bytes"),
                    },
                    PathProblem::TooDeep { limit } => ArchiveError::InvalidPath {
                        entry,
                        rule: format!("the path is nested deeper than {limit} directories"),
                    },
                    PathProblem::NameTooLong => ArchiveError::InvalidPath {
                        entry,
                        rule: "a name in the path is longer than 255 bytes".into(),
                    },
                }
            },
        )
    }

    /// Opens (creating what is missing) the directory `path`, refusing links and files on the way.
    fn open_dir(&mut self, path: &[OsString], name: &str) -> Result<OwnedFd, ArchiveError> {
        let write_error = |source| ArchiveError::Write {
            entry: name.to_string(),
            source,
        };
        let mut fd = self.root.try_clone().map_err(write_error)?;
        for i in 0..path.len() {
            let component = &path[i];
            let opened = match safe_fs::open_dir(fd.as_fd(), component) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    safe_fs::make_dir(fd.as_fd(), component, 0o700).map_err(write_error)?;
                    self.tree.insert(path[..=i].to_vec(), Node::Dir);
                    safe_fs::open_dir(fd.as_fd(), component)
                }
                other => other,
            };
            fd = match opened {
                Ok(next) => next,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    return Err(ArchiveError::NotADirectory {
                        entry: name.to_string(),
                        component: join(&path[..=i]),
                    });
                }
                Err(e) => return Err(write_error(e)),
            };
        }
        Ok(fd)
    }

    fn parent_of(&mut self, path: &[OsString], name: &str) -> Result<OwnedFd, ArchiveError> {
        self.open_dir(&path[..path.len() - 1], name)
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: Components,
        name: String,
        size: u64,
    ) -> Result<(), ArchiveError> {
        let parent = self.parent_of(&path, &name)?;
        let last = &path[path.len() - 1];
        let mut file =
            safe_fs::create_file(parent.as_fd(), last).map_err(|e| created_error(e, &name))?;
        self.tree.insert(path.clone(), Node::File);
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| stream_error(&self.meter, e))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .map_err(|source| ArchiveError::Write {
                    entry: name.clone(),
                    source,
                })?;
            written += n as u64;
        }
        if written != size {
            return Err(ArchiveError::Corrupt {
                detail: format!("member {name:?} is cut short"),
            });
        }
        // Owner bits only, and always owner read/write: no setuid, setgid, sticky, group, other.
        let mode = (entry.header().mode().unwrap_or(0o644) & 0o700) | 0o600;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|source| ArchiveError::Write {
                entry: name.clone(),
                source,
            })?;
        self.files += 1;
        self.bytes += size;
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: Components,
        name: String,
    ) -> Result<(), ArchiveError> {
        let target = link_target(entry, &name)?;
        self.tree
            .check_link(&path, &target)
            .map_err(|problem| link_error(&name, &target, problem))?;
        let parent = self.parent_of(&path, &name)?;
        safe_fs::symlink(parent.as_fd(), &path[path.len() - 1], &target)
            .map_err(|e| created_error(e, &name))?;
        self.tree.insert(path, Node::Symlink(target));
        Ok(())
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: Components,
        name: String,
    ) -> Result<(), ArchiveError> {
        let target = link_target(entry, &name)?;
        let target_name = display_name(target.as_os_str().as_encoded_bytes());
        let refuse = |rule| ArchiveError::HardLinkTarget {
            entry: name.clone(),
            target: target_name.clone(),
            rule,
        };
        // Hard link targets are archive paths, relative to the archive's root.
        let source = tree::check_path(
            target.as_os_str().as_encoded_bytes(),
            self.limits.max_path_bytes,
            self.limits.max_depth,
        )
        .map_err(|_| refuse("points outside the configuration directory"))?;
        if self.tree.get(&source) != Some(&Node::File) {
            return Err(refuse("does not name a regular file extracted before it"));
        }
        let source_parent = self.parent_of(&source, &name)?;
        let parent = self.parent_of(&path, &name)?;
        safe_fs::hard_link(
            source_parent.as_fd(),
            &source[source.len() - 1],
            parent.as_fd(),
            &path[path.len() - 1],
        )
        .map_err(|e| created_error(e, &name))?;
        self.tree.insert(path, Node::File);
        self.files += 1;
        Ok(())
    }
}

fn device(entry: String, kind: &'static str) -> ArchiveError {
    ArchiveError::DeviceFile { entry, kind }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<PathBuf, ArchiveError> {
    match entry.link_name_bytes() {
        Some(bytes) => Ok(PathBuf::from(OsStr::from_bytes(&bytes))),
        None => Err(ArchiveError::Corrupt {
            detail: format!("link {name:?} has no target"),
        }),
    }
}

/// Maps a failure to create the last component: an existing name is a duplicate member.
fn created_error(e: io::Error, name: &str) -> ArchiveError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        ArchiveError::Duplicate {
            entry: name.to_string(),
        }
    } else {
        ArchiveError::Write {
            entry: name.to_string(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests;
