//! What a test reads from the simulator: runs, tasks, agents, logs, state, artefacts, tokens and the
//! request log, as plain owned views; `wait_until` to wait on a condition with a deadline (woken by
//! every change, never by sleeping); `dump` to print everything when an assertion fails.

use std::time::{Duration, Instant};

use super::PlatformSim;
use super::faults::LoggedRequest;
use super::model::*;
use super::routes::Route;

/// A run as the test sees it.
#[derive(Clone, Debug)]
pub struct RunView {
    pub id: String,
    pub workspace: String,
    pub status: RunStatus,
    pub message: Option<String>,
    /// Task ids, plan first.
    pub tasks: Vec<String>,
}

/// A task as the test sees it.
#[derive(Clone, Debug)]
pub struct TaskView {
    pub id: String,
    pub run: String,
    pub stage: Stage,
    pub state: TaskState,
    pub attempt: u32,
    pub holder: Option<String>,
    pub cancel: Option<CancelMode>,
    pub result: Option<TaskResult>,
}

/// An agent as the test sees it.
#[derive(Clone, Debug)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub presence: Presence,
    pub capacity: u32,
    pub version: String,
}

impl PlatformSim {
    /// A run; panics on an unknown id.
    pub fn run(&self, id: &str) -> RunView {
        let world = self.shared().world();
        let run = world.runs.get(id).unwrap_or_else(|| panic!("no run {id}"));
        RunView {
            id: run.id.clone(),
            workspace: run.workspace.clone(),
            status: run.status,
            message: run.message.clone(),
            tasks: run.tasks.clone(),
        }
    }

    /// A task; panics on an unknown id.
    pub fn task(&self, id: &str) -> TaskView {
        let world = self.shared().world();
        let t = world
            .tasks
            .get(id)
            .unwrap_or_else(|| panic!("no task {id}"));
        TaskView {
            id: t.id.clone(),
            run: t.run.clone(),
            stage: t.stage,
            state: t.state,
            attempt: t.attempt,
            holder: t.holder.clone(),
            cancel: t.cancel.map(|(m, _)| m),
            result: t.result.clone(),
        }
    }

    /// The task of `run` for `stage`, once it exists.
    pub fn stage_task(&self, run: &str, stage: Stage) -> Option<String> {
        let world = self.shared().world();
        world.runs[run]
            .tasks
            .iter()
            .find(|t| world.tasks[*t].stage == stage)
            .cloned()
    }

    /// An agent; panics on an unknown id.
    pub fn agent(&self, id: &str) -> AgentView {
        let world = self.shared().world();
        let a = world
            .agents
            .get(id)
            .unwrap_or_else(|| panic!("no agent {id}"));
        AgentView {
            id: a.id.clone(),
            name: a.attrs.name.clone(),
            pool: a.pool.clone(),
            presence: a.presence,
            capacity: a.attrs.capacity,
            version: a.attrs.version.clone(),
        }
    }

    /// Every agent ever registered.
    pub fn agents(&self) -> Vec<AgentView> {
        let ids: Vec<String> = self.shared().world().agents.keys().cloned().collect();
        ids.iter().map(|id| self.agent(id)).collect()
    }

    /// The log of a task.
    pub fn log(&self, task: &str) -> Vec<u8> {
        self.shared().world().tasks[task].log.clone()
    }

    /// The length of a task's log (cheaper than `log` for a large log).
    pub fn log_len(&self, task: &str) -> usize {
        self.shared().world().tasks[task].log.len()
    }

    /// A task's log from byte `from` on.
    pub fn log_from(&self, task: &str, from: usize) -> Vec<u8> {
        let world = self.shared().world();
        let log = &world.tasks[task].log;
        log.get(from..).map(<[u8]>::to_vec).unwrap_or_default()
    }

    /// The current state of a workspace.
    pub fn state(&self, workspace: &str) -> Option<Vec<u8>> {
        self.shared().world().workspaces[workspace]
            .state
            .versions
            .last()
            .cloned()
    }

    /// How many state versions a workspace has.
    pub fn state_versions(&self, workspace: &str) -> usize {
        self.shared().world().workspaces[workspace]
            .state
            .versions
            .len()
    }

    /// The id of the lock on a workspace's state, if locked.
    pub fn state_lock(&self, workspace: &str) -> Option<String> {
        self.shared().world().workspaces[workspace]
            .state
            .lock
            .as_ref()
            .map(|(id, _)| id.clone())
    }

    /// An artefact of a run.
    pub fn artefact(&self, run: &str, kind: &str) -> Option<Vec<u8>> {
        self.shared().world().runs[run].artefacts.get(kind).cloned()
    }

    /// The current token of a task (what the acquiring agent got).
    pub fn task_token(&self, task: &str) -> Option<String> {
        self.shared().world().tasks[task].token.clone()
    }

    /// The run token of a run.
    pub fn run_token(&self, run: &str) -> String {
        self.shared().world().runs[run].token.clone()
    }

    /// The session token an agent holds now.
    pub fn session_token(&self, agent: &str) -> String {
        self.shared().world().agents[agent].session.clone()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared()
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests of `route` so far.
    pub fn requests_of(&self, route: Route) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.route == Some(route))
            .collect()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared()
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Waits until `check` returns `Some`, re-checking whenever the world changes; panics with a
    /// dump after `timeout`.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let generation = self.shared().world().generation;
            if let Some(value) = check(self) {
                return value;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.dump()
                );
            }
            let mut world = self.shared().world();
            if world.generation == generation {
                world.wait_until(deadline.min(Instant::now() + Duration::from_millis(200)));
            }
        }
    }

    /// Waits until the run's status satisfies `done`.
    pub fn wait_for_run(
        &self,
        run: &str,
        timeout: Duration,
        done: impl Fn(RunStatus) -> bool,
    ) -> RunView {
        self.wait_until(timeout, &format!("run {run}"), |sim| {
            let view = sim.run(run);
            done(view.status).then_some(view)
        })
    }

    /// Everything the simulator holds and every request, for failure messages. Tokens are not shown.
    pub fn dump(&self) -> String {
        let mut out = String::from("--- platform simulator ---\n");
        {
            let world = self.shared().world();
            for a in world.agents.values() {
                out.push_str(&format!(
                    "agent {} name={} pool={} {:?} capacity={}\n",
                    a.id, a.attrs.name, a.pool, a.presence, a.attrs.capacity
                ));
            }
            for r in world.runs.values() {
                out.push_str(&format!(
                    "run {} ws={} {} message={:?}\n",
                    r.id,
                    r.workspace,
                    r.status.as_str(),
                    r.message
                ));
                for t in &r.tasks {
                    let t = &world.tasks[t];
                    out.push_str(&format!(
                        "  task {} {} {} attempt={} holder={:?} cancel={:?} log={}B result={:?}\n",
                        t.id,
                        t.stage.as_str(),
                        t.state.as_str(),
                        t.attempt,
                        t.holder,
                        t.cancel.map(|(m, _)| m),
                        t.log.len(),
                        t.result
                    ));
                }
            }
        }
        out.push_str("--- requests ---\n");
        for r in self.requests() {
            out.push_str(&format!("{r}\n"));
        }
        out
    }
}
