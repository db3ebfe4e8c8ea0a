//! `scalr-agent controller` on the simulators: the platform simulator and the Kubernetes API
//! simulator, with the real clients, an in-process controller (`controller::run`) or the real
//! binary, and a hand-driven kubelet (`world.rs`). Each test builds its own world on port 0.
//!
//! - `launch`: a task becomes a Job with the right spec; live template; missing/invalid template.
//! - `failures`: every failure path of issue 5 item 3, with the Events in the message.
//! - `cancel`: cancel before the start; force-cancel deadline after it.
//! - `limit`: the limit holds with 50 tasks offered at once; slots return.
//! - `restart`: the binary SIGKILLed between acquire and Secret, Secret and Job, after the Job;
//!   restarted: one Job per task, none stuck; a re-offered attempt replaces a fenced Job.
//! - `ha`: two controllers racing for the same tasks; adoption after a replica stops.
//! - `faults`: watches dropped and history compacted; Kubernetes 500/429 during launch; platform
//!   503s; a 401 mid-flight (platform and Kubernetes); SIGTERM.
//! - `secrets`: no token in any log line, Event or `render` output; `check` against both simulators.

mod cancel;
mod failures;
mod faults;
mod ha;
mod launch;
mod limit;
mod restart;
mod secrets;
pub mod world;
