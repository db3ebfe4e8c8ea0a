//! Turns a verified download into the executable: a plain binary is renamed into place, a `.tar.gz`
//! gives up the regular file named like the tool (at any depth), a zip is refused for now.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use super::{BinaryCacheError, MAX_DOWNLOAD_BYTES, ToolRelease};

/// Moves or extracts `raw` (inside the staging directory) to `binary`.
pub(super) fn into_binary(
    raw: &Path,
    binary: &Path,
    release: &ToolRelease<'_>,
) -> Result<(), BinaryCacheError> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BinaryCacheError::Write { path, source }
    };
    let mut file = File::open(raw).map_err(write_error(raw))?;
    let mut magic = Vec::with_capacity(4);
    (&mut file)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(write_error(raw))?;
    match magic.as_slice() {
        [0x1f, 0x8b, ..] => {
            file.rewind().map_err(write_error(raw))?;
            extract_member(file, binary, release)?;
            std::fs::remove_file(raw).map_err(write_error(raw))
        }
        [b'P', b'K', 3, 4] => Err(BinaryCacheError::UnsupportedFormat {
            tool: release.tool.to_string(),
            version: release.version.to_string(),
            format: "zip",
        }),
        _ => std::fs::rename(raw, binary).map_err(write_error(binary)),
    }
}

fn extract_member(
    file: File,
    binary: &Path,
    release: &ToolRelease<'_>,
) -> Result<(), BinaryCacheError> {
    let corrupt = |detail: String| BinaryCacheError::Unpack {
        tool: release.tool.to_string(),
        version: release.version.to_string(),
        detail,
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let entries = archive.entries().map_err(|e| corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let named_like_tool = entry
            .path()
            .map(|p| p.file_name() == Some(release.tool.as_ref()))
            .unwrap_or(false);
        if !entry.header().entry_type().is_file() || !named_like_tool {
            continue;
        }
        if entry.size() > MAX_DOWNLOAD_BYTES {
            return Err(BinaryCacheError::TooLarge {
                tool: release.tool.to_string(),
                version: release.version.to_string(),
                limit: MAX_DOWNLOAD_BYTES,
            });
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(binary)
            .map_err(|source| BinaryCacheError::Write {
                path: binary.to_path_buf(),
                source,
            })?;
        let copied = io::copy(&mut entry, &mut out).map_err(|e| corrupt(e.to_string()))?;
        if copied != entry.size() {
            return Err(corrupt(format!("member {} is cut short", release.tool)));
        }
        return Ok(());
    }
    Err(BinaryCacheError::MemberMissing {
        tool: release.tool.to_string(),
        version: release.version.to_string(),
    })
}
