//! Publishing and eviction on hand-made plugin caches; the test against real `terraform init` is in
//! `tests/it/worker_parts`.

use std::time::Duration;

use super::*;
use crate::config::settings::ProviderCache as Settings;
use crate::worker::provider_cache::STAGING_DIR;

const ADDRESS: &str = "registry.terraform.io/hashicorp/null";

fn settings(size_limit_mb: u64) -> Settings {
    Settings {
        enabled: true,
        size_limit_mb,
        concurrency: 2,
    }
}

/// Writes a package with `files` into `root` and returns its `h1:` hash.
fn package(root: &Path, address: &str, version: &str, files: &[(&str, &[u8])]) -> String {
    let dir = root.join(address).join(version).join("linux_amd64");
    for (name, data) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, data).expect("write");
    }
    dirhash::hash_dir(&dir).expect("hash")
}

fn lock_file(dir: &Path, entries: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::from("# This file is maintained automatically by \"terraform init\".\n");
    for (address, version, hash) in entries {
        text.push_str(&format!(
            "\nprovider \"{address}\" {{\n  version = \"{version}\"\n  hashes = [\n    \"{hash}\",\n  ]\n}}\n"
        ));
    }
    let path = dir.join(".terraform.lock.hcl");
    std::fs::write(&path, text).expect("write lock file");
    path
}

fn id(address: &str, version: &str) -> PackageId {
    PackageId {
        address: address.into(),
        version: version.into(),
        platform: "linux_amd64".into(),
    }
}

