//! The list-then-watch state machine, pure: inputs (list pages, watch events, stream ends, errors,
//! elapsed waits) in; the next [`Action`] and consumer events ([`WatchEvent`]) out. No I/O, no clock:
//! the driver in [`super::watcher`] performs each action and feeds back what happened.
//!
//! Semantics (those of client-go's reflector and kube-rs's watcher):
//! - List (paged, `limit`) until the last page, then emit [`WatchEvent::Restarted`] with every item:
//!   the consumer replaces its view. Then watch from the list's resourceVersion.
//! - `ADDED`/`MODIFIED` → [`WatchEvent::Applied`], `DELETED` → [`WatchEvent::Deleted`]; each
//!   advances the resourceVersion. A `BOOKMARK` only advances it.
//! - A stream that ends is re-watched from the last resourceVersion: at once if it lasted or
//!   delivered something, after a backoff if it ended at once with nothing (a server that keeps
//!   closing must not be hammered). A broken stream is re-watched after a backoff.
//! - 410 Gone (the watch request, or an `ERROR` event with code 410) → relist. A 410 on a continue
//!   token (compaction during a paged relist) → relist at once without paging, which cannot expire.
//! - Other errors → backoff with full jitter (floor: `Retry-After`), then retry what failed (a
//!   failed list restarts from its first page). 401 stops the machine: the error is returned.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent as RawEvent;

use super::error::KubeError;
use super::resource::{KubeObject, ObjectList};
use crate::http::{Backoff, Retryable, Verdict};

/// A stream that lasted at least this long ended normally even if it delivered nothing.
pub const MIN_HEALTHY_STREAM: Duration = Duration::from_secs(1);

/// What the consumer receives.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent<K> {
    /// A full snapshot after a (re)list: replace the whole view with these objects.
    Restarted(Vec<K>),
    /// An object was added or changed.
    Applied(K),
    /// An object was deleted (its last state).
    Deleted(K),
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// List one page: `limit` None means unpaged.
    List {
        continue_token: Option<String>,
        limit: Option<u32>,
    },
    /// Open a watch from this resourceVersion.
    Watch { resource_version: String },
    /// Read the next event of the open stream.
    Read,
    /// Wait this long (waking early on shutdown), then report [`Input::Waited`].
    Wait(Duration),
}

/// What happened.
#[derive(Debug)]
pub enum Input<K> {
    /// The list call for [`Action::List`] returned.
    Listed(Result<ObjectList<K>, KubeError>),
    /// The watch request for [`Action::Watch`] was answered (200) or failed.
    WatchOpened(Result<(), KubeError>),
    /// The open stream delivered an event.
    Event(RawEvent<K>),
    /// The open stream ended: cleanly (`error` None) or broken, after `lasted`.
    StreamEnded {
        error: Option<KubeError>,
        lasted: Duration,
    },
    /// The [`Action::Wait`] elapsed.
    Waited,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    Relist,
    Rewatch,
}

#[derive(Debug)]
enum State<K> {
    Listing {
        continue_token: Option<String>,
        paged: bool,
        items: Vec<K>,
        resource_version: String,
    },
    Watching {
        resource_version: String,
        open: bool,
        delivered: u64,
    },
    Waiting {
        delay: Duration,
        then: Resume,
        resource_version: String,
    },
}

/// The machine for one watched collection.
#[derive(Debug)]
pub struct WatchMachine<K> {
    state: State<K>,
    page_size: u32,
    backoff: Backoff,
}

impl<K: KubeObject> WatchMachine<K> {
    /// Starts in the initial list. `page_size` 0 lists unpaged; `backoff` paces retries.
    pub fn new(page_size: u32, backoff: Backoff) -> Self {
        WatchMachine {
            state: State::Listing {
                continue_token: None,
                paged: page_size > 0,
                items: Vec::new(),
                resource_version: String::new(),
            },
            page_size,
            backoff,
        }
    }

