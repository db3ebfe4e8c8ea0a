//! exec-loop's life: layout, markers and permissions, concurrency, signals to exec-loop itself,
//! shutdown, the worker-gone timeout, and refused connections.

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};

use scalr_agent::ipc::{
    ClientMessage, CommandEvent, ErrorCode, Hello, IpcClient, IpcError, ServerMessage, read_frame,
    write_frame,
};

use super::*;

fn probe(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("probe")
        .args(args)
        .output()
        .expect("run probe")
}

#[test]
fn layout_markers_permissions_and_one_command_at_a_time() {
    let mut exec_loop = ExecLoop::start();
    let started = exec_loop.markers.join("started");
    let healthy = exec_loop.markers.join("healthy");
    assert!(
        wait_until(DEADLINE, || started.exists()),
        "no started marker\n{}",
        exec_loop.log()
    );
    assert!(healthy.exists());
    let healthy_arg = healthy.display().to_string();
    assert!(
        probe(&["--file", &healthy_arg, "--max-age-secs", "60"])
            .status
            .success()
    );
    assert_eq!(mode(&exec_loop.socket), 0o600, "socket private to the user");
    assert_eq!(
        mode(&exec_loop.data),
        0o700,
        "socket directory created private"
    );

    let mut first = exec_loop.connect();
    let mut second = exec_loop.connect();
    let mut spec = sh("echo first; while [ ! -e release ]; do sleep 0.01; done; exit 5");
    spec.cwd = Some(exec_loop.dir.path().to_path_buf());
    let mut handle = first.run(&spec).expect("first run");
    read_until_stdout_contains(&mut handle, "first");
    match second.run(&sh("echo second")) {
        Err(IpcError::Rejected {
            code: ErrorCode::Busy,
            message,
        }) => assert!(message.contains("already running"), "{message}"),
        Err(other) => panic!("expected busy, got {other:?}"),
        Ok(_) => panic!("a second concurrent command was started"),
    }
    fs::write(exec_loop.path("release"), "").expect("release");
    let rest = handle.wait_output().expect("events");
    assert_eq!(
        rest.exit.code,
        Some(5),
        "the first command was not disturbed"
    );
    assert_eq!(
        run_to_end(&mut second, &sh("echo second")).stdout,
        b"second\n"
    );

    drop(first);
    second.shutdown().expect("shutdown");
    assert!(
        exec_loop.wait_exit(DEADLINE).success(),
        "{}",
        exec_loop.log()
    );
    assert!(!exec_loop.socket.exists(), "socket removed at exit");
    assert!(!healthy.exists(), "healthy marker removed at exit");
}

