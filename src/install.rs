//! `scalr-agent install DIR`: copies the running binary into DIR for the runner container.
//!
//! The task pod's init container runs this from the agent image into a shared `emptyDir`, so the
//! runner image (any glibc image, e.g. `scalr/runner`) needs nothing of ours. The copy is atomic:
//! written under a temporary name, fsynced, made executable, renamed over `DIR/scalr-agent`, and the
//! directory fsynced; a reader never sees a partial binary, and running it twice is harmless. Runs
//! on the main thread.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argh::FromArgs;

/// Name of the installed binary inside DIR.
pub const INSTALLED_NAME: &str = "scalr-agent";

/// Copy this binary into DIR (the init container of a task pod).
#[derive(FromArgs, Debug, Clone, PartialEq, Eq)]
#[argh(subcommand, name = "install")]
pub struct InstallArgs {
    /// directory to install into; created if missing
    #[argh(positional)]
    pub dir: PathBuf,
}

/// Why installing failed; each variant names the step.
#[derive(Debug)]
pub enum InstallError {
    /// The running binary could not be located or opened.
    OpenSelf { path: PathBuf, source: io::Error },
    /// The target directory could not be created.
    CreateDir { dir: PathBuf, source: io::Error },
    /// Writing the temporary copy failed (full or read-only volume?).
    Write { path: PathBuf, source: io::Error },
    /// Renaming the copy into place failed.
    Rename { path: PathBuf, source: io::Error },
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::OpenSelf { path, source } => {
                write!(
                    f,
                    "could not read the running binary {}: {source}",
                    path.display()
                )
            }
            InstallError::CreateDir { dir, source } => write!(
                f,
                "could not create {}: {source}; is the agent-bin volume mounted writable?",
                dir.display()
            ),
            InstallError::Write { path, source } => write!(
                f,
                "could not write {}: {source}; is the volume full or read-only?",
                path.display()
            ),
            InstallError::Rename { path, source } => {
                write!(f, "could not move the copy to {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for InstallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InstallError::OpenSelf { source, .. }
            | InstallError::CreateDir { source, .. }
            | InstallError::Write { source, .. }
            | InstallError::Rename { source, .. } => Some(source),
        }
    }
}

/// Runs the `install` subcommand; returns the installed path.
pub fn run(args: &InstallArgs) -> Result<PathBuf, InstallError> {
    install_from(Path::new("/proc/self/exe"), &args.dir)
}

/// Copies `source` to `dir/scalr-agent` atomically, mode 0755.
pub fn install_from(source: &Path, dir: &Path) -> Result<PathBuf, InstallError> {
    let mut input = File::open(source).map_err(|e| InstallError::OpenSelf {
        path: source.to_path_buf(),
        source: e,
    })?;
    fs::create_dir_all(dir).map_err(|source| InstallError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let target = dir.join(INSTALLED_NAME);
    // The pid makes concurrent installers (two init containers on a shared volume) not collide.
    let temp = dir.join(format!(".{INSTALLED_NAME}.tmp-{}", std::process::id()));
    let write_err = |source| InstallError::Write {
        path: temp.clone(),
        source,
    };
    let result = (|| {
        let _ = fs::remove_file(&temp);
        let mut output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&temp)
            .map_err(write_err)?;
        io::copy(&mut input, &mut output).map_err(write_err)?;
        output.sync_all().map_err(write_err)?;
        // Explicit chmod: the mode given at creation is reduced by the umask.
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o755)).map_err(write_err)?;
        drop(output);
        fs::rename(&temp, &target).map_err(|source| InstallError::Rename {
            path: target.clone(),
            source,
        })?;
        // Persist the rename itself.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| InstallError::Write {
                path: dir.to_path_buf(),
                source,
            })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_atomically_replacing_and_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source-bin");
        fs::write(&source, b"\x7fELF pretend binary").expect("write source");
        let target_dir = dir.path().join("bin/nested");
        fs::create_dir_all(&target_dir).expect("mkdir");
        fs::write(target_dir.join(INSTALLED_NAME), b"old junk").expect("old file");

        for _ in 0..2 {
            let installed = install_from(&source, &target_dir).expect("install");
            assert_eq!(installed, target_dir.join(INSTALLED_NAME));
            assert_eq!(
                fs::read(&installed).expect("read"),
                b"\x7fELF pretend binary"
            );
            let mode = fs::metadata(&installed).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
            let names: Vec<_> = fs::read_dir(&target_dir)
                .expect("list")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(names, [INSTALLED_NAME], "no temporary file left");
        }
    }

    #[test]
    fn creates_the_directory_and_reports_a_missing_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = install_from(&dir.path().join("nope"), dir.path()).expect_err("no source");
        assert!(matches!(err, InstallError::OpenSelf { .. }), "{err:?}");

        let source = dir.path().join("src");
        fs::write(&source, b"x").expect("write");
        let target = install_from(&source, &dir.path().join("a/b")).expect("install");
        assert!(target.exists());
    }
}
