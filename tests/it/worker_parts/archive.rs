//! Hostile configuration versions: each is refused with the right `ArchiveError`, and nothing is
//! written outside the run directory (a sentinel tree around it is listed after every attempt).

use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use scalr_agent::worker::archive::{self, ArchiveError, Limits};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// `<tmp>/parent/{sentinel.txt, run}` and an empty `<tmp>/outside`: a run directory with
/// something to protect on every side.
struct World {
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("parent")).expect("mkdir");
        std::fs::create_dir(tmp.path().join("outside")).expect("mkdir");
        std::fs::write(tmp.path().join("parent/sentinel.txt"), "keep").expect("write");
        std::fs::write(tmp.path().join("outside/victim"), "victim").expect("write");
        World { tmp }
    }

    fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("parent/run")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    fn extract(&self, bytes: &[u8], limits: &Limits) -> Result<archive::Extracted, ArchiveError> {
        archive::extract(&mut &bytes[..], &sha256(bytes), &self.run_dir(), limits)
    }

    /// Asserts the whole tree is as it was before the attempt: the run directory gone, sentinel
    /// and victim untouched, nothing new anywhere.
    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            listing(self.tmp.path()),
            ["outside", "outside/victim", "parent", "parent/sentinel.txt"],
            "{what}: something was left or written outside"
        );
        let victim = self.outside().join("victim");
        assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "victim");
        assert_eq!(
            std::fs::metadata(&victim).expect("meta").nlink(),
            1,
            "{what}"
        );
        assert_eq!(
            std::fs::read_to_string(self.tmp.path().join("parent/sentinel.txt")).expect("read"),
            "keep"
        );
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every path below `root`, relative, sorted, without following links.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            out.push(
                path.strip_prefix(root)
                    .expect("prefix")
                    .display()
                    .to_string(),
            );
            if std::fs::symlink_metadata(&path).expect("meta").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A raw header: the builder refuses hostile names, so the name and link fields are written as
