//! A fresh simulator with a pool, a workspace, a configuration version and a tool, plus helpers that
//! walk a task to the point a test needs (registered, acquired, started).

use std::time::Duration;

use scalr_agent::http::{HttpOptions, RetryPolicy};
use scalr_agent::platform::{
    AgentClient, AgentEvent, HeldTask, PlatformClient, Registration, TaskClient, TaskSpec,
};
use scalr_agent::secret::Secret;

use crate::support::platform_sim::{PlatformSim, RunSpec, SimPool, tar_gz};

/// The configuration every run uses unless a test says otherwise.
pub const MAIN_TF: &str = "resource \"terraform_data\" \"x\" {\n  input = \"hello\"\n}\n";
/// The bytes registered as terraform 1.15.5 for linux_amd64.
pub const FAKE_TERRAFORM: &[u8] = b"#!/bin/sh\necho 'Terraform v1.15.5'\n";

pub struct Fixture {
    pub sim: PlatformSim,
    pub pool: SimPool,
    pub ws: String,
    pub cv: String,
    pub client: PlatformClient,
}

/// Quick retries and short long-poll margins, so fault tests finish fast.
pub fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(20),
    }
}

pub fn client_for(sim: &PlatformSim) -> PlatformClient {
    let options = HttpOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        ..HttpOptions::default()
    };
    PlatformClient::new(&sim.url(), &options)
        .expect("client for the simulator")
        .with_retry(policy())
        .with_long_poll_margin(Duration::from_secs(2))
}

pub fn fixture() -> Fixture {
    let sim = PlatformSim::start();
    let pool = sim.create_pool("k8s");
    let ws = sim.create_workspace(&pool.id, "production", "network");
    let cv = sim.upload_configuration_version(&ws, tar_gz(&[("main.tf", MAIN_TF.as_bytes())]));
    sim.register_tool(
        "terraform",
        "1.15.5",
        "linux_amd64",
        "binary",
        FAKE_TERRAFORM.to_vec(),
    );
    let client = client_for(&sim);
    Fixture {
        sim,
        pool,
        ws,
        cv,
        client,
    }
}

impl Fixture {
    pub fn pool_token(&self) -> Secret {
        Secret::new(self.pool.token.clone())
    }

    pub fn agent(&self, name: &str, capacity: u32) -> AgentClient {
        self.client
            .register(
                &self.pool_token(),
                &Registration::kubernetes_controller(name, capacity),
            )
            .expect("register")
    }

    pub fn queue(&self) -> String {
        self.sim.queue_run(&self.ws, RunSpec::new(&self.cv))
    }

    /// Polls until an offer arrives and returns its task id.
    pub fn offered(&self, agent: &AgentClient) -> String {
        for _ in 0..10 {
            let events = agent.poll(1, Duration::from_secs(5)).expect("poll");
            if let Some(AgentEvent::Offer(offer)) = events
                .into_iter()
                .find(|e| matches!(e, AgentEvent::Offer(_)))
            {
                return offer.task_id;
            }
        }
        panic!("no offer\n{}", self.sim.dump());
    }

    /// Queues a run and has `agent` acquire its plan task.
    pub fn acquired(&self, agent: &AgentClient) -> (String, HeldTask) {
        let run = self.queue();
        let task = self.offered(agent);
        let held = agent.acquire(&task).expect("acquire");
        (run, held)
    }

    /// Queues a run, acquires and starts its plan task.
    pub fn started(&self, agent: &AgentClient) -> (String, TaskClient, TaskSpec) {
        let (run, held) = self.acquired(agent);
        let worker = self.client.task(&held.task.id, held.token.clone());
        let spec = worker.start().expect("start");
        (run, worker, spec)
    }
}
