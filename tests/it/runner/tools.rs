//! `scalr-agent install` and `scalr-agent probe`, as the task pod's init container and exec
//! probes run them.

use std::time::SystemTime;

use super::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run scalr-agent")
}

#[test]
fn install_copies_the_binary_atomically_and_the_copy_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("opt/scalr-agent/bin");
    let target = bin.join("scalr-agent");
    for _ in 0..2 {
        let output = run(&["install", &bin.display().to_string()]);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(mode(&target), 0o755);
        assert_eq!(
            fs::read(&target).expect("copy"),
            fs::read(BIN).expect("original")
        );
        let names: Vec<_> = fs::read_dir(&bin)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["scalr-agent"], "no temporary file left behind");
    }
    let copy = Command::new(&target)
        .args(["probe", "--file", "/nonexistent/marker"])
        .output()
        .expect("run the copy");
    assert_eq!(copy.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&copy.stderr).contains("does not exist"));
}

#[test]
fn install_reports_an_unwritable_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("file");
    fs::write(&blocker, "").expect("write");
    let output = run(&["install", &blocker.join("bin").display().to_string()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("could not create"));
}

#[test]
fn probe_exit_codes_for_missing_fresh_and_stale_markers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("healthy");
    let arg = marker.display().to_string();

    let missing = run(&["probe", "--file", &arg]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    fs::write(&marker, "").expect("write");
    assert!(run(&["probe", "--file", &arg]).status.success());
    assert!(
        run(&["probe", "--file", &arg, "--max-age-secs", "60"])
            .status
            .success()
    );

    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&marker)
        .and_then(|f| f.set_modified(an_hour_ago))
        .expect("backdate");
    assert!(
        run(&["probe", "--file", &arg]).status.success(),
        "no age limit"
    );
    let stale = run(&["probe", "--file", &arg, "--max-age-secs", "60"]);
    assert_eq!(stale.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&stale.stderr);
    assert!(
        stderr.contains("last touched") && stderr.contains("allowed: 60s"),
        "{stderr}"
    );
}