    /// What the driver must do now.
    pub fn action(&self) -> Action {
        match &self.state {
            State::Listing {
                continue_token,
                paged,
                ..
            } => Action::List {
                continue_token: continue_token.clone(),
                limit: paged.then_some(self.page_size),
            },
            State::Watching {
                resource_version,
                open: false,
                ..
            } => Action::Watch {
                resource_version: resource_version.clone(),
            },
            State::Watching { open: true, .. } => Action::Read,
            State::Waiting { delay, .. } => Action::Wait(*delay),
        }
    }

    /// The resourceVersion the machine would watch from (empty before the first list completes).
    pub fn resource_version(&self) -> &str {
        match &self.state {
            State::Listing { .. } => "",
            State::Watching {
                resource_version, ..
            }
            | State::Waiting {
                resource_version, ..
            } => resource_version,
        }
    }

    /// Feeds what happened; returns the events for the consumer, or the fatal error (401), after
    /// which the machine is spent.
    pub fn handle(&mut self, input: Input<K>) -> Result<Vec<WatchEvent<K>>, KubeError> {
        let state = std::mem::replace(
            &mut self.state,
            State::Watching {
                resource_version: String::new(),
                open: false,
                delivered: 0,
            },
        );
        let (next, out) = self.step(state, input)?;
        self.state = next;
        Ok(out)
    }

    fn relist(&self, paged: bool) -> State<K> {
        State::Listing {
            continue_token: None,
            paged: paged && self.page_size > 0,
            items: Vec::new(),
            resource_version: String::new(),
        }
    }

    fn wait(
        &mut self,
        error: KubeError,
        then: Resume,
        resource_version: String,
    ) -> Result<State<K>, KubeError> {
        let after = match error.verdict() {
            Verdict::Fatal => return Err(error),
            Verdict::Retry { after } => after,
            Verdict::Permanent => None,
        };
        // Never exhausted: the policy the driver builds has no attempt or time bound.
        let delay = self
            .backoff
            .next_delay(Duration::ZERO, after)
            .unwrap_or(Duration::from_secs(30));
        log::warn!("watch: {error}; retrying in {delay:?}");
        Ok(State::Waiting {
            delay,
            then,
            resource_version,
        })
    }

    fn step(
        &mut self,
        state: State<K>,
        input: Input<K>,
    ) -> Result<(State<K>, Vec<WatchEvent<K>>), KubeError> {
        let none = Vec::new();
        Ok(match (state, input) {
            (
                State::Listing {
                    paged,
                    mut items,
                    resource_version,
                    ..
                },
                Input::Listed(Ok(page)),
            ) => {
                items.extend(page.items);
                let resource_version = if page.resource_version.is_empty() {
                    resource_version
                } else {
                    page.resource_version
                };
                match page.continue_token {
                    Some(token) if paged => (
                        State::Listing {
                            continue_token: Some(token),
                            paged,
                            items,
                            resource_version,
                        },
                        none,
                    ),
                    _ => {
                        self.backoff.reset();
                        (
                            State::Watching {
                                resource_version,
                                open: false,
                                delivered: 0,
                            },
                            vec![WatchEvent::Restarted(items)],
                        )
                    }
                }
            }
            (State::Listing { continue_token, .. }, Input::Listed(Err(error))) => {
                if error.is_gone() && continue_token.is_some() {
                    log::info!("watch: the paged list expired (compacted); listing again unpaged");
                    (self.relist(false), none)
                } else {
                    (self.wait(error, Resume::Relist, String::new())?, none)
                }
            }
            (
                State::Watching {
                    resource_version, ..
                },
                Input::WatchOpened(Ok(())),
            ) => (
                State::Watching {
                    resource_version,
                    open: true,
                    delivered: 0,
                },
                none,
            ),
            (
                State::Watching {
                    resource_version, ..
                },
                Input::WatchOpened(Err(error)),
            ) => {
                if error.is_gone() {
                    (self.relist(true), none)
                } else {
                    (self.wait(error, Resume::Rewatch, resource_version)?, none)
                }
            }
            (
                State::Watching {
                    resource_version,
                    open: true,
                    delivered,
                },
                Input::Event(event),
            ) => self.event(resource_version, delivered, event)?,
            (
                State::Watching {
                    resource_version,
                    open: true,
                    delivered,
                },
                Input::StreamEnded { error, lasted },
            ) => {
                let healthy = delivered > 0 || lasted >= MIN_HEALTHY_STREAM;
                if healthy {
                    self.backoff.reset();
                }
                match error {
                    None if healthy => (
                        State::Watching {
                            resource_version,
                            open: false,
                            delivered: 0,
                        },
                        none,
                    ),
                    None => {
                        let error = KubeError::Decode {
                            method: "GET".into(),
                            path: "watch".into(),
                            detail: "the watch stream closed at once without events".into(),
                        };
                        (self.wait(error, Resume::Rewatch, resource_version)?, none)
                    }
                    Some(error) => (self.wait(error, Resume::Rewatch, resource_version)?, none),
                }
            }
            (
                State::Waiting {
                    then,
                    resource_version,
                    ..
                },
                Input::Waited,
            ) => match then {
                Resume::Relist => (self.relist(true), none),
                Resume::Rewatch => (
                    State::Watching {
                        resource_version,
                        open: false,
                        delivered: 0,
                    },
                    none,
                ),
            },
            // An input that does not fit the state is a driver bug; keep the state.
            (state, input) => {
                log::debug!(
                    "watch: ignoring {} in {:?}",
                    input_name(&input),
                    self.action_of(&state)
                );
                (state, none)
            }
        })
    }

