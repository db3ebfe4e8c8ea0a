//! The binary cache downloading from a real HTTP server through our `HttpClient`: 8 threads and 8
//! processes provisioning the same release at once download it exactly once, a checksum mismatch
//! leaves nothing, and cleanup never removes a binary another process is using.
//!
//! The processes are this test binary started again with one test selected and a job in
//! [`CHILD_ENV`]; that test otherwise checks a plain provision-then-reuse.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use scalr_agent::config::BinaryCache as Settings;
use scalr_agent::http::{HttpClient, HttpOptions, Request};
use scalr_agent::worker::binary_cache::{
    BinaryCache, BinaryCacheError, DownloadError, ToolRelease,
};
use sha2::{Digest, Sha256};

use crate::support::http_server::{HttpRequest, HttpResponse, Responder, TestServer};

const CHILD_ENV: &str = "SCALR_AGENT_IT_BINARY_CACHE_CHILD";
const CHILD_TEST: &str = "worker_parts::binary_cache::provisions_once_then_reuses_or_runs_as_child";
const VERSION: &str = "1.15.5";

/// The release server: counts downloads, and holds each download until `gate` clients have said
/// hello, so every contender is provisioning while the first download is in flight.
struct Release {
    body: Vec<u8>,
    sha256: String,
    gate: usize,
    hellos: AtomicUsize,
    downloads: AtomicUsize,
}

