//! Watch streams: chunked JSON events, one per line, from a resourceVersion (or the current state as
//! synthetic ADDED events), filtered by namespace and selectors with the ADDED/DELETED transitions a
//! selector change causes, BOOKMARKs when asked, `sendInitialEvents`, a clean end at
//! `timeoutSeconds`, a 410 ERROR event once the history the client needs is compacted, and faults
//! (cut connections, forced expiry). Runs on the connection's thread; waits on the state's condvar.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::http_server::Responder;
use super::objects;
use super::resources::ResourceType;
use super::routes::ListParams;
use super::state::{Shared, State};
use super::status::{self, ApiError};
use super::store::{Event, EventType};

/// A watch to serve.
pub struct WatchRequest {
    pub rt: ResourceType,
    pub version: String,
    pub namespace: Option<String>,
    pub params: ListParams,
}

impl WatchRequest {
    fn in_scope(&self, ns: &str) -> bool {
        !self.rt.namespaced || self.namespace.as_deref().is_none_or(|want| want == ns)
    }

    fn selects(&self, obj: &Value) -> bool {
        self.params.labels.matches(obj) && self.params.fields.matches(obj)
    }

    fn line(&self, kind: &str, obj: &Value) -> String {
        let obj = objects::served(&self.rt, &self.version, obj.clone());
        let mut s = json!({"type": kind, "object": obj}).to_string();
        s.push('\n');
        s
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> String {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(&self.version),
            "metadata": meta});
        let mut s = json!({"type": "BOOKMARK", "object": obj}).to_string();
        s.push('\n');
        s
    }

    /// The event this watcher sees for a store event, if any.
    fn translate(&self, e: &Event) -> Option<String> {
        if e.key.0 != self.rt.gr() || !self.in_scope(&e.key.1) {
            return None;
        }
        let now = self.selects(&e.object);
        let was = e.prev.as_ref().is_some_and(|p| self.selects(p));
        match (e.kind, was, now) {
            (EventType::Added, _, true) => Some(self.line("ADDED", &e.object)),
            (EventType::Modified, true, true) => Some(self.line("MODIFIED", &e.object)),
            (EventType::Modified, false, true) => Some(self.line("ADDED", &e.object)),
            (EventType::Modified, true, false) => Some(self.line("DELETED", &e.object)),
            (EventType::Deleted, true, _) => Some(self.line("DELETED", &e.object)),
            _ => None,
        }
    }
}

fn error_line(e: &ApiError) -> String {
    let mut s = json!({"type": "ERROR", "object": e.body}).to_string();
    s.push('\n');
    s
}

enum End {
    Drop,
    Expired(ApiError),
    Timeout,
}

/// Decrements the active-watch count when the stream ends, however it ends.
struct Active<'a>(&'a Shared);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.active_watches -= 1;
        st.ticks += 1;
        drop(st);
        self.0.notify();
    }
}

/// Where the stream starts: the initial lines and the version after them, or a start error.
fn start(st: &State, w: &WatchRequest) -> Result<(Vec<String>, u64, Option<ApiError>), ApiError> {
    let current = st.store.rv();
    let rv = w.params.resource_version.as_deref();
    if w.params.send_initial_events || rv.is_none() || rv == Some("0") {
        let ns = if w.rt.namespaced {
            w.namespace.as_deref()
        } else {
            None
        };
        let lines = st
            .store
            .list(&w.rt.gr(), ns)
            .filter(|(_, o)| w.selects(o))
            .map(|(_, o)| w.line("ADDED", o))
            .collect();
        return Ok((lines, current, None));
    }
    let rv: u64 = rv
        .unwrap_or("")
        .parse()
        .map_err(|_| status::bad_request(format!("invalid resource version: {rv:?}")))?;
    if rv < st.store.compacted() {
        return Ok((
            Vec::new(),
            rv,
            Some(status::expired(rv, st.store.compacted())),
        ));
    }
    Ok((Vec::new(), rv, None))
}

/// Serves a watch until it times out, the client leaves, or a fault ends it. `Err` only before the
/// stream starts (a bad resourceVersion); the caller answers it as a normal error.
pub fn serve(
    shared: &Arc<Shared>,
    w: WatchRequest,
    out: &mut Responder<'_>,
) -> Result<(), ApiError> {
    let options = &shared.options;
    let (initial, mut last, expired_at_start, drop0, expire0) = {
        let mut st = shared.lock();
        let (initial, last, expired) = start(&st, &w)?;
        st.active_watches += 1;
        st.ticks += 1;
        (initial, last, expired, st.drop_epoch, st.expire_epoch)
    };
    shared.notify();
    let _active = Active(shared);
    let timeout = w
        .params
        .timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(options.default_watch_timeout);
    let deadline = Instant::now() + timeout;
    let bookmarks = w.params.allow_bookmarks;
    let interval = options.bookmark_interval;
    let mut next_bookmark = Instant::now() + interval;

    let Ok(mut stream) = out.stream(
        200,
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-cache, private"),
        ],
    ) else {
        return Ok(());
    };
    if let Some(e) = expired_at_start {
        let _ = stream.write_chunk(error_line(&e).as_bytes());
        let _ = stream.finish();
        return Ok(());
    }
    for line in &initial {
        if stream.write_chunk(line.as_bytes()).is_err() {
            return Ok(());
        }
    }
    if w.params.send_initial_events
        && bookmarks
        && stream
            .write_chunk(w.bookmark(last, true).as_bytes())
            .is_err()
    {
        return Ok(());
    }

    loop {
        let mut batch = Vec::new();
        let mut end = None;
        {
            let mut st = shared.lock();
            loop {
                if st.stopped || st.drop_epoch != drop0 {
                    end = Some(End::Drop);
                    break;
                }
                if st.expire_epoch != expire0 {
                    end = Some(End::Expired(status::expired(last, st.store.rv())));
                    break;
                }
                match st.store.events_after(last) {
                    Err(oldest) => {
                        end = Some(End::Expired(status::expired(last, oldest)));
                        break;
                    }
                    Ok(events) => batch.extend(events.filter_map(|e| w.translate(e))),
                }
                last = last.max(st.store.rv());
                if !batch.is_empty() {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    end = Some(End::Timeout);
                    break;
                }
                if bookmarks && now >= next_bookmark {
                    break;
                }
                let wake = if bookmarks {
                    next_bookmark.min(deadline)
                } else {
                    deadline
                };
                st = shared.wait(st, wake - now);
            }
        }
        for line in &batch {
            if stream.write_chunk(line.as_bytes()).is_err() {
                return Ok(());
            }
        }
        match end {
            Some(End::Drop) => {
                stream.abort();
                return Ok(());
            }
            Some(End::Expired(e)) => {
                let _ = stream.write_chunk(error_line(&e).as_bytes());
                let _ = stream.finish();
                return Ok(());
            }
            Some(End::Timeout) => {
                if bookmarks {
                    let _ = stream.write_chunk(w.bookmark(last, false).as_bytes());
                }
                let _ = stream.finish();
                return Ok(());
            }
            None => {}
        }
        if bookmarks && Instant::now() >= next_bookmark {
            if stream
                .write_chunk(w.bookmark(last, false).as_bytes())
                .is_err()
            {
                return Ok(());
            }
            next_bookmark = Instant::now() + interval;
        }
    }
}
