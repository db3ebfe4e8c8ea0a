//! Unit tests of extraction rules on small archives built in memory; the hostile-archive suite with
//! sentinel directories lives in `tests/it/worker_parts`.

use super::*;
use tar::{EntryType, Header};

/// A member with raw name and link bytes (the builder refuses hostile ones).
struct Member<'a> {
    name: &'a [u8],
    kind: EntryType,
    mode: u32,
    link: &'a [u8],
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Member<'a> {
    Member {
        name: name.as_bytes(),
        kind: EntryType::Regular,
        mode: 0o644,
        link: b"",
        data,
    }
}

fn of(kind: EntryType, name: &'static str, link: &'static str) -> Member<'static> {
    Member {
        name: name.as_bytes(),
        kind,
        mode: 0o755,
        link: link.as_bytes(),
        data: b"",
    }
}

fn tar_gz(members: &[Member<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for m in members {
        let mut h = Header::new_gnu();
        h.as_mut_bytes()[..m.name.len()].copy_from_slice(m.name);
        h.as_mut_bytes()[157..157 + m.link.len()].copy_from_slice(m.link);
        h.set_entry_type(m.kind);
        h.set_mode(m.mode);
        h.set_size(m.data.len() as u64);
        if m.kind == EntryType::GNUSparse {
            h.as_gnu_mut().expect("gnu header").set_real_size(0);
        }
        h.set_cksum();
        builder.append(&h, m.data).expect("append");
    }
    builder
        .into_inner()
        .expect("finish tar")
        .finish()
        .expect("finish gzip")
}

fn sha(bytes: &[u8]) -> String {
    crate::worker::checksum::sha256_of(&mut &bytes[..]).expect("hash")
}

fn run(members: &[Member<'_>]) -> (tempfile::TempDir, Result<Extracted, ArchiveError>) {
    let bytes = tar_gz(members);
    let dir = tempfile::tempdir().expect("tempdir");
    let result = extract(
        &mut &bytes[..],
        &sha(&bytes),
        &dir.path().join("run"),
        &Limits::default(),
    );
    (dir, result)
}

#[test]
fn a_good_archive_extracts_exactly() {
    let (dir, result) = run(&[
        of(EntryType::Directory, "./", ""),
        file("main.tf", b"resource {}"),
        of(EntryType::Directory, "modules/", ""),
        file("modules/vpc/main.tf", b"vpc"),
        of(EntryType::Symlink, "modules/link", "vpc/main.tf"),
        of(EntryType::Link, "copy.tf", "main.tf"),
    ]);
    let extracted = result.expect("extract");
    assert_eq!(
        (extracted.entries, extracted.files, extracted.bytes),
        (6, 3, 14)
    );
    let run = dir.path().join("run");
    assert_eq!(
        std::fs::read(run.join("modules/link")).expect("read"),
        b"vpc"
    );
    assert_eq!(
        std::fs::read(run.join("copy.tf")).expect("read"),
        b"resource {}"
    );
    let mode = std::fs::metadata(run.join("main.tf"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
}

#[test]
fn hostile_members_are_refused_and_nothing_remains() {
    type Check = fn(&ArchiveError) -> bool;
    let cases: Vec<(&str, Vec<Member<'_>>, Check)> = vec![
        ("dotdot", vec![file("../x", b"x")], |e| {
            matches!(e, ArchiveError::ParentTraversal { .. })
        }),
        ("absolute", vec![file("/etc/x", b"x")], |e| {
            matches!(e, ArchiveError::AbsolutePath { .. })
        }),
        (
            "symlink escape",
            vec![of(EntryType::Symlink, "l", "../../outside")],
            |e| matches!(e, ArchiveError::LinkEscapes { .. }),
        ),
        (
            "write through symlink",
            vec![
                of(EntryType::Directory, "d/", ""),
                of(EntryType::Symlink, "l", "d"),
                file("l/x", b"x"),
            ],
            |e| matches!(e, ArchiveError::NotADirectory { .. }),
        ),
        (
            "hard link to missing",
            vec![of(EntryType::Link, "h", "nothing")],
            |e| matches!(e, ArchiveError::HardLinkTarget { .. }),
        ),
        (
            "hard link outside",
            vec![of(EntryType::Link, "h", "../../etc/passwd")],
            |e| matches!(e, ArchiveError::HardLinkTarget { .. }),
        ),
        ("fifo", vec![of(EntryType::Fifo, "p", "")], |e| {
            matches!(e, ArchiveError::Fifo { .. })
        }),
        ("char", vec![of(EntryType::Char, "c", "")], |e| {
            matches!(e, ArchiveError::DeviceFile { .. })
        }),
        ("sparse", vec![of(EntryType::GNUSparse, "s", "")], |e| {
            matches!(e, ArchiveError::UnsupportedType { .. })
        }),
        ("duplicate", vec![file("a", b"1"), file("a", b"2")], |e| {
            matches!(e, ArchiveError::Duplicate { .. })
        }),
        (
            "chained links",
            vec![
                of(EntryType::Directory, "d/", ""),
                of(EntryType::Symlink, "d/l2", "l1/.."),
                of(EntryType::Symlink, "d/l1", ".."),
            ],
            |e| matches!(e, ArchiveError::LinkEscapes { .. }),
        ),
    ];
    for (what, members, check) in cases {
        let (dir, result) = run(&members);
        let err = result.expect_err(what);
        assert!(check(&err), "{what}: wrong error {err:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
    }
}

#[test]
fn checksum_mismatch_removes_everything() {
    let bytes = tar_gz(&[file("main.tf", b"x")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("existing empty run dir");
    let err =
        extract(&mut &bytes[..], &"0".repeat(64), &run, &Limits::default()).expect_err("mismatch");
    assert!(
        matches!(err, ArchiveError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(run.is_dir(), "a run directory that existed is kept");
    assert_eq!(std::fs::read_dir(&run).expect("list").count(), 0);

    let err = extract(&mut &bytes[..], "nope", &run, &Limits::default()).expect_err("bad sum");
    assert!(
        matches!(err, ArchiveError::InvalidChecksum { .. }),
        "{err:?}"
    );
}

#[test]
fn not_gzip_is_corrupt_and_a_non_empty_run_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let junk = b"PK\x03\x04 this is a zip";
    let err = extract(&mut &junk[..], &sha(junk), &run, &Limits::default()).expect_err("junk");
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("tar czf"), "{err}");

    std::fs::create_dir(&run).expect("mkdir");
    std::fs::write(run.join("old"), b"x").expect("write");
    let bytes = tar_gz(&[file("main.tf", b"x")]);
    let err = extract(&mut &bytes[..], &sha(&bytes), &run, &Limits::default()).expect_err("dirty");
    assert!(matches!(err, ArchiveError::PrepareRunDir { .. }), "{err:?}");
    assert!(
        run.join("old").exists(),
        "a refused run directory is left alone"
    );
}

#[test]
fn limits_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let members = [file("a", b"12345"), file("b", b"12345")];
    let bytes = tar_gz(&members);
    type Check = fn(&ArchiveError) -> bool;
    let cases: Vec<(Limits, Check)> = vec![
        (
            Limits {
                max_entries: 1,
                ..Limits::default()
            },
            |e| matches!(e, ArchiveError::TooManyEntries { limit: 1 }),
        ),
        (
            Limits {
                max_entry_bytes: 4,
                ..Limits::default()
            },
            |e| matches!(e, ArchiveError::EntryTooLarge { size: 5, .. }),
        ),
        (
            Limits {
                max_total_bytes: 9,
                ..Limits::default()
            },
            |e| matches!(e, ArchiveError::TotalTooLarge { .. }),
        ),
        (
            Limits {
                max_compressed_bytes: 20,
                ..Limits::default()
            },
            |e| matches!(e, ArchiveError::CompressedTooLarge { limit: 20 }),
        ),
        (
            Limits {
                max_path_bytes: 0,
                ..Limits::default()
            },
            |e| matches!(e, ArchiveError::InvalidPath { .. }),
        ),
    ];
    for (i, (limits, check)) in cases.into_iter().enumerate() {
        let run = dir.path().join(format!("run{i}"));
        let err = extract(&mut &bytes[..], &sha(&bytes), &run, &limits).expect_err("limit");
        assert!(check(&err), "{limits:?}: {err:?}");
        assert!(!run.exists());
    }
}

#[test]
fn permission_bits_are_reduced_to_the_owners() {
    let mut exe = file("run.sh", b"#!/bin/sh\n");
    exe.mode = 0o6755; // setuid + setgid
    let mut sticky = file("ro.txt", b"r");
    sticky.mode = 0o1444;
    let (dir, result) = run(&[exe, sticky]);
    result.expect("extract");
    let mode = |n: &str| {
        std::fs::metadata(dir.path().join("run").join(n))
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("run.sh"), 0o700);
    assert_eq!(mode("ro.txt"), 0o600);
}