fn start(body: Vec<u8>, gate: usize) -> (TestServer, Arc<Release>) {
    let sha256 = hex(&Sha256::digest(&body));
    let release = Arc::new(Release {
        body,
        sha256,
        gate,
        hellos: AtomicUsize::new(0),
        downloads: AtomicUsize::new(0),
    });
    let state = release.clone();
    let server = TestServer::start(Arc::new(
        move |req: &HttpRequest, out: &mut Responder<'_>| match req.path.as_str() {
            "/hello" => {
                state.hellos.fetch_add(1, Ordering::SeqCst);
                let _ = out.respond(HttpResponse::empty(204));
            }
            "/terraform" => {
                state.downloads.fetch_add(1, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(30);
                while state.hellos.load(Ordering::SeqCst) < state.gate && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let _ = out.respond(HttpResponse::new(
                    200,
                    "application/octet-stream",
                    state.body.clone(),
                ));
            }
            _ => {
                let _ = out.respond(HttpResponse::empty(404));
            }
        },
    ));
    (server, release)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 4 MiB that do not compress: a stand-in for a tool binary.
fn binary_body() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn client() -> HttpClient {
    HttpClient::new(&HttpOptions::default()).expect("client")
}

fn hello(client: &HttpClient, base: &str) {
    let status = client
        .send(Request::new("GET", format!("{base}/hello")))
        .expect("hello")
        .status;
    assert_eq!(status, 204);
}

/// Provisions `terraform VERSION` through the HTTP client, the way the worker will.
fn provision(
    cache: &BinaryCache,
    client: &HttpClient,
    base: &str,
    sha256: &str,
) -> Result<scalr_agent::worker::binary_cache::CachedBinary, BinaryCacheError> {
    let url = format!("{base}/terraform");
    let mut download = |out: &mut dyn Write| -> Result<(), DownloadError> {
        let mut response = client.stream(Request::new("GET", url.as_str()))?;
        if response.status != 200 {
            return Err(format!("GET {url}: status {}", response.status).into());
        }
        std::io::copy(&mut response.body, out)?;
        Ok(())
    };
    cache.provision(
        &ToolRelease {
            tool: "terraform",
            version: VERSION,
            sha256,
        },
        &mut download,
    )
}

fn settings() -> Settings {
    Settings {
        size_limit_mb: 1024,
        threshold_days: 30,
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ChildJob {
    base: String,
    sha256: String,
    cache_dir: String,
    /// Keep the lease until stdin closes.
    hold: bool,
}

fn run_child(job: &str) {
    let job: ChildJob = serde_json::from_str(job).expect("child job");
    let client = client();
    hello(&client, &job.base);
    let cache = BinaryCache::new(Path::new(&job.cache_dir), &settings());
    let binary = provision(&cache, &client, &job.base, &job.sha256).expect("child provision");
    println!("downloaded={}", binary.downloaded());
    if job.hold {
        println!("holding");
        std::io::stdout().flush().expect("flush");
        let mut rest = String::new();
        let _ = std::io::stdin().read_line(&mut rest);
    }
    drop(binary);
}

fn spawn_child(job: &ChildJob) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            CHILD_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_ENV, serde_json::to_string(job).expect("json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

#[test]
fn provisions_once_then_reuses_or_runs_as_child() {
    if let Ok(job) = std::env::var(CHILD_ENV) {
        return run_child(&job);
    }
    let (server, release) = start(binary_body(), 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BinaryCache::new(dir.path(), &settings());
    let client = client();
    let first = provision(&cache, &client, &server.url(), &release.sha256).expect("provision");
    assert!(first.downloaded());
    let second = provision(&cache, &client, &server.url(), &release.sha256).expect("again");
    assert!(!second.downloaded());
    assert_eq!(release.downloads.load(Ordering::SeqCst), 1);
    assert_eq!(std::fs::read(second.path()).expect("read"), release.body);
}

#[test]
fn eight_threads_download_once() {
    let (server, release) = start(binary_body(), 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BinaryCache::new(dir.path(), &settings());
    let base = server.url();
    let downloaded: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let client = client();
                    hello(&client, &base);
                    let binary =
                        provision(&cache, &client, &base, &release.sha256).expect("provision");
                    assert_eq!(std::fs::read(binary.path()).expect("read"), release.body);
                    binary.downloaded()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(release.downloads.load(Ordering::SeqCst), 1, "one download");
    assert_eq!(
        downloaded.iter().filter(|d| **d).count(),
        1,
        "{downloaded:?}"
    );
}

#[test]
fn eight_processes_download_once() {
    let (server, release) = start(binary_body(), 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let job = ChildJob {
        base: server.url(),
        sha256: release.sha256.clone(),
        cache_dir: dir.path().to_str().expect("utf8").into(),
        hold: false,
    };
    let children: Vec<_> = (0..8).map(|_| spawn_child(&job)).collect();
    let mut downloaded = 0;
    for child in children {
        let out = child.wait_with_output().expect("child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        downloaded += stdout.lines().filter(|l| *l == "downloaded=true").count();
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.starts_with("downloaded="))
                .count(),
            1,
            "{stdout}"
        );
    }
    assert_eq!(release.downloads.load(Ordering::SeqCst), 1, "one download");
    assert_eq!(downloaded, 1);
    let binary = dir
        .path()
        .join("binaries/terraform")
        .join(VERSION)
        .join("terraform");
    assert_eq!(std::fs::read(binary).expect("read"), release.body);
}

#[test]
fn a_checksum_mismatch_leaves_no_file() {
    let (server, release) = start(b"a tampered binary".to_vec(), 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BinaryCache::new(dir.path(), &settings());
    let wrong = hex(&Sha256::digest(b"the real binary"));
    let err = provision(&cache, &client(), &server.url(), &wrong).expect_err("mismatch");
    assert!(
        matches!(err, BinaryCacheError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(release.downloads.load(Ordering::SeqCst), 1);
    let tool_dir = dir.path().join("binaries/terraform");
    let left: Vec<_> = std::fs::read_dir(&tool_dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    assert_eq!(
        left,
        [format!("{VERSION}.lock")],
        "only the lock file remains"
    );
}

#[test]
fn cleanup_never_removes_a_binary_another_process_uses() {
    let (server, release) = start(binary_body(), 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child(&ChildJob {
        base: server.url(),
        sha256: release.sha256.clone(),
        cache_dir: dir.path().to_str().expect("utf8").into(),
        hold: true,
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Waits for the child's own signal (or its exit: then the assertion below fails).
    let holding = lines.any(|l| l.is_ok_and(|l| l == "holding"));
    assert!(holding, "the child did not provision");

    let version_dir = dir.path().join("binaries/terraform").join(VERSION);
    let now = SystemTime::now();
    std::fs::File::open(&version_dir)
        .expect("open")
        .set_modified(now - Duration::from_secs(90 * 86_400))
        .expect("age it");
    // Stale and over a zero-ish limit, but leased by the child.
    let cache = BinaryCache::new(
        dir.path(),
        &Settings {
            size_limit_mb: 1,
            threshold_days: 30,
        },
    );
    let report = cache.cleanup(now).expect("cleanup");
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(
        report.in_use,
        [("terraform".to_string(), VERSION.to_string())]
    );
    assert!(version_dir.join("terraform").is_file());

    drop(child.stdin.take()); // the run ends: the child releases its lease and exits
    assert!(child.wait().expect("child").success());
    let report = cache.cleanup(now).expect("cleanup");
    assert_eq!(
        report.removed,
        [("terraform".to_string(), VERSION.to_string())]
    );
    assert!(!version_dir.exists());
}
