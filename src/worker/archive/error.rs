//! [`ArchiveError`]: every way a configuration version can be refused, each naming the member and
//! the rule, with a message that tells the user what to change in their upload.

use std::io;
use std::path::PathBuf;

/// How to build an archive the agent accepts; appended to messages about the archive's shape.
const HOW_TO: &str = "create the upload from inside the configuration directory, e.g. \
                      `tar czf config.tar.gz -C <dir> .`";

/// Why a configuration version was not extracted. After any of these the run directory holds
/// nothing from the archive.
#[derive(Debug)]
pub enum ArchiveError {
    /// The expected checksum is not a SHA-256 hex digest.
    InvalidChecksum { given: String },
    /// The run directory could not be created, opened or is not empty.
    PrepareRunDir { path: PathBuf, detail: String },
    /// Reading the download failed.
    Download { source: io::Error },
    /// The compressed upload is larger than allowed.
    CompressedTooLarge { limit: u64 },
    /// The stream is not a valid gzip-compressed tar archive.
    Corrupt { detail: String },
    /// Member headers (long names, PAX records) or data after the end of the archive exceed the
    /// metadata allowance.
    MetadataTooLarge { limit: u64 },
    /// More members than allowed.
    TooManyEntries { limit: u64 },
    /// One member is larger than allowed.
    EntryTooLarge {
        entry: String,
        size: u64,
        limit: u64,
    },
    /// The members together are larger than allowed.
    TotalTooLarge { entry: String, limit: u64 },
    /// A member path starts with `/`.
    AbsolutePath { entry: String },
    /// A member path contains `..`.
    ParentTraversal { entry: String },
    /// A member path is too long, too deep, has an over-long name, or names the root itself.
    InvalidPath { entry: String, rule: String },
    /// A member would be written through a symbolic link or a file.
    NotADirectory { entry: String, component: String },
    /// A symbolic link's target is absolute, empty, loops or resolves outside the run directory.
    LinkEscapes {
        entry: String,
        target: String,
        rule: &'static str,
    },
    /// A hard link does not name a regular file extracted earlier inside the run directory.
    HardLinkTarget {
        entry: String,
        target: String,
        rule: &'static str,
    },
    /// A character or block device.
    DeviceFile { entry: String, kind: &'static str },
    /// A named pipe.
    Fifo { entry: String },
    /// A member type the agent does not extract (sparse files, vendor extensions).
    UnsupportedType { entry: String, type_byte: u8 },
    /// Two members with the same path.
    Duplicate { entry: String },
    /// Writing into the run directory failed.
    Write { entry: String, source: io::Error },
    /// The download does not have the checksum the platform recorded for it.
    ChecksumMismatch { expected: String, actual: String },
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ArchiveError::*;
        match self {
            InvalidChecksum { given } => write!(
                f,
                "the platform sent {given:?} as the configuration version's checksum, which is \
                 not a SHA-256 hex digest; this is a platform fault, retry the run"
            ),
            PrepareRunDir { path, detail } => write!(
                f,
                "cannot prepare run directory {}: {detail}; check the data volume (free space, \
                 permissions)",
                path.display()
            ),
            Download { source } => write!(
                f,
                "downloading the configuration version failed: {source}; retry the run"
            ),
            CompressedTooLarge { limit } => write!(
                f,
                "configuration version rejected: the upload is larger than {limit} bytes; remove \
                 large files (build artefacts, .terraform directories) from the upload"
            ),
            Corrupt { detail } => write!(
                f,
                "configuration version rejected: not a valid gzip-compressed tar archive \
                 ({detail}); {HOW_TO}"
            ),
            MetadataTooLarge { limit } => write!(
                f,
                "configuration version rejected: member headers (long names, PAX records) or \
                 data after the end of the archive exceed {limit} bytes; {HOW_TO}"
            ),
            TooManyEntries { limit } => write!(
                f,
                "configuration version rejected: more than {limit} members; remove generated \
                 files and vendored directories from the upload"
            ),
            EntryTooLarge { entry, size, limit } => write!(
                f,
                "configuration version rejected: member {entry:?} is {size} bytes, more than the \
                 {limit} allowed for one file; keep large artefacts out of the configuration"
            ),
            TotalTooLarge { entry, limit } => write!(
                f,
                "configuration version rejected: at member {entry:?} the files exceed {limit} \
                 bytes in total; keep large artefacts out of the configuration"
            ),
            AbsolutePath { entry } => write!(
                f,
                "configuration version rejected: member {entry:?} has an absolute path; paths \
                 must be relative to the configuration directory; {HOW_TO}"
            ),
            ParentTraversal { entry } => write!(
                f,
                "configuration version rejected: member {entry:?} climbs out with \"..\"; paths \
                 must stay inside the configuration directory; {HOW_TO}"
            ),
            InvalidPath { entry, rule } => write!(
                f,
                "configuration version rejected: member {entry:?}: {rule}"
            ),
            NotADirectory { entry, component } => write!(
                f,
                "configuration version rejected: member {entry:?} would be written through \
                 {component:?}, which is a symbolic link or a file; members may only be placed \
                 in real directories"
            ),
            LinkEscapes {
                entry,
                target,
                rule,
            } => write!(
                f,
                "configuration version rejected: symbolic link {entry:?} -> {target:?} {rule}; \
                 links must point at relative paths inside the configuration directory"
            ),
            HardLinkTarget {
                entry,
                target,
                rule,
            } => write!(
                f,
                "configuration version rejected: hard link {entry:?} -> {target:?} {rule}; \
                 hard links must name a regular file that appears earlier in the archive"
            ),
            DeviceFile { entry, kind } => write!(
                f,
                "configuration version rejected: member {entry:?} is a {kind}; device files \
                 cannot be part of a configuration"
            ),
            Fifo { entry } => write!(
                f,
                "configuration version rejected: member {entry:?} is a named pipe (FIFO); pipes \
                 cannot be part of a configuration"
            ),
            UnsupportedType { entry, type_byte } => write!(
                f,
                "configuration version rejected: member {entry:?} has tar type {:?}, which the \
                 agent does not extract (only files, directories and links); {HOW_TO}",
                char::from(*type_byte)
            ),
            Duplicate { entry } => write!(
                f,
                "configuration version rejected: member {entry:?} appears more than once; \
                 create the archive in one pass"
            ),
            Write { entry, source } => write!(
                f,
                "extracting member {entry:?} failed: {source}; check the data volume (free \
                 space, permissions)"
            ),
            ChecksumMismatch { expected, actual } => write!(
                f,
                "configuration version rejected: its SHA-256 is {actual}, the platform recorded \
                 {expected}; the download was corrupted or the upload changed, retry the run"
            ),
        }
    }
}

impl std::error::Error for ArchiveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArchiveError::Download { source } | ArchiveError::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A member path as shown in messages (which print it with `{:?}`, escaping control characters):
/// at most 200 characters.
pub(super) fn display_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() > 200 {
        let mut short: String = text.chars().take(200).collect();
        short.push('…');
        short
    } else {
        text.into_owned()
    }
}
