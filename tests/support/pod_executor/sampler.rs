//! The memory sampler (`pod-exec-memory`): every interval, the resident set of each running
//! container (its session) is written to the container's fake cgroup files, where exec-loop's
//! memory monitor reads it, and a container above its memory limit is OOM-killed (SIGKILL, reason
//! `OOMKilled`), as the kernel would. Ends when the executor stops.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::containers::write_cgroup;
use super::node::{PodMsg, Shared};
use super::process::rss_by_session;

/// Samples until `stop` fires.
pub fn run(shared: Arc<Shared>, interval: Duration, stop: Receiver<()>) {
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        let watched = shared.lock().memory.clone();
        if watched.is_empty() {
            continue;
        }
        let usage = rss_by_session();
        for w in watched {
            let bytes = usage.get(&w.pid).copied().unwrap_or(0);
            write_cgroup(&w.cgroup, w.limit, bytes);
            if w.limit.is_some_and(|limit| bytes > limit) {
                shared.update(|st| st.memory.retain(|m| m.pid != w.pid));
                let _ = w.pod.send(PodMsg::OomKill(w.container.clone()));
            }
        }
    }
}
