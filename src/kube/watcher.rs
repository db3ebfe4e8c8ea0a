//! The watch driver: runs a [`WatchMachine`] against the API server and sends its
//! [`WatchEvent`]s to the consumer over a crossbeam channel until shutdown.
//!
//! [`run`] blocks on the calling thread (the controller spawns it as `watch-jobs`, `watch-pods`
//! through `Threads`). It performs each [`Action`]: list pages, open watches, wait out backoffs
//! (waking on shutdown). A blocking read cannot be interrupted, so each open stream is read by a
//! short-lived helper thread `watch-<plural>-stream` that forwards events over a bounded channel;
//! the driver selects on that channel and on shutdown. When the driver leaves a stream early
//! (shutdown, relist) the helper ends at the stream's next event, its end, or its read timeout
//! (`timeout + read_margin`), whichever comes first; it holds nothing but the connection.
//! Returns `Ok` on shutdown or when the consumer hangs up, `Err` only for 401.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use super::api::{
    Api, DEFAULT_WATCH_READ_MARGIN, DEFAULT_WATCH_TIMEOUT, ListParams, WatchParams, WatchStream,
};
use super::error::KubeError;
use super::resource::KubeObject;
use super::watch::{Action, Input, WatchEvent, WatchMachine};
use crate::http::{Backoff, HttpError, RetryPolicy, TransportKind};
use crate::shutdown::Shutdown;

/// Default page size of (re)lists.
pub const DEFAULT_PAGE_SIZE: u32 = 500;

/// How to watch one collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// `labelSelector` of both list and watch.
    pub label_selector: Option<String>,
    /// `fieldSelector` of both list and watch.
    pub field_selector: Option<String>,
    /// Items per list page; 0 lists unpaged. Default 500.
    pub page_size: u32,
    /// `timeoutSeconds` of each watch request. Default 290 s.
    pub timeout: Duration,
    /// How much longer than `timeout` one read may block. Default 30 s.
    pub read_margin: Duration,
    /// First backoff window after an error. Default 0.5 s.
    pub backoff_initial: Duration,
    /// Largest backoff window. Default 30 s.
    pub backoff_max: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            label_selector: None,
            field_selector: None,
            page_size: DEFAULT_PAGE_SIZE,
            timeout: DEFAULT_WATCH_TIMEOUT,
            read_margin: DEFAULT_WATCH_READ_MARGIN,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl WatchConfig {
    /// Watches objects with these labels.
    pub fn labels(selector: &str) -> Self {
        WatchConfig {
            label_selector: Some(selector.to_string()),
            ..WatchConfig::default()
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(RetryPolicy {
            max_attempts: u32::MAX,
            initial: self.backoff_initial,
            max_delay: self.backoff_max,
            // A watch never gives up; only 401 or shutdown end it.
            max_elapsed: Duration::from_secs(100 * 365 * 86_400),
        })
    }
}

/// Lists and watches `api` until shutdown, sending every [`WatchEvent`] to `events`.
pub fn run<K: KubeObject>(
    api: &Api<K>,
    config: &WatchConfig,
    events: &Sender<WatchEvent<K>>,
    shutdown: &Shutdown,
) -> Result<(), KubeError> {
    let mut machine = WatchMachine::new(config.page_size, config.backoff());
    let stop = shutdown.channel();
    let what = format!(
        "{}/{}",
        api.namespace().unwrap_or("*"),
        api.resource().plural
    );
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        let out = match machine.action() {
            Action::List {
                continue_token,
                limit,
            } => {
                let params = ListParams {
                    label_selector: config.label_selector.clone(),
                    field_selector: config.field_selector.clone(),
                    limit,
                    continue_token,
                };
                machine.handle(Input::Listed(api.list(&params)))?
            }
            Action::Watch { resource_version } => {
                let params = WatchParams {
                    label_selector: config.label_selector.clone(),
                    field_selector: config.field_selector.clone(),
                    resource_version: resource_version.clone(),
                    timeout: config.timeout,
                    read_margin: config.read_margin,
                    bookmarks: true,
                };
                log::debug!("watch {what}: from resourceVersion {resource_version}");
                match api.watch(&params) {
                    Ok(stream) => {
                        machine.handle(Input::WatchOpened(Ok(())))?;
                        if !read_stream(
                            &mut machine,
                            stream,
                            &api.resource().plural,
                            events,
                            &stop,
                        )? {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(error) => machine.handle(Input::WatchOpened(Err(error)))?,
                }
            }
            Action::Read => {
                // Only reachable if a stream was left open by mistake: treat it as ended.
                machine.handle(Input::StreamEnded {
                    error: None,
                    lasted: Duration::ZERO,
                })?
            }
            Action::Wait(delay) => {
                if shutdown.wait_timeout(delay) {
                    return Ok(());
                }
                machine.handle(Input::Waited)?
            }
        };
        if !deliver(out, events, &stop) {
            return Ok(());
        }
    }
}

/// Reads one stream through a helper thread until it ends or the machine leaves it. `Ok(false)`:
/// stop (shutdown or the consumer hung up).
fn read_stream<K: KubeObject>(
    machine: &mut WatchMachine<K>,
    stream: WatchStream<K>,
    plural: &str,
    events: &Sender<WatchEvent<K>>,
    stop: &Receiver<()>,
) -> Result<bool, KubeError> {
    let started = Instant::now();
    let (tx, rx) = crossbeam_channel::bounded(16);
    let spawned = std::thread::Builder::new()
        .name(format!("watch-{plural}-stream"))
        .spawn(move || {
            for item in stream {
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        let error = KubeError::Transport(HttpError::Transport {
            method: "GET".into(),
            url: plural.to_string(),
            kind: TransportKind::Io,
            detail: format!("cannot start the stream reader thread: {e}"),
        });
        let out = machine.handle(Input::StreamEnded {
            error: Some(error),
            lasted: Duration::ZERO,
        })?;
        return Ok(deliver(out, events, stop));
    }
    loop {
        let item = select! {
            recv(rx) -> item => item,
            recv(stop) -> _ => return Ok(false),
        };
        let input = match item {
            Ok(Ok(event)) => Input::Event(event),
            Ok(Err(error)) => Input::StreamEnded {
                error: Some(error),
                lasted: started.elapsed(),
            },
            Err(_) => Input::StreamEnded {
                error: None,
                lasted: started.elapsed(),
            },
        };
        let out = machine.handle(input)?;
        if !deliver(out, events, stop) {
            return Ok(false);
        }
        if machine.action() != Action::Read {
            return Ok(true);
        }
    }
}

/// Sends `out` in order; `false` when shutdown came first or the consumer is gone.
fn deliver<K>(
    out: Vec<WatchEvent<K>>,
    events: &Sender<WatchEvent<K>>,
    stop: &Receiver<()>,
) -> bool {
    for event in out {
        select! {
            send(events, event) -> sent => if sent.is_err() { return false },
            recv(stop) -> _ => return false,
        }
    }
    true
}
