//! Running commands through exec-loop: output, exit status, environment, signals, volume, and
//! what happens to a command whose worker disappears.

use std::fs;
use std::io::Write;

use scalr_agent::ipc::{CommandEvent, CommandSpec, ErrorCode, IpcError, MAX_OUTPUT_CHUNK};
use sha2::{Digest, Sha256};

use super::*;

#[test]
fn output_is_binary_safe_kept_apart_in_order_and_secrets_stay_out_of_the_log() {
    let exec_loop = ExecLoop::start();
    let mut client = exec_loop.connect();
    let work = exec_loop.path("work");
    fs::create_dir(&work).expect("mkdir");
    let script = r#"printf 'out-1\n'; printf 'err-1\n' >&2; printf 'out-2\n'
printf 'err-2\n' >&2; printf '\000\377\n'; echo "$GREETING from $PWD"; exit 7"#;
    let spec = CommandSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "argv-secret-4711".into(),
        ],
        env: vec![
            ("GREETING".into(), "hello".into()),
            ("SCALR_TOKEN".into(), "env-secret-0815".into()),
        ],
        cwd: Some(work.clone()),
        clear_env: false,
    };
    let output = run_to_end(&mut client, &spec);
    let mut expected = b"out-1\nout-2\n\x00\xff\n".to_vec();
    expected.extend(format!("hello from {}\n", work.display()).into_bytes());
    assert_eq!(output.stdout, expected, "{}", exec_loop.log());
    assert_eq!(output.stderr, b"err-1\nerr-2\n");
    assert_eq!((output.exit.code, output.exit.signal), (Some(7), None));
    client.shutdown().expect("shutdown");
    let log = exec_loop.log();
    assert!(log.contains("run CommandSpec"), "the run is logged: {log}");
    assert!(
        !log.contains("env-secret-0815") && !log.contains("argv-secret-4711"),
        "{log}"
    );
}

#[test]
fn environment_is_inherited_unless_cleared() {
    let exec_loop = ExecLoop::start_with(Options {
        env: vec![("INHERITED_FROM_RUNNER".into(), "yes".into())],
        ..Options::default()
    });
    let mut client = exec_loop.connect();
    let mut spec = sh("echo \"inherited=${INHERITED_FROM_RUNNER-unset} added=${ADDED-unset}\"");
    spec.argv[0] = "/bin/sh".into();
    spec.env = vec![("ADDED".into(), "1".into()), ("ADDED".into(), "2".into())];
    assert_eq!(
        stdout_text(&run_to_end(&mut client, &spec)),
        "inherited=yes added=2\n"
    );
    spec.clear_env = true;
    assert_eq!(
        stdout_text(&run_to_end(&mut client, &spec)),
        "inherited=unset added=2\n"
    );
}

#[test]
fn exit_codes_signals_and_refused_requests_are_reported() {
    let exec_loop = ExecLoop::start();
    let mut client = exec_loop.connect();

    let killed = run_to_end(&mut client, &sh("echo before; kill -KILL $$; echo after"));
    assert_eq!(
        (killed.exit.code, killed.exit.signal),
        (None, Some(libc::SIGKILL))
    );
    assert_eq!(stdout_text(&killed), "before\n");
    assert_eq!(killed.exit.peak_memory_bytes, None, "no cgroup, no monitor");

    let cases = [
        (
            vec!["/nonexistent/terraform".to_string()],
            ErrorCode::SpawnFailed,
        ),
        (vec![], ErrorCode::InvalidRequest),
    ];
    for (argv, code) in cases {
        let spec = CommandSpec {
            argv,
            ..CommandSpec::default()
        };
        match client.run(&spec) {
            Err(IpcError::Rejected { code: got, message }) => {
                assert_eq!(got, code, "{message}")
            }
            Err(other) => panic!("expected a refusal, got {other:?}"),
            Ok(_) => panic!("expected a refusal for {spec:?}"),
        }
    }
    // Refusals leave the connection usable.
    let ok = run_to_end(&mut client, &sh("exit 0"));
    assert_eq!(ok.exit.code, Some(0));
}

#[test]
fn signals_from_another_thread_reach_every_process_of_the_group() {
    let exec_loop = ExecLoop::start();
    let mut client = exec_loop.connect();
    let script = r#"trap 'echo parent-term' TERM
sh -c 'trap "echo child-term; exit 3" TERM; echo child-ready; while :; do sleep 0.01; done' &
child=$!
wait $child
wait $child
echo "child-status=$?""#;
    let mut handle = client.run(&sh(script)).expect("run");
    let signaller = handle.signaller();
    let (go, ready) = crossbeam_channel::bounded::<()>(1);
    let sender = std::thread::spawn(move || {
        ready.recv().expect("go");
        signaller.signal(libc::SIGTERM)
    });
    let mut stdout = Vec::new();
    for event in read_until_stdout_contains(&mut handle, "child-ready") {
        if let CommandEvent::Stdout(bytes) = event {
            stdout.extend(bytes);
        }
    }
    go.send(()).expect("signal thread alive");
    sender.join().expect("signal thread").expect("signal sent");
    let rest = handle.wait_output().expect("events");
    stdout.extend(rest.stdout);
    let text = String::from_utf8_lossy(&stdout);
    for line in ["parent-term", "child-term", "child-status=3"] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in {text:?}\n{}",
            exec_loop.log()
        );
    }
    assert_eq!(rest.exit.code, Some(0));
}