#[test]
fn publishes_only_verified_packages_and_keeps_present_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    let good = package(
        &plugins,
        ADDRESS,
        "3.2.0",
        &[
            ("terraform-provider-null_v3.2.0_x5", b"\x7fELF null"),
            ("LICENSE", b"MPL"),
        ],
    );
    package(
        &plugins,
        ADDRESS,
        "3.1.0",
        &[("terraform-provider-null_v3.1.0_x5", b"tampered")],
    );
    package(
        &plugins,
        "registry.terraform.io/hashicorp/random",
        "3.0.0",
        &[("p", b"r")],
    );
    let lock = lock_file(
        dir.path(),
        &[
            (ADDRESS, "3.2.0", &good),
            (
                ADDRESS,
                "3.1.0",
                "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
        ],
    );
    let cache = ProviderCache::new(&dir.path().join("cache"), &settings(100));

    let report = cache.publish(&plugins, &lock, &[]).expect("publish");
    assert_eq!(report.published, [id(ADDRESS, "3.2.0")]);
    assert!(report.present.is_empty());
    assert_eq!(report.skipped.len(), 2, "{report:?}");
    assert!(matches!(report.skipped[0].1, SkipReason::NotInLockFile));
    assert!(matches!(
        report.skipped[1].1,
        SkipReason::HashMismatch { .. }
    ));
    let copied = cache.mirror_dir().join(ADDRESS).join("3.2.0/linux_amd64");
    assert_eq!(dirhash::hash_dir(&copied).expect("hash"), good);
    let mode = std::fs::metadata(copied.join("LICENSE"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert!(!cache.mirror_dir().join(ADDRESS).join("3.1.0").exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache").join(STAGING_DIR))
            .expect("staging")
            .count(),
        0,
        "no staging left"
    );

    let again = cache.publish(&plugins, &lock, &[]).expect("publish again");
    assert!(again.published.is_empty());
    assert_eq!(again.present, [id(ADDRESS, "3.2.0")]);
}

#[test]
fn links_are_followed_only_into_trusted_roots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = dir.path().join("origin");
    let hash = package(
        &origin,
        ADDRESS,
        "3.2.0",
        &[("terraform-provider-null", b"bin")],
    );
    let plugins = dir.path().join("plugins");
    let link_parent = plugins.join(ADDRESS).join("3.2.0");
    std::fs::create_dir_all(&link_parent).expect("mkdir");
    std::os::unix::fs::symlink(
        origin.join(ADDRESS).join("3.2.0/linux_amd64"),
        link_parent.join("linux_amd64"),
    )
    .expect("symlink");
    let lock = lock_file(dir.path(), &[(ADDRESS, "3.2.0", &hash)]);
    let cache = ProviderCache::new(&dir.path().join("cache"), &settings(100));

    let report = cache.publish(&plugins, &lock, &[]).expect("publish");
    assert_eq!(
        report.skipped,
        [(id(ADDRESS, "3.2.0"), SkipReason::UntrustedLink)]
    );

    let report = cache
        .publish(&plugins, &lock, std::slice::from_ref(&origin))
        .expect("publish");
    assert_eq!(report.published, [id(ADDRESS, "3.2.0")]);

    // A package holding a link (to a secret, say) is never copied.
    let plugins2 = dir.path().join("plugins2");
    let pkg = plugins2.join(ADDRESS).join("3.3.0/linux_amd64");
    std::fs::create_dir_all(&pkg).expect("mkdir");
    std::os::unix::fs::symlink("/etc/hostname", pkg.join("secret")).expect("symlink");
    let lock = lock_file(dir.path(), &[(ADDRESS, "3.3.0", "h1:x")]);
    let report = cache.publish(&plugins2, &lock, &[]).expect("publish");
    assert_eq!(
        report.skipped,
        [(id(ADDRESS, "3.3.0"), SkipReason::NotRegular)]
    );
}

#[test]
fn disabled_or_without_lock_file_publishes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    package(&plugins, ADDRESS, "3.2.0", &[("p", b"x")]);
    let missing = dir.path().join("none.hcl");
    let cache = ProviderCache::new(&dir.path().join("cache"), &settings(100));
    let report = cache.publish(&plugins, &missing, &[]).expect("publish");
    assert!(report.published.is_empty());
    assert_eq!(report.skipped.len(), 1);

    let off = Settings {
        enabled: false,
        ..settings(100)
    };
    let cache = ProviderCache::new(&dir.path().join("cache2"), &off);
    assert_eq!(
        cache.publish(&plugins, &missing, &[]).expect("publish"),
        PublishReport::default()
    );
    assert!(!dir.path().join("cache2").exists());

    std::fs::write(&missing, "provider \"x\" {").expect("write");
    let cache = ProviderCache::new(&dir.path().join("cache"), &settings(100));
    let err = cache
        .publish(&plugins, &missing, &[])
        .expect_err("bad lock file");
    assert!(
        matches!(err, ProviderCacheError::ParseLockFile { .. }),
        "{err:?}"
    );
}

#[test]
fn eviction_is_lru_and_spares_recently_used_packages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ProviderCache::new(dir.path(), &settings(1));
    let mirror = cache.mirror_dir().to_path_buf();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let big = vec![0u8; 400 << 10];
    // Four 400 KiB packages in a 1 MB cache: two must go, the oldest idle ones.
    for (version, days) in [("1.0.0", 10), ("2.0.0", 5), ("3.0.0", 3), ("4.0.0", 0)] {
        package(&mirror, ADDRESS, version, &[("p", &big)]);
        let path = mirror.join(ADDRESS).join(version).join("linux_amd64");
        File::open(&path)
            .expect("open")
            .set_modified(now - day * days)
            .expect("mtime");
    }
    let evicted = cache.evict(now).expect("evict");
    assert_eq!(evicted, [id(ADDRESS, "1.0.0"), id(ADDRESS, "2.0.0")]);
    // Still over? 3.0.0 + 4.0.0 = 800 KiB fits. Make it not fit: only idle ones may go.
    let cache = ProviderCache::new(
        dir.path(),
        &Settings {
            size_limit_mb: 0,
            ..settings(1)
        },
    );
    let evicted = cache.evict(now).expect("evict");
    assert_eq!(evicted, [id(ADDRESS, "3.0.0")], "4.0.0 was used today");
    assert!(mirror.join(ADDRESS).join("4.0.0/linux_amd64/p").is_file());
}
