//! Directory-relative file operations that never follow a symbolic link.
//!
//! Extraction walks every path from the run directory's file descriptor one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`, and creates the last component with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, `mkdirat`, `symlinkat` or `linkat` without `AT_SYMLINK_FOLLOW`. A symbolic link
//! placed by an earlier archive member, or by anyone else, therefore can never redirect a write: the
//! walk fails with `ELOOP`/`ENOTDIR` instead. Only `libc` calls with owned descriptors; no state.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a file name"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the directory at `path` (the run directory itself, which the worker chose).
pub(super) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = c_name(path.as_os_str())?;
    // SAFETY: `c` is a valid NUL-terminated string; the returned descriptor is owned below.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by open and is not owned by anything else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens directory `name` inside `parent`, refusing a symbolic link (`ELOOP`) or a non-directory
/// (`ENOTDIR`).
pub(super) fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let c = c_name(name)?;
    // SAFETY: valid descriptor and NUL-terminated name; the result is owned below.
    let fd = check(unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is not owned by anything else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates directory `name` inside `parent` with `mode` (before the umask).
pub(super) fn make_dir(parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    check(unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// Creates a new regular file `name` inside `parent`, failing if anything (a file, a directory, a
/// dangling symbolic link) already has that name.
pub(super) fn create_file(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let c = c_name(name)?;
    // SAFETY: valid descriptor and NUL-terminated name; the result is owned below.
    let fd = check(unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is not owned by anything else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Creates symbolic link `name` inside `parent` pointing at `target` (stored verbatim).
pub(super) fn symlink(parent: BorrowedFd<'_>, name: &OsStr, target: &Path) -> io::Result<()> {
    let c = c_name(name)?;
    let t = c_name(target.as_os_str())?;
    // SAFETY: valid descriptor and NUL-terminated strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), parent.as_raw_fd(), c.as_ptr()) })?;
    Ok(())
}

/// Creates hard link `name` inside `parent` to `source_name` inside `source_parent`; a symbolic
/// link as source is linked itself, never followed (no `AT_SYMLINK_FOLLOW`).
pub(super) fn hard_link(
    source_parent: BorrowedFd<'_>,
    source_name: &OsStr,
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    let s = c_name(source_name)?;
    let c = c_name(name)?;
    // SAFETY: valid descriptors and NUL-terminated names.
    check(unsafe {
        libc::linkat(
            source_parent.as_raw_fd(),
            s.as_ptr(),
            parent.as_raw_fd(),
            c.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("f"), dir.path().join("dangling"))
            .expect("symlink");
        let root = open_root(dir.path()).expect("root");

        let err = open_dir(root.as_fd(), OsStr::new("link")).expect_err("must not follow");
        assert!(
            matches!(err.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{err}"
        );
        let err = create_file(root.as_fd(), OsStr::new("dangling")).expect_err("must not follow");
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("list").count(),
            0,
            "nothing may appear outside"
        );
    }

    #[test]
    fn creates_files_dirs_and_links_relative_to_the_descriptor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = open_root(dir.path()).expect("root");
        make_dir(root.as_fd(), OsStr::new("d"), 0o700).expect("mkdir");
        let d = open_dir(root.as_fd(), OsStr::new("d")).expect("open d");
        use std::io::Write;
        create_file(d.as_fd(), OsStr::new("f"))
            .expect("create")
            .write_all(b"hi")
            .expect("write");
        hard_link(d.as_fd(), OsStr::new("f"), root.as_fd(), OsStr::new("g")).expect("link");
        symlink(root.as_fd(), OsStr::new("s"), Path::new("d/f")).expect("symlink");
        assert_eq!(std::fs::read(dir.path().join("g")).expect("read"), b"hi");
        assert_eq!(std::fs::read(dir.path().join("s")).expect("read"), b"hi");
    }
}
