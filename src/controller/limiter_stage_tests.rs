use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};

use super::*;
use crate::model::{SlotFreedCause, TaskAcquired, TaskIdentity};
use crate::secret::Secret;

fn identity(id: &str) -> TaskIdentity {
    TaskIdentity {
        task_id: id.into(),
        run_id: format!("run-{id}"),
        stage: "plan".into(),
        workspace_id: "ws-1".into(),
        environment_id: "env-1".into(),
        attempt: 1,
    }
}

fn offer(id: &str) -> TaskOffered {
    TaskOffered {
        identity: identity(id),
        expires_at: None,
    }
}

fn stage(capacity: u32) -> (LimiterStage, Receiver<LaunchRequest>, FreeSlots) {
    let (tx, rx) = bounded(64);
    let free = FreeSlots::default();
    let stage = LimiterStage::new(capacity, tx, free.clone(), Arc::new(Metrics::default()));
    (stage, rx, free)
}

fn offered(stage: &mut LimiterStage, ids: &[&str], now: Instant) -> u32 {
    let (reply, answer) = bounded(1);
    stage.handle(
        LimiterInput::Offered {
            offers: ids.iter().map(|id| offer(id)).collect(),
            reply: Some(reply),
        },
        now,
    );
    answer
        .try_recv()
        .expect("the limiter replies with the free capacity")
}

fn launched_ids(rx: &Receiver<LaunchRequest>) -> Vec<String> {
    rx.try_iter().map(|r| r.task_id().to_string()).collect()
}

#[test]
fn admits_up_to_capacity_and_replies_with_what_is_left() {
    let (mut s, rx, free) = stage(2);
    let now = Instant::now();
    assert_eq!(free.get(), 2);
    assert_eq!(offered(&mut s, &["t1", "t2", "t3"], now), 0);
    assert_eq!(launched_ids(&rx), ["t1", "t2"]);
    assert_eq!(s.limiter().waiting(), 1);
    assert_eq!(free.get(), 0);
}

fn seen(task: &str, attempt: u32, terminal: bool) -> JobSeen {
    JobSeen {
        task_id: task.into(),
        attempt,
        terminal,
    }
}

#[test]
fn only_the_watch_confirms_a_launch_and_a_relist_keeps_launching_slots() {
    let (mut s, rx, _) = stage(1);
    let now = Instant::now();
    let mut second = offer("t1");
    second.identity.attempt = 2;
    s.handle(
        LimiterInput::Offered {
            offers: vec![second],
            reply: None,
        },
        now,
    );
    assert_eq!(launched_ids(&rx), ["t1"]);
    // A snapshot taken before the Job existed must not free the slot of a launch in progress.
    s.handle(LimiterInput::JobsListed(vec![]), now);
    assert_eq!(s.limiter().slot("t1"), Some(SlotState::Launching));
    // The older attempt's Job finishing or vanishing (it is being replaced) changes nothing.
    s.handle(LimiterInput::JobChanged(seen("t1", 1, true)), now);
    let gone = LimiterInput::JobGone {
        task_id: "t1".into(),
        attempt: 1,
    };
    s.handle(gone, now);
    assert_eq!(s.limiter().slot("t1"), Some(SlotState::Launching));
    s.handle(LimiterInput::JobChanged(seen("t1", 2, false)), now);
    assert_eq!(s.limiter().slot("t1"), Some(SlotState::Launched));
    // Once launched, a relist without the Job frees the slot and admits the waiter.
    offered(&mut s, &["t2"], now);
    assert!(launched_ids(&rx).is_empty());
    s.handle(LimiterInput::JobsListed(vec![]), now);
    assert_eq!(s.limiter().slot("t1"), None);
    assert_eq!(launched_ids(&rx), ["t2"]);
}

#[test]
fn a_relist_confirms_a_launch_whose_job_it_shows_so_its_end_frees_the_slot() {
    // A launch whose creation the broken watch never delivered: the relist shows the Job, and when
    // it finishes the slot returns (it used to stay `Launching` forever).
    let (mut s, rx, _) = stage(1);
    let now = Instant::now();
    offered(&mut s, &["t1", "t2"], now);
    assert_eq!(launched_ids(&rx), ["t1"]);
    s.handle(LimiterInput::JobsListed(vec![seen("t1", 1, false)]), now);
    assert_eq!(s.limiter().slot("t1"), Some(SlotState::Launched));
    s.handle(LimiterInput::JobChanged(seen("t1", 1, true)), now);
    assert_eq!(launched_ids(&rx), ["t2"]);
    // And a relist showing the launched attempt's Job already finished ends the slot at once.
    s.handle(LimiterInput::JobsListed(vec![seen("t2", 1, true)]), now);
    assert_eq!(s.limiter().in_flight(), 0);
}