#[test]
fn sigterm_is_absorbed_and_reported_to_the_worker() {
    let mut exec_loop = ExecLoop::start();
    let mut client = exec_loop.connect();
    let mut handle = client.run(&sh("echo ready; exec sleep 300")).expect("run");
    read_until_stdout_contains(&mut handle, "ready");
    exec_loop.signal(libc::SIGTERM);
    let event = handle.next_event().expect("event");
    assert_eq!(
        event,
        Some(CommandEvent::RunnerTerminating {
            signal: libc::SIGTERM
        }),
        "{}",
        exec_loop.log()
    );
    // The command still runs: the worker decides. Here it stops it.
    handle.signaller().signal(libc::SIGTERM).expect("signal");
    let rest = handle.wait_output().expect("events");
    assert_eq!(rest.exit.signal, Some(libc::SIGTERM));
    assert!(exec_loop.is_running(), "exec-loop survived SIGTERM");
    assert_eq!(client.runner_terminating(), Some(libc::SIGTERM));
    client.shutdown().expect("shutdown");
    assert_eq!(exec_loop.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn a_worker_connecting_after_sigint_learns_of_it_first() {
    let exec_loop = ExecLoop::start();
    let started = exec_loop.markers.join("started");
    assert!(wait_until(DEADLINE, || started.exists()));
    exec_loop.signal(libc::SIGINT);
    let mut client = exec_loop.connect();
    let mut handle = client.run(&sh("echo hi")).expect("run");
    assert_eq!(
        handle.next_event().expect("event"),
        Some(CommandEvent::RunnerTerminating {
            signal: libc::SIGINT
        })
    );
    assert_eq!(handle.wait_output().expect("events").stdout, b"hi\n");
}

#[test]
fn shutdown_kills_a_running_command_and_exits_zero() {
    let mut exec_loop = ExecLoop::start();
    let mut client = exec_loop.connect();
    let pid = client.run(&sh("exec sleep 300")).expect("run").pid() as i32;
    // Its events were not read to the end: the client refuses to mix a second run into them.
    assert!(matches!(
        client.run(&sh("true")).map(|h| h.pid()),
        Err(IpcError::RunInProgress)
    ));
    client.shutdown().expect("shutdown");
    assert_eq!(
        exec_loop.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        exec_loop.log()
    );
    assert!(process_gone(pid), "the command outlived exec-loop");
}

#[test]
fn exec_loop_exits_when_no_worker_ever_connects() {
    let mut exec_loop = ExecLoop::start_with(Options {
        args: vec!["--worker-gone-timeout-secs".into(), "1".into()],
        ..Options::default()
    });
    let status = exec_loop.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(3), "{}", exec_loop.log());
    assert!(exec_loop.log().contains("no worker connected"));
}

#[test]
fn the_worker_gone_clock_stops_while_connected_and_restarts_at_disconnect() {
    let mut exec_loop = ExecLoop::start_with(Options {
        args: vec!["--worker-gone-timeout-secs".into(), "1".into()],
        ..Options::default()
    });
    let mut client = exec_loop.connect();
    // Connected for longer than the timeout: exec-loop must still be there to report the exit.
    let output = run_to_end(&mut client, &sh("sleep 2; echo done"));
    assert_eq!(output.stdout, b"done\n");
    assert!(exec_loop.is_running());
    drop(client);
    assert_eq!(
        exec_loop.wait_exit(DEADLINE).code(),
        Some(3),
        "{}",
        exec_loop.log()
    );
}

fn raw_connect(exec_loop: &ExecLoop) -> UnixStream {
    let mut stream = None;
    assert!(wait_until(DEADLINE, || {
        stream = UnixStream::connect(&exec_loop.socket).ok();
        stream.is_some()
    }));
    let stream = stream.expect("connected");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

fn send(stream: &mut UnixStream, message: &ClientMessage) {
    let frame = message.to_frame().expect("encode");
    write_frame(stream, frame.kind, &frame.payload).expect("write");
}

/// Reads the exec-loop's reply: an error, then the end of the connection.
fn expect_refusal(stream: UnixStream, code: ErrorCode) -> String {
    let mut reader = BufReader::new(stream);
    let frame = read_frame(&mut reader).expect("read").expect("a reply");
    let ServerMessage::Error(reply) = ServerMessage::from_frame(frame).expect("decode") else {
        panic!("expected an error frame");
    };
    assert_eq!(reply.code, code, "{}", reply.message);
    assert!(
        read_frame(&mut reader).expect("eof").is_none(),
        "connection closed"
    );
    reply.message
}

#[test]
fn mismatched_versions_and_protocol_violations_are_refused() {
    let exec_loop = ExecLoop::start();

    let mut stream = raw_connect(&exec_loop);
    let hello = Hello {
        major: 99,
        agent_version: "9.0.0".into(),
        ..Hello::current()
    };
    send(&mut stream, &ClientMessage::Hello(hello));
    let message = expect_refusal(stream, ErrorCode::VersionMismatch);
    assert!(
        message.contains("99.") && message.contains("same scalr-agent version"),
        "{message}"
    );

    let mut stream = raw_connect(&exec_loop);
    send(&mut stream, &ClientMessage::Shutdown);
    expect_refusal(stream, ErrorCode::Protocol);

    let mut stream = raw_connect(&exec_loop);
    send(&mut stream, &ClientMessage::Hello(Hello::current()));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let welcome = read_frame(&mut reader).expect("read").expect("welcome");
    assert!(matches!(
        ServerMessage::from_frame(welcome),
        Ok(ServerMessage::Welcome(_))
    ));
    // A header announcing a 1 GiB frame.
    std::io::Write::write_all(&mut stream, &(1u32 << 30).to_be_bytes()).expect("write");
    let frame = read_frame(&mut reader).expect("read").expect("error");
    let ServerMessage::Error(reply) = ServerMessage::from_frame(frame).expect("decode") else {
        panic!("expected an error");
    };
    assert_eq!(reply.code, ErrorCode::Protocol);
    assert!(reply.message.contains("exceeds"), "{}", reply.message);

    // exec-loop keeps serving well-behaved workers.
    let mut client = exec_loop.connect();
    assert_eq!(run_to_end(&mut client, &sh("echo ok")).stdout, b"ok\n");
}

#[test]
fn other_users_are_refused_on_both_sides() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run exec-loop as another user");
        return;
    }
    let exec_loop = ExecLoop::start_with(Options {
        uid: Some(65534),
        ..Options::default()
    });
    // Root may open the 0600 socket, but exec-loop checks the peer's uid.
    let stream = raw_connect(&exec_loop);
    let message = expect_refusal(stream, ErrorCode::PermissionDenied);
    assert!(message.contains("uid 0"), "{message}");
    // And the client checks exec-loop's uid before saying anything.
    match IpcClient::connect(&exec_loop.socket, DEADLINE) {
        Err(IpcError::PeerUid {
            peer_uid: 65534,
            own_uid: 0,
        }) => {}
        other => panic!("expected a peer uid error, got {other:?}"),
    }
    assert!(exec_loop.log().contains("refused a connection from uid 0"));
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fs::create_dir(&data).expect("mkdir");
    let socket = data.join("exec-loop.sock");
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists(), "a dead socket file remains");

    let run = |timeout: &str| {
        Command::new(BIN)
            .args(["exec-loop", "--worker-gone-timeout-secs", timeout])
            .env("SCALR_AGENT_DATA_DIR", &data)
            .env("SCALR_AGENT_CGROUP_ROOT", dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let mut first = run("60");
    let mut client = None;
    assert!(wait_until(DEADLINE, || {
        client = IpcClient::connect(&socket, Duration::from_millis(200)).ok();
        client.is_some()
    }));
    let second = run("60").wait_with_output().expect("second exec-loop");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already listening"), "{stderr}");

    client.expect("connected").shutdown().expect("shutdown");
    assert!(first.wait().expect("wait").success());
}