    fn event(
        &mut self,
        resource_version: String,
        delivered: u64,
        event: RawEvent<K>,
    ) -> Result<(State<K>, Vec<WatchEvent<K>>), KubeError> {
        let watching = |resource_version| State::Watching {
            resource_version,
            open: true,
            delivered: delivered + 1,
        };
        let version_of = |object: &K, fallback: String| {
            object
                .meta()
                .resource_version
                .clone()
                .filter(|v| !v.is_empty())
                .unwrap_or(fallback)
        };
        Ok(match event {
            RawEvent::Added(object) | RawEvent::Modified(object) => {
                let rv = version_of(&object, resource_version);
                (watching(rv), vec![WatchEvent::Applied(object)])
            }
            RawEvent::Deleted(object) => {
                let rv = version_of(&object, resource_version);
                (watching(rv), vec![WatchEvent::Deleted(object)])
            }
            RawEvent::Bookmark {
                resource_version: rv,
                ..
            } => {
                let rv = if rv.is_empty() { resource_version } else { rv };
                (watching(rv), Vec::new())
            }
            RawEvent::ErrorStatus(status) => {
                let error = KubeError::from_status("GET", "watch", &status);
                if error.is_gone() {
                    log::info!("watch: resourceVersion {resource_version} expired; listing again");
                    (self.relist(true), Vec::new())
                } else {
                    (
                        self.wait(error, Resume::Rewatch, resource_version)?,
                        Vec::new(),
                    )
                }
            }
            RawEvent::ErrorOther(raw) => {
                let error = KubeError::Decode {
                    method: "GET".into(),
                    path: "watch".into(),
                    detail: format!("ERROR event without a Status: {}", raw.0),
                };
                (
                    self.wait(error, Resume::Rewatch, resource_version)?,
                    Vec::new(),
                )
            }
        })
    }

    fn action_of(&self, state: &State<K>) -> &'static str {
        match state {
            State::Listing { .. } => "listing",
            State::Watching { open: false, .. } => "watch-opening",
            State::Watching { open: true, .. } => "watching",
            State::Waiting { .. } => "waiting",
        }
    }
}

fn input_name<K>(input: &Input<K>) -> &'static str {
    match input {
        Input::Listed(_) => "list result",
        Input::WatchOpened(_) => "watch opened",
        Input::Event(_) => "event",
        Input::StreamEnded { .. } => "stream end",
        Input::Waited => "wait end",
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