#[test]
fn slots_return_on_terminal_or_deleted_jobs_and_abandoned_launches() {
    let cases: [(&str, LimiterInput); 3] = [
        (
            "terminal",
            LimiterInput::JobChanged(JobSeen {
                task_id: "t1".into(),
                attempt: 1,
                terminal: true,
            }),
        ),
        (
            "deleted",
            LimiterInput::JobGone {
                task_id: "t1".into(),
                attempt: 1,
            },
        ),
        (
            "abandoned",
            LimiterInput::SlotFreed(SlotFreed {
                task_id: "t1".into(),
                cause: SlotFreedCause::LaunchAbandoned,
            }),
        ),
    ];
    for (name, input) in cases {
        let (mut s, rx, free) = stage(1);
        let now = Instant::now();
        offered(&mut s, &["t1", "t2"], now);
        if name != "abandoned" {
            s.handle(
                LimiterInput::JobChanged(JobSeen {
                    task_id: "t1".into(),
                    attempt: 1,
                    terminal: false,
                }),
                now,
            );
        }
        let _ = launched_ids(&rx);
        s.handle(input, now + Duration::from_secs(1));
        assert_eq!(launched_ids(&rx), ["t2"], "{name}");
        assert_eq!(free.get(), 0, "{name}");
    }
}

#[test]
fn terminal_jobs_in_a_relist_never_count() {
    let (mut s, _rx, free) = stage(3);
    let now = Instant::now();
    let jobs = vec![
        JobSeen {
            task_id: "a".into(),
            attempt: 1,
            terminal: false,
        },
        JobSeen {
            task_id: "b".into(),
            attempt: 1,
            terminal: true,
        },
    ];
    s.handle(LimiterInput::JobsListed(jobs), now);
    assert_eq!(s.limiter().in_flight(), 1);
    assert_eq!(free.get(), 2);
}

#[test]
fn held_tasks_wait_for_a_slot_without_expiring() {
    let (mut s, rx, _) = stage(1);
    let now = Instant::now();
    offered(&mut s, &["t1"], now);
    s.handle(
        LimiterInput::Held(TaskAcquired {
            identity: identity("held"),
            task_token: Secret::new("limiter-stage-held-token"),
        }),
        now,
    );
    s.tick(now + Duration::from_secs(3600));
    assert_eq!(s.limiter().waiting(), 1);
    s.handle(
        LimiterInput::SlotFreed(SlotFreed {
            task_id: "t1".into(),
            cause: SlotFreedCause::LaunchAbandoned,
        }),
        now,
    );
    let ids = launched_ids(&rx);
    assert_eq!(ids, ["t1", "held"]);
}

#[test]
fn offers_lapse_before_their_lease_ends() {
    let (mut s, _rx, _) = stage(1);
    let now = Instant::now();
    offered(&mut s, &["t1"], now);
    let mut late = offer("t2");
    late.expires_at = Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5));
    s.handle(
        LimiterInput::Offered {
            offers: vec![late],
            reply: None,
        },
        now,
    );
    let deadline = s.next_deadline().expect("a waiting offer with a lease");
    assert!(deadline <= now + Duration::from_secs(5) - LEASE_MARGIN + Duration::from_millis(50));
    s.tick(deadline);
    assert_eq!(s.limiter().waiting(), 0);
}

#[test]
fn draining_admits_nothing_and_advertises_nothing() {
    let (mut s, rx, free) = stage(2);
    let now = Instant::now();
    s.handle(LimiterInput::Drain, now);
    assert_eq!(offered(&mut s, &["t1"], now), 0);
    assert!(launched_ids(&rx).is_empty());
    assert_eq!(free.get(), 0);
}

#[test]
fn a_task_offered_again_at_a_higher_attempt_takes_over_its_slot() {
    let (mut s, rx, _) = stage(1);
    let now = Instant::now();
    offered(&mut s, &["t1"], now);
    s.handle(LimiterInput::JobChanged(seen("t1", 1, false)), now);
    assert_eq!(launched_ids(&rx), ["t1"]);
    // The same attempt again is a duplicate; a higher one is a new launch in the same slot.
    assert_eq!(offered(&mut s, &["t1"], now), 0);
    assert!(launched_ids(&rx).is_empty());
    let mut again = offer("t1");
    again.identity.attempt = 2;
    s.handle(
        LimiterInput::Offered {
            offers: vec![again],
            reply: None,
        },
        now,
    );
    assert_eq!(launched_ids(&rx), ["t1"]);
    assert_eq!(s.limiter().in_flight(), 1);
    // The fenced Job's deletion does not end the new launch.
    s.handle(
        LimiterInput::JobGone {
            task_id: "t1".into(),
            attempt: 1,
        },
        now,
    );
    assert_eq!(s.limiter().slot("t1"), Some(SlotState::Launching));
}
