//! Ten agents racing for one task: exactly one wins, every loser gets 409 `already-acquired`, and the
//! winner can repeat its acquire. With duplicate offers (a scripted fault) every agent is offered the
//! same task and the race still has one winner.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use scalr_agent::platform::{AgentClient, AgentEvent, HeldTask, PlatformError};

use super::fixture::fixture;
use crate::support::platform_sim::TaskState;

const AGENTS: usize = 10;

fn race(agents: &[AgentClient], task: &str) -> Vec<Result<HeldTask, PlatformError>> {
    let barrier = Arc::new(Barrier::new(agents.len()));
    let handles: Vec<_> = agents
        .iter()
        .map(|agent| {
            let (agent, barrier, task) = (agent.clone(), barrier.clone(), task.to_string());
            std::thread::spawn(move || {
                barrier.wait();
                agent.acquire(&task)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("racer"))
        .collect()
}

#[test]
fn ten_agents_racing_for_one_task_have_exactly_one_winner() {
    let f = fixture();
    let agents: Vec<AgentClient> = (0..AGENTS)
        .map(|i| f.agent(&format!("controller-{i}"), 1))
        .collect();
    for round in 0..20 {
        let run = f.queue();
        let task = f.sim.run(&run).tasks[0].clone();
        let results = race(&agents, &task);
        let winners: Vec<usize> = (0..AGENTS).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: winners {winners:?}\n{}",
            f.sim.dump()
        );
        for (i, result) in results.iter().enumerate() {
            if let Err(e) = result {
                assert_eq!(
                    (e.status(), e.code()),
                    (Some(409), Some("already-acquired")),
                    "agent {i}: {e}"
                );
            }
        }
        let winner = &agents[winners[0]];
        let held = results[winners[0]].as_ref().expect("winner");
        let view = f.sim.task(&task);
        assert_eq!(view.state, TaskState::Acquired);
        assert_eq!(
            view.holder.as_deref(),
            Some(winner.session().agent_id.as_str())
        );
        let again = winner
            .acquire(&task)
            .expect("the winner repeats its acquire");
        assert_eq!(again.token, held.token, "same token");
        winner
            .fail_task(&task, "race round over")
            .expect("free the winner");
    }
}

#[test]
fn duplicate_offers_reach_every_agent_and_still_one_wins() {
    let f = fixture();
    let agents: Vec<AgentClient> = (0..AGENTS)
        .map(|i| f.agent(&format!("controller-{i}"), 1))
        .collect();
    f.sim.set_duplicate_offers(true);
    let run = f.queue();
    let mut offered = Vec::new();
    for agent in &agents {
        let events = agent.poll(1, Duration::from_secs(5)).expect("poll");
        match events.as_slice() {
            [AgentEvent::Offer(o)] if o.run_id == run => offered.push(o.task_id.clone()),
            other => panic!("expected the offer, got {other:?}"),
        }
    }
    offered.dedup();
    assert_eq!(offered.len(), 1, "the same task to all");
    let results = race(&agents, &offered[0]);
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        agents[0].poll(1, Duration::ZERO).expect("poll").is_empty(),
        "an acquired task is not offered"
    );
}
