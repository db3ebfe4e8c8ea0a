//! How a pod's life ends, on the pod's thread: containers stopped (SIGTERM, SIGKILL after the
//! grace period, with `Killing` Events), the terminal phase reported, and then the kubelet's final
//! delete (`gracePeriodSeconds=0`) for a deleted pod; a node-pressure eviction (Failed, `Evicted`,
//! `DisruptionTarget`, the pod kept); or, when the pod vanished, the node was lost or the executor
//! stops, everything killed at once without a word to the API.

use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use scalr_agent::kube::DeleteParams;

use super::kubelet::{End, PodWorker};
use super::node::PodMsg;

impl PodWorker {
    /// Containers whose process runs as far as this thread knows: until their `Exited` message
    /// is handled (the waiter always sends one).
    fn running(&self) -> Vec<String> {
        self.procs
            .keys()
            .filter(|n| self.model.container(n).is_some_and(|c| c.running()))
            .cloned()
            .collect()
    }

    /// SIGTERM to every running container, SIGKILL after `grace`; returns once all exited.
    /// `announce`: a live kubelet records `Killing` and reports each exit (a lost node does not).
    fn stop_containers(&mut self, grace: Duration, announce: bool) {
        for name in self.running() {
            if announce {
                self.event(
                    Some(&name),
                    false,
                    "Killing",
                    &format!("Stopping container {name}"),
                );
            }
            if let Some(p) = self.procs.get(&name) {
                p.process.signal(libc::SIGTERM);
            }
        }
        self.retries.clear();
        let mut deadline = Instant::now() + grace;
        let mut killed = false;
        while !self.running().is_empty() {
            match self.inbox.recv_deadline(deadline) {
                Ok(PodMsg::Exited { container, code }) => {
                    self.exited(&container, code);
                    if announce {
                        let _ = self.report();
                    }
                }
                Ok(PodMsg::Updated(pod)) => self.pod = *pod,
                Ok(PodMsg::OomKill(c)) => {
                    if let Some(p) = self.procs.get_mut(&c) {
                        p.oom = true;
                        p.process.kill_all();
                    }
                }
                Ok(PodMsg::Signal(c, s)) => {
                    if let Some(p) = self.procs.get(&c) {
                        p.process.signal(s);
                    }
                }
                Ok(PodMsg::Removed | PodMsg::Stop | PodMsg::NodeLost)
                | Err(RecvTimeoutError::Disconnected) => {
                    if !killed {
                        self.kill_now();
                        killed = true;
                        deadline = Instant::now() + Duration::from_secs(10);
                    }
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if !killed => {
                    self.kill_now();
                    killed = true;
                    deadline = Instant::now() + Duration::from_secs(10);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.node.shared.error(format!(
                        "pod {}/{}: containers {:?} outlived SIGKILL by 10 s",
                        self.ns,
                        self.name,
                        self.running()
                    ));
                    return;
                }
            }
        }
    }

    fn kill_now(&self) {
        for p in self.procs.values() {
            p.process.kill_all();
        }
    }

    /// All containers are done: stop sidecars, report the terminal phase, wait for the pod's end.
    pub(super) fn after_containers(&mut self) -> End {
        let sidecars = self.running();
        if !sidecars.is_empty() {
            let grace = self.grace();
            self.stop_containers(grace, true);
        }
        if self.report().is_err() {
            return End::Gone;
        }
        loop {
            if let Err(end) = self.wait(None) {
                return end;
            }
        }
    }

    pub(super) fn end(mut self, end: End) {
        match end {
            End::Deleted { grace } => {
                self.stop_containers(grace, true);
                self.settle("Failed");
                let _ = self.report();
                let params = DeleteParams {
                    grace_period_secs: Some(0),
                    ..DeleteParams::default()
                }
                .uid(&self.uid);
                match self.pods().delete(&self.name, &params) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => self.node.shared.error(format!(
                        "final delete of pod {}/{}: {e}",
                        self.ns, self.name
                    )),
                }
                self.clean_up();
            }
            End::Pressure => {
                let message = "The node was low on resource: memory. ".to_string();
                self.event(None, true, "Evicted", &message);
                self.model.reason = Some("Evicted".into());
                self.model.message = Some(message.clone());
                self.model.disruption = Some(("TerminationByKubelet".into(), message));
                self.stop_containers(Duration::from_secs(1), true);
                self.model.forced_phase = Some("Failed".into());
                if self.report().is_err() {
                    return self.clean_up();
                }
                // Evicted pods stay until someone deletes them.
                let next = loop {
                    match self.wait(None) {
                        Ok(()) => {}
                        Err(End::Pressure) => {}
                        Err(other) => break other,
                    }
                };
                self.end(next);
            }
            End::Gone | End::NodeLost | End::Stop => {
                self.kill_now();
                self.stop_containers(Duration::ZERO, false);
                if end != End::Stop {
                    self.clean_up();
                }
            }
        }
    }

    /// The terminal phase of a pod that was stopped from outside.
    fn settle(&mut self, otherwise: &str) {
        if !self.model.terminal() {
            self.model.forced_phase = Some(otherwise.to_string());
        }
    }

    fn clean_up(&mut self) {
        let key = (self.ns.clone(), self.name.clone());
        self.node.shared.update(|st| st.volumes.remove(&key));
        let _ = std::fs::remove_dir_all(&self.dirs.root);
    }
}
