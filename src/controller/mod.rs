//! The controller: acquires tasks from the platform and runs each in its own Kubernetes Job.
//!
//! ```text
//! platform ──long-poll──▶ poller ──TaskOffered──▶ limiter ──▶ launcher ──create Secret+Job──▶ Kubernetes
//!                                                    ▲              │ TaskLaunched
//!   Kubernetes ──watch Jobs/Pods──▶ supervisor ──────┴─ SlotFreed ──┘
//! ```
//!
//! This module holds the pure decision parts the I/O stages call: [`naming`] and [`labels`] (names,
//! keys), [`template`] (the `AgentTaskTemplate`), [`job_builder`] (Task→Job), [`limiter`] (slots),
//! [`supervision`] (what to do about a launched task) with [`facts`] (reading Jobs, pods, Events) and
//! [`render`] (the `render` subcommand).
//! The types that cross channels are in [`crate::model`].

pub mod facts;
pub mod job_builder;
pub mod labels;
pub mod limiter;
pub mod naming;
pub mod render;
pub mod supervision;
pub mod template;