/// Deterministic pseudo-random bytes (xorshift64), so the test needs no random source.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn fifty_megabytes_of_output_arrive_complete_and_in_order() {
    const SIZE: usize = 50 * 1024 * 1024;
    let exec_loop = ExecLoop::start();
    let data = pseudo_random(SIZE);
    let file = exec_loop.path("big.bin");
    fs::File::create(&file)
        .and_then(|mut f| f.write_all(&data))
        .expect("write big file");
    let expected = Sha256::digest(&data).to_vec();
    drop(data);

    let mut client = exec_loop.connect();
    let spec = CommandSpec {
        argv: vec!["cat".into(), file.display().to_string()],
        ..CommandSpec::default()
    };
    let mut handle = client.run(&spec).expect("run");
    let mut hasher = Sha256::new();
    let (mut received, mut largest_chunk) = (0usize, 0usize);
    let mut exit = None;
    while let Some(event) = handle.next_event().expect("event") {
        match event {
            CommandEvent::Stdout(chunk) => {
                received += chunk.len();
                largest_chunk = largest_chunk.max(chunk.len());
                hasher.update(&chunk);
            }
            CommandEvent::Exited(report) => exit = Some(report),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, SIZE);
    assert_eq!(hasher.finalize().to_vec(), expected, "content differs");
    assert!(
        largest_chunk <= MAX_OUTPUT_CHUNK,
        "chunk of {largest_chunk} bytes"
    );
    assert_eq!(exit.and_then(|e| e.code), Some(0));
}

#[test]
fn the_command_dies_when_its_worker_disconnects_and_the_next_worker_is_served() {
    let exec_loop = ExecLoop::start();
    let mut client = exec_loop.connect();
    let mut handle = client
        .run(&sh("sleep 300 & echo \"pids $$ $!\"; wait"))
        .expect("run");
    let mut stdout = Vec::new();
    for event in read_until_stdout_contains(&mut handle, "\n") {
        if let CommandEvent::Stdout(bytes) = event {
            stdout.extend(bytes);
        }
    }
    let line = String::from_utf8_lossy(&stdout).into_owned();
    let pids: Vec<i32> = line
        .trim()
        .strip_prefix("pids ")
        .expect("pids line")
        .split(' ')
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(pids[0] as u32, handle.pid(), "the leader is the shell");
    drop(client); // the worker goes away mid-command
    for pid in pids {
        assert!(
            wait_until(DEADLINE, || process_gone(pid)),
            "process {pid} survived its worker\n{}",
            exec_loop.log()
        );
    }
    let mut next = exec_loop.connect();
    assert_eq!(run_to_end(&mut next, &sh("echo again")).stdout, b"again\n");
}

#[test]
fn back_to_back_runs_from_two_workers_are_never_refused_as_busy() {
    // Regression: `Exited` used to reach the worker before exec-loop freed its command slot, so an
    // immediate next run could be refused as busy.
    let exec_loop = ExecLoop::start();
    let mut clients = [exec_loop.connect(), exec_loop.connect()];
    for i in 0..60 {
        let client = &mut clients[i % 2];
        let output = run_to_end(client, &sh(&format!("echo {i}")));
        assert_eq!(stdout_text(&output), format!("{i}\n"));
    }
}

#[test]
fn a_background_process_holding_the_output_is_killed_after_the_leader_exits() {
    let exec_loop = ExecLoop::start();
    let mut client = exec_loop.connect();
    // The leader exits at once; its background child keeps stdout open and would run for 300 s.
    let output = run_to_end(&mut client, &sh("sleep 300 & echo \"child $!\"; exit 4"));
    assert_eq!(output.exit.code, Some(4));
    let text = stdout_text(&output);
    let pid: i32 = text
        .trim()
        .strip_prefix("child ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    assert!(
        wait_until(DEADLINE, || process_gone(pid)),
        "the background child outlived its command\n{}",
        exec_loop.log()
    );
    assert!(
        exec_loop
            .log()
            .contains("keeps its output open; killing the group")
    );
}

#[test]
fn orphans_left_by_commands_are_reaped() {
    let exec_loop = ExecLoop::start_with(Options {
        args: vec!["--healthy-interval-secs".into(), "1".into()],
        ..Options::default()
    });
    let mut client = exec_loop.connect();
    // A grandchild that leaves the group (setsid), is orphaned, and then exits by itself: it is
    // re-parented to exec-loop (a subreaper), which must reap it.
    let output = run_to_end(
        &mut client,
        &sh("setsid sh -c 'sleep 0.2' </dev/null >/dev/null 2>&1 & echo \"orphan $!\""),
    );
    let text = stdout_text(&output);
    let pid: i32 = text
        .trim()
        .strip_prefix("orphan ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    assert!(
        wait_until(DEADLINE, || !Path::new(&format!("/proc/{pid}")).exists()),
        "orphan {pid} was not reaped\n{}",
        exec_loop.log()
    );
}