/// bytes.
fn header(kind: EntryType, name: &[u8], link: &[u8], size: u64, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.as_mut_bytes()[..name.len()].copy_from_slice(name);
    h.as_mut_bytes()[157..157 + link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_cksum();
    h
}

struct Member {
    kind: EntryType,
    name: String,
    link: String,
    data: Vec<u8>,
    mode: u32,
}

fn file(name: &str, data: &str) -> Member {
    Member {
        kind: EntryType::Regular,
        name: name.into(),
        link: String::new(),
        data: data.as_bytes().to_vec(),
        mode: 0o644,
    }
}

fn special(kind: EntryType, name: &str, link: &str) -> Member {
    Member {
        kind,
        name: name.into(),
        link: link.into(),
        data: Vec::new(),
        mode: 0o755,
    }
}

fn tar_gz(members: &[Member]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for m in members {
        let h = header(
            m.kind,
            m.name.as_bytes(),
            m.link.as_bytes(),
            m.data.len() as u64,
            m.mode,
        );
        builder.append(&h, &m.data[..]).expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

type Check = fn(&ArchiveError) -> bool;

fn absolute(world: &World, name: &str) -> String {
    world
        .outside()
        .join(name)
        .to_str()
        .expect("utf8")
        .to_string()
}

#[test]
fn hostile_members_are_refused_and_nothing_escapes() {
    type Members = fn(&World) -> Vec<Member>;
    let cases: Vec<(&str, Members, Check)> = vec![
        (
            "path traversal",
            |_| vec![file("../x", "x"), file("ok", "y")],
            |e| matches!(e, ArchiveError::ParentTraversal { .. }),
        ),
        (
            "deep traversal",
            |_| vec![file("a/b/../../../../outside/victim", "x")],
            |e| matches!(e, ArchiveError::ParentTraversal { .. }),
        ),
        (
            "absolute path",
            |w| vec![file(&absolute(w, "abs"), "x")],
            |e| matches!(e, ArchiveError::AbsolutePath { .. }),
        ),
        (
            "symlink escape, then a file through it",
            |_| {
                vec![
                    special(EntryType::Symlink, "l", "../../outside"),
                    file("l/pwned", "x"),
                ]
            },
            |e| matches!(e, ArchiveError::LinkEscapes { .. }),
        ),
        (
            "symlink escape in two harmless-looking steps, then a file through it",
            |_| {
                vec![
                    special(EntryType::Directory, "d/", ""),
                    special(EntryType::Symlink, "d/l2", "l1/../../outside"),
                    special(EntryType::Symlink, "d/l1", ".."),
                    file("d/l2/pwned", "x"),
                ]
            },
            |e| matches!(e, ArchiveError::NotADirectory { .. }),
        ),
        (
            "the same two steps without the write",
            |_| {
                vec![
                    special(EntryType::Directory, "d/", ""),
                    special(EntryType::Symlink, "d/l2", "l1/../../outside"),
                    special(EntryType::Symlink, "d/l1", ".."),
                ]
            },
            |e| matches!(e, ArchiveError::LinkEscapes { .. }),
        ),
        (
            "absolute symlink",
            |w| vec![special(EntryType::Symlink, "l", &absolute(w, "victim"))],
            |e| matches!(e, ArchiveError::LinkEscapes { .. }),
        ),
        (
            "hard link escape",
            |_| vec![special(EntryType::Link, "h", "../../outside/victim")],
            |e| matches!(e, ArchiveError::HardLinkTarget { .. }),
        ),
        (
            "hard link to an absolute path outside",
            |w| vec![special(EntryType::Link, "h", &absolute(w, "victim"))],
            |e| matches!(e, ArchiveError::HardLinkTarget { .. }),
        ),
        (
            "hard link through a symlink",
            |_| {
                vec![
                    special(EntryType::Symlink, "l", "."),
                    file("f", "x"),
                    special(EntryType::Link, "h", "l/f"),
                ]
            },
            |e| matches!(e, ArchiveError::HardLinkTarget { .. }),
        ),
        (
            "character device",
            |_| vec![special(EntryType::Char, "null", "")],
            |e| {
                matches!(
                    e,
                    ArchiveError::DeviceFile {
                        kind: "character device",
                        ..
                    }
                )
            },
        ),
        (
            "block device",
            |_| vec![special(EntryType::Block, "sda", "")],
            |e| {
                matches!(
                    e,
                    ArchiveError::DeviceFile {
                        kind: "block device",
                        ..
                    }
                )
            },
        ),
        (
            "fifo",
            |_| vec![special(EntryType::Fifo, "pipe", "")],
            |e| matches!(e, ArchiveError::Fifo { .. }),
        ),
    ];
    for (what, members, check) in cases {
        let world = World::new();
        let err = world
            .extract(&tar_gz(&members(&world)), &Limits::default())
            .expect_err(what);
        assert!(check(&err), "{what}: wrong error {err:?}");
        assert!(
            err.to_string()
                .starts_with("configuration version rejected"),
            "{what}: {err}"
        );
        world.assert_untouched(what);
    }
}

#[test]
fn checksum_mismatch_writes_nothing() {
    let world = World::new();
    let bytes = tar_gz(&[file("main.tf", "resource \"x\" \"y\" {}")]);
    let mut wrong = sha256(&bytes).into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let err = archive::extract(
        &mut &bytes[..],
        std::str::from_utf8(&wrong).expect("ascii"),
        &world.run_dir(),
        &Limits::default(),
    )
    .expect_err("mismatch");
    assert!(
        matches!(err, ArchiveError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    world.assert_untouched("checksum mismatch");
}

#[test]
fn setuid_setgid_and_sticky_bits_are_stripped_and_exec_kept() {
    let world = World::new();
    let mut tool = file("bin/tool", "#!/bin/sh\n");
    tool.mode = 0o6755;
    let mut sticky = file("notes", "n");
    sticky.mode = 0o1777;
    world
        .extract(&tar_gz(&[tool, sticky]), &Limits::default())
        .expect("extract");
    let mode = |name: &str| {
        std::fs::metadata(world.run_dir().join(name))
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bin/tool"), 0o700);
    assert_eq!(mode("notes"), 0o700);
    assert_eq!(mode("bin"), 0o700);
}

/// Counts what the extractor pulled from the download.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Header bytes followed by `zeros` zero bytes (claimed data that is never really there).
fn stream_of(first: Header, zeros: u64) -> impl Read {
    let tar = io::Cursor::new(first.as_bytes().to_vec()).chain(io::repeat(0).take(zeros));
    flate2::read::GzEncoder::new(tar, flate2::Compression::fast())
}

#[test]
fn a_member_claiming_10_gb_is_refused_from_its_header() {
    let world = World::new();
    let read = Arc::new(AtomicU64::new(0));
    let claim = header(EntryType::Regular, b"huge.bin", b"", 10 << 30, 0o644);
    let mut source = Counting {
        inner: stream_of(claim, 64 << 10),
        read: read.clone(),
    };
    let err = archive::extract(
        &mut source,
        &"0".repeat(64),
        &world.run_dir(),
        &Limits::default(),
    )
    .expect_err("too large");
    assert!(
        matches!(err, ArchiveError::EntryTooLarge { size, .. } if size == 10 << 30),
        "{err:?}"
    );
    assert!(
        read.load(Ordering::Relaxed) < 64 << 10,
        "stopped at the header"
    );
    world.assert_untouched("10 GB member");
}

#[test]
fn a_long_name_claiming_10_gb_is_refused_after_the_metadata_allowance() {
    let world = World::new();
    let read = Arc::new(AtomicU64::new(0));
    // A GNU long-name member the tar parser would buffer whole: it must never get 10 GB.
    let claim = header(
        EntryType::GNULongName,
        b"././@LongLink",
        b"",
        10 << 30,
        0o644,
    );
    let mut source = Counting {
        inner: stream_of(claim, 10 << 30),
        read: read.clone(),
    };
    let err = archive::extract(
        &mut source,
        &"0".repeat(64),
        &world.run_dir(),
        &Limits::default(),
    )
    .expect_err("too large");
    assert!(
        matches!(err, ArchiveError::MetadataTooLarge { .. }),
        "{err:?}"
    );
    // 10 GB of zeros compress ~1000:1; the allowance is 1 MiB of decompressed bytes.
    assert!(read.load(Ordering::Relaxed) < 1 << 20, "read {read:?}");
    world.assert_untouched("10 GB long name");
}

/// A tar stream of `total` members made on demand: never held in memory or on disk.
struct LazyMembers {
    make: fn(u64) -> Header,
    next: u64,
    total: u64,
    block: Vec<u8>,
    at: usize,
    produced: Arc<AtomicU64>,
}

impl Read for LazyMembers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.block.len() {
            if self.next < self.total {
                self.block = (self.make)(self.next).as_bytes().to_vec();
                self.next += 1;
                self.produced.store(self.next, Ordering::Relaxed);
            } else if self.next == self.total {
                self.block = vec![0; 1024]; // end of archive
                self.next += 1;
            } else {
                return Ok(0);
            }
            self.at = 0;
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn lazy(make: fn(u64) -> Header, total: u64, produced: Arc<AtomicU64>) -> impl Read {
    flate2::read::GzEncoder::new(
        LazyMembers {
            make,
            next: 0,
            total,
            block: Vec::new(),
            at: 0,
            produced,
        },
        flate2::Compression::fast(),
    )
}

/// Members the gzip layers may have produced beyond the one that hit the limit.
const READ_AHEAD: u64 = 20_000;

#[test]
fn a_million_members_are_refused_at_the_default_limit() {
    let world = World::new();
    let produced = Arc::new(AtomicU64::new(0));
    let mut source = lazy(
        |_| header(EntryType::Directory, b"./", b"", 0, 0o755),
        1_000_000,
        produced.clone(),
    );
    let err = archive::extract(
        &mut source,
        &"0".repeat(64),
        &world.run_dir(),
        &Limits::default(),
    )
    .expect_err("too many");
    assert!(
        matches!(err, ArchiveError::TooManyEntries { limit } if limit == archive::DEFAULT_MAX_ENTRIES),
        "{err:?}"
    );
    // The gzip encoder and decoder buffer ahead: a 512-byte header compresses to a few bytes, so
    // their buffers hold thousands. The point is that the million are never generated.
    let made = produced.load(Ordering::Relaxed);
    assert!(
        made <= archive::DEFAULT_MAX_ENTRIES + READ_AHEAD,
        "the stream was read past the limit: {made} members"
    );
    world.assert_untouched("a million members");
}

#[test]
fn too_many_files_are_refused_and_the_ones_written_removed() {
    let world = World::new();
    let produced = Arc::new(AtomicU64::new(0));
    let mut source = lazy(
        |i| {
            let name = format!("dir{}/file{i}.tf", i % 10);
            header(EntryType::Regular, name.as_bytes(), b"", 0, 0o644)
        },
        1_000_000,
        produced.clone(),
    );
    let limits = Limits {
        max_entries: 2_000,
        ..Limits::default()
    };
    let err = archive::extract(&mut source, &"0".repeat(64), &world.run_dir(), &limits)
        .expect_err("too many");
    assert!(
        matches!(err, ArchiveError::TooManyEntries { limit: 2_000 }),
        "{err:?}"
    );
    let made = produced.load(Ordering::Relaxed);
    assert!(
        made <= 2_000 + READ_AHEAD,
        "read past the limit: {made} members"
    );
    world.assert_untouched("too many files");
}

#[test]
fn a_good_archive_extracts_exactly() {
    // Built by the tar crate from a real directory, as `tar czf` would.
    let src = tempfile::tempdir().expect("tempdir");
    let root = src.path();
    std::fs::create_dir_all(root.join("modules/vpc")).expect("mkdir");
    std::fs::write(
        root.join("main.tf"),
        "module \"vpc\" { source = \"./modules/vpc\" }\n",
    )
    .expect("write");
    std::fs::write(root.join("modules/vpc/main.tf"), "variable \"cidr\" {}\n").expect("write");
    std::fs::write(root.join("hook.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(root.join("hook.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::os::unix::fs::symlink("modules/vpc/main.tf", root.join("vpc.tf")).expect("symlink");
    let mut big = Vec::new();
    for i in 0..20_000 {
        writeln!(big, "# line {i}").expect("write");
    }
    std::fs::write(root.join("modules/big.txt"), &big).expect("write");

    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root).expect("append");
    let bytes = builder.into_inner().expect("tar").finish().expect("gzip");

    let world = World::new();
    let extracted = world.extract(&bytes, &Limits::default()).expect("extract");
    assert_eq!(extracted.sha256, sha256(&bytes));
    assert_eq!(extracted.files, 4);
    let run = world.run_dir();
    assert_eq!(
        listing(&run),
        [
            "hook.sh",
            "main.tf",
            "modules",
            "modules/big.txt",
            "modules/vpc",
            "modules/vpc/main.tf",
            "vpc.tf"
        ]
    );
    for name in [
        "main.tf",
        "modules/vpc/main.tf",
        "hook.sh",
        "modules/big.txt",
    ] {
        assert_eq!(
            std::fs::read(run.join(name)).expect("read"),
            std::fs::read(root.join(name)).expect("read"),
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_link(run.join("vpc.tf")).expect("link"),
        Path::new("modules/vpc/main.tf")
    );
    let exec = std::fs::metadata(run.join("hook.sh"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(exec & 0o777, 0o700);
    let plain = std::fs::metadata(run.join("main.tf"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(plain & 0o777, 0o600);
    assert_eq!(
        listing(&world.tmp.path().join("outside")),
        ["victim"],
        "nothing outside"
    );
}
