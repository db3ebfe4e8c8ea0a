//! Unit tests with in-memory downloads; the concurrency tests against a real HTTP server (threads
//! and processes) are in `tests/it/worker_parts`.

use super::*;
use crate::worker::checksum::sha256_of;

fn settings(size_limit_mb: u64, threshold_days: u32) -> BinaryCacheSettings {
    BinaryCacheSettings {
        size_limit_mb,
        threshold_days,
    }
}

fn serve(bytes: Vec<u8>) -> impl FnMut(&mut dyn Write) -> Result<(), DownloadError> {
    move |out: &mut dyn Write| out.write_all(&bytes).map_err(Into::into)
}

fn release<'a>(tool: &'a str, version: &'a str, sha256: &'a str) -> ToolRelease<'a> {
    ToolRelease {
        tool,
        version,
        sha256,
    }
}

/// Every path under `dir`, relative, sorted (lock files included).
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            out.push(p.strip_prefix(dir).expect("prefix").display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_plain_binary_is_downloaded_once_and_kept_executable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BinaryCache::new(dir.path(), &settings(100, 30));
    let body = b"#!/bin/sh\necho terraform\n".to_vec();
    let sum = sha256_of(&mut &body[..]).expect("hash");
    let mut calls = 0;
    let mut download = |out: &mut dyn Write| -> Result<(), DownloadError> {
        calls += 1;
        out.write_all(&body)?;
        Ok(())
    };
    let first = cache
        .provision(&release("terraform", "1.5.7", &sum), &mut download)
        .expect("provision");
    assert!(first.downloaded());
    let second = cache
        .provision(&release("terraform", "1.5.7", &sum), &mut download)
        .expect("provision again");
    assert!(!second.downloaded());
    assert_eq!(calls, 1);
    assert_eq!(
        first.path(),
        dir.path().join("binaries/terraform/1.5.7/terraform")
    );
    assert_eq!(std::fs::read(first.path()).expect("read"), body);
    let mode = std::fs::metadata(first.path())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        listing(&dir.path().join("binaries")),
        [
            "terraform",
            "terraform/1.5.7",
            "terraform/1.5.7.lock",
            "terraform/1.5.7/.sha256",
            "terraform/1.5.7/terraform"
        ]
    );
}

#[test]
fn a_tar_gz_gives_up_the_member_named_like_the_tool() {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, data) in [("README.md", &b"docs"[..]), ("bin/tofu", &b"ELF tofu"[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        builder.append_data(&mut h, name, data).expect("append");
    }
    let body = builder.into_inner().expect("tar").finish().expect("gzip");
    let sum = sha256_of(&mut &body[..]).expect("hash");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BinaryCache::new(dir.path(), &settings(100, 30));
    let binary = cache
        .provision(&release("tofu", "1.8.0", &sum), &mut serve(body))
        .expect("provision");
    assert_eq!(std::fs::read(binary.path()).expect("read"), b"ELF tofu");
    assert_eq!(
        listing(&dir.path().join("binaries/tofu/1.8.0")),
        [".sha256", "tofu"],
        "the archive itself is not kept"
    );
}

#[test]
fn failures_leave_nothing_but_the_lock_file() {
    type Check = fn(&BinaryCacheError) -> bool;
    let good = b"binary".to_vec();
    let good_sum = sha256_of(&mut &good[..]).expect("hash");
    let zip = b"PK\x03\x04rest of a zip".to_vec();
    let zip_sum = sha256_of(&mut &zip[..]).expect("hash");
    let cases: Vec<(&str, Vec<u8>, String, Check)> = vec![
        ("mismatch", good.clone(), "0".repeat(64), |e| {
            matches!(e, BinaryCacheError::ChecksumMismatch { .. })
        }),
        ("zip", zip, zip_sum, |e| {
            matches!(e, BinaryCacheError::UnsupportedFormat { format: "zip", .. })
        }),
    ];
    for (what, body, sum, check) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BinaryCache::new(dir.path(), &settings(100, 30));
        let err = cache
            .provision(&release("terraform", "1.0.0", &sum), &mut serve(body))
            .expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
        assert_eq!(
            listing(&dir.path().join("binaries")),
            ["terraform", "terraform/1.0.0.lock"],
            "{what}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BinaryCache::new(dir.path(), &settings(100, 30));
    let err = cache
        .provision(&release("terraform", "1.0.0", &good_sum), &mut |_| {
            Err("connection reset".into())
        })
        .expect_err("download fails");
    assert!(matches!(err, BinaryCacheError::Download { .. }), "{err:?}");
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(
        listing(&dir.path().join("binaries")),
        ["terraform", "terraform/1.0.0.lock"]
    );

    for (tool, version) in [("../x", "1"), ("terraform", ".."), ("a/b", "1"), ("", "1")] {
        let err = cache
            .provision(&release(tool, version, &good_sum), &mut serve(good.clone()))
            .expect_err("invalid name");
        assert!(
            matches!(err, BinaryCacheError::InvalidName { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn a_republished_version_is_downloaded_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BinaryCache::new(dir.path(), &settings(100, 30));
    let (old, new) = (b"old".to_vec(), b"new".to_vec());
    let old_sum = sha256_of(&mut &old[..]).expect("hash");
    let new_sum = sha256_of(&mut &new[..]).expect("hash");
    drop(
        cache
            .provision(&release("tf", "1", &old_sum), &mut serve(old))
            .expect("old"),
    );
    let binary = cache
        .provision(&release("tf", "1", &new_sum), &mut serve(new))
        .expect("new");
    assert!(binary.downloaded());
    assert_eq!(std::fs::read(binary.path()).expect("read"), b"new");
}

fn age(path: &Path, days: u64, now: SystemTime) {
    File::open(path)
        .expect("open")
        .set_modified(now - Duration::from_secs(days * 86_400))
        .expect("set mtime");
}

#[test]
fn cleanup_removes_stale_and_least_recently_used_but_never_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1 MB limit; each binary is 400 KiB.
    let cache = BinaryCache::new(dir.path(), &settings(1, 30));
    let body = vec![7u8; 400 << 10];
    let sum = sha256_of(&mut &body[..]).expect("hash");
    let versions = ["1", "2", "3", "4", "5"];
    let mut leases = Vec::new();
    for v in versions {
        leases.push(
            cache
                .provision(&release("tf", v, &sum), &mut serve(body.clone()))
                .expect("provision"),
        );
    }
    let now = SystemTime::now();
    let root = dir.path().join("binaries/tf");
    // 1: stale and free; 2: stale but in use; 3: older; 4: newer; 5: newest.
    for (v, days) in [("1", 40), ("2", 40), ("3", 3), ("4", 2), ("5", 1)] {
        age(&root.join(v), days, now);
    }
    let in_use = leases.remove(1);
    drop(leases);

    let report = cache.cleanup(now).expect("cleanup");
    // Stale 1 goes; then 2 (in use, 400K) + 3 + 4 + 5 = 1.6 MB > 1 MB: 3 and 4 go, leaving 800 KiB.
    let removed: Vec<_> = report.removed.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(removed, ["1", "3", "4"]);
    assert_eq!(report.in_use, [("tf".to_string(), "2".to_string())]);
    assert_eq!(report.bytes_before, 5 * (400 << 10) + 5 * 64);
    assert!(in_use.path().is_file(), "the binary in use survives");
    assert!(root.join("5/tf").is_file());
    for v in ["1", "3", "4"] {
        assert!(!root.join(v).exists(), "{v} removed");
    }
    drop(in_use);
    // Released and stale now: it goes.
    let report = cache.cleanup(now).expect("cleanup");
    let removed: Vec<_> = report.removed.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(removed, ["2"]);
}
