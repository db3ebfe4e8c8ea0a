//! Every transition of the list-then-watch machinery, driven by `kube::watcher::run` on its own
//! thread against the simulator: initial (paged) snapshot, changes, bookmarks, stream end, 410
//! relist, compaction during a relist, dropped watches under load, errors with backoff, 401, and
//! shutdown. Assertions wait on events or the simulator's request log, with deadlines.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use k8s_openapi::api::batch::v1::Job;
use scalr_agent::kube::watcher::{self, WatchConfig};
use scalr_agent::kube::{AgentTaskTemplate, Api, DeleteParams, KubeError, KubeObject, WatchEvent};
use scalr_agent::shutdown::{Reason, Shutdown};
use serde_json::json;

use super::{NS, admin, client_with, dump, eventually, job, sim, template_crd};
use crate::support::kube_sim::{Fault, FaultAction, KubeSim, RequestRecord};

const JOBS: &str = "/apis/batch/v1/namespaces/ci/jobs";
const DEADLINE: Duration = Duration::from_secs(20);

fn fast(selector: &str, page_size: u32, timeout: Duration) -> WatchConfig {
    WatchConfig {
        label_selector: Some(selector.to_string()),
        page_size,
        timeout,
        read_margin: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..WatchConfig::default()
    }
}

/// A watcher running on its own thread, stopped on drop.
struct Running<K: KubeObject> {
    events: Receiver<WatchEvent<K>>,
    shutdown: Shutdown,
    handle: Option<JoinHandle<Result<(), KubeError>>>,
}

impl<K: KubeObject> Running<K> {
    fn start(api: Api<K>, config: WatchConfig) -> Self {
        Self::with_capacity(api, config, 64)
    }

    fn with_capacity(api: Api<K>, config: WatchConfig, capacity: usize) -> Self {
        let (tx, events) = crossbeam_channel::bounded(capacity);
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name("test-watch".into())
            .spawn(move || watcher::run(&api, &config, &tx, &stop))
            .expect("spawn watcher");
        Running {
            events,
            shutdown,
            handle: Some(handle),
        }
    }

    fn next(&self, sim: &KubeSim) -> WatchEvent<K> {
        self.events
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no watch event: {e}\n{}", dump(sim)))
    }

    fn stop(mut self) -> Result<(), KubeError> {
        self.shutdown.trigger(Reason::Requested);
        self.join()
    }

    fn join(&mut self) -> Result<(), KubeError> {
        self.handle
            .take()
            .map(|h| h.join().expect("watcher thread panicked"))
            .unwrap_or(Ok(()))
    }
}

impl<K: KubeObject> Drop for Running<K> {
    fn drop(&mut self) {
        self.shutdown.trigger(Reason::Requested);
    }
}

fn name<K: KubeObject>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

/// A short form of an event for assertions: `restarted:a,b`, `applied:c`, `deleted:d`.
fn show<K: KubeObject>(event: &WatchEvent<K>) -> String {
    match event {
        WatchEvent::Restarted(items) => {
            format!(
                "restarted:{}",
                items.iter().map(name).collect::<Vec<_>>().join(",")
            )
        }
        WatchEvent::Applied(o) => format!("applied:{}", name(o)),
        WatchEvent::Deleted(o) => format!("deleted:{}", name(o)),
    }
}

/// The consumer's view: name → resourceVersion, rebuilt on every `Restarted`.
#[derive(Default)]
struct View {
    objects: BTreeMap<String, String>,
    restarts: usize,
}

impl View {
    fn apply<K: KubeObject>(&mut self, event: WatchEvent<K>) {
        let rv = |o: &K| o.meta().resource_version.clone().unwrap_or_default();
        match event {
            WatchEvent::Restarted(items) => {
                self.restarts += 1;
                self.objects = items.iter().map(|o| (name(o), rv(o))).collect();
            }
            WatchEvent::Applied(o) => {
                self.objects.insert(name(&o), rv(&o));
            }
            WatchEvent::Deleted(o) => {
                self.objects.remove(&name(&o));
            }
        }
    }
}

/// The simulator's labelled jobs as name → resourceVersion.
fn truth(sim: &KubeSim, label: &str) -> BTreeMap<String, String> {
    sim.list("jobs", NS)
        .into_iter()
        .filter(|j| j["metadata"]["labels"][label].is_string())
        .map(|j| {
            (
                j["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                j["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn watches(sim: &KubeSim) -> Vec<RequestRecord> {
    sim.requests()
        .into_iter()
        .filter(|r| r.path == JOBS && r.query_param("watch").as_deref() == Some("true"))
        .collect()
}

fn lists(sim: &KubeSim) -> Vec<RequestRecord> {
    sim.requests()
        .into_iter()
        .filter(|r| r.path == JOBS && r.method == "GET" && r.query_param("watch").is_none())
        .collect()
}

fn rv_of(record: &RequestRecord) -> u64 {
    record
        .query_param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn paged_snapshot_then_changes_in_order() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    for (n, labels) in [
        ("j1", json!({"app": "agent"})),
        ("j2", json!({"app": "other"})),
        ("j3", json!({"app": "agent"})),
    ] {
        jobs.create(&job(n, labels)).expect("create");
    }
    let listed_at = sim.resource_version();
    let watch = Running::start(jobs.clone(), fast("app=agent", 1, Duration::from_secs(30)));
    assert_eq!(show(&watch.next(&sim)), "restarted:j1,j3");
    eventually(&sim, "two list pages", |s| lists(s).len() == 2);
    let pages = lists(&sim);
    assert_eq!(pages[0].query_param("limit").as_deref(), Some("1"));
    assert!(pages[1].query_param("continue").is_some());

    jobs.create(&job("j4", json!({"app": "agent"})))
        .expect("create j4");
    assert_eq!(show(&watch.next(&sim)), "applied:j4");
    jobs.patch_merge("j1", &json!({"metadata": {"annotations": {"seen": "yes"}}}))
        .expect("patch");
    assert_eq!(show(&watch.next(&sim)), "applied:j1");
    jobs.delete("j3", &DeleteParams::background())
        .expect("delete");
    assert_eq!(show(&watch.next(&sim)), "deleted:j3");

    let opened = watches(&sim);
    let first = opened.first().expect("a watch request");
    assert_eq!(
        first.query_param("allowWatchBookmarks").as_deref(),
        Some("true")
    );
    assert_eq!(first.query_param("timeoutSeconds").as_deref(), Some("30"));
    assert_eq!(
        first.query_param("labelSelector").as_deref(),
        Some("app=agent")
    );
    assert_eq!(
        rv_of(first),
        listed_at,
        "the first watch starts where the list ended"
    );
    watch.stop().expect("clean stop");
}

#[test]
fn the_custom_resource_is_watched_too() {
    let sim = sim();
    sim.put(template_crd());
    let templates: Api<AgentTaskTemplate> = Api::namespaced(&admin(&sim), NS);
    let watch = Running::start(
        templates.clone(),
        WatchConfig {
            label_selector: None,
            ..fast("", 10, Duration::from_secs(30))
        },
    );
    assert_eq!(show(&watch.next(&sim)), "restarted:");
    let mut template = AgentTaskTemplate::default();
    template.metadata.name = Some("default".into());
    template.spec.basename = "scalr".into();
    templates.create(&template).expect("create");
    let WatchEvent::Applied(seen) = watch.next(&sim) else {
        panic!("not applied")
    };
    assert_eq!(seen.spec.basename, "scalr");
    watch.stop().expect("clean stop");
}

#[test]
fn bookmarks_advance_the_resource_version_without_events() {
    let sim = sim();
    let client = admin(&sim);
    let jobs: Api<Job> = Api::namespaced(&client, NS);
    let listed_at = sim.resource_version();
    let watch = Running::start(jobs.clone(), fast("app=agent", 10, Duration::from_secs(1)));
    assert_eq!(show(&watch.next(&sim)), "restarted:");
    // Writes the watch does not select move the cluster's resourceVersion on.
    jobs.create(&job("unrelated", json!({"app": "other"})))
        .expect("create");
    let moved_to = sim.resource_version();
    // The stream ends after timeoutSeconds; the next watch starts from the last bookmark.
    assert!(
        sim.wait_until(DEADLINE, |s| watches(s)
            .iter()
            .any(|w| rv_of(w) >= moved_to)),
        "{}",
        dump(&sim)
    );
    assert!(moved_to > listed_at);
    assert!(
        watches(&sim).iter().any(|w| rv_of(w) == listed_at),
        "first watch from the list"
    );
    assert_eq!(lists(&sim).len(), 1, "no relist: {}", dump(&sim));
    assert!(watch.events.try_recv().is_err(), "bookmarks are not events");
    watch.stop().expect("clean stop");
}

#[test]
fn a_stream_that_ends_resumes_from_the_last_version_without_missing_changes() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    let watch = Running::start(jobs.clone(), fast("app=agent", 10, Duration::from_secs(1)));
    assert_eq!(show(&watch.next(&sim)), "restarted:");
    eventually(&sim, "the first stream is open", |s| {
        s.active_watches() == 1
    });
    for i in 0..3 {
        // Each stream ends after one second; the re-watch is held a moment by the server, and a
        // change made in that gap must arrive through the resumed stream.
        sim.fault(
            Fault::new("GET", JOBS, 1, FaultAction::Delay(Duration::from_secs(1)))
                .with_query("watch=true"),
        );
        assert!(
            sim.wait_until(DEADLINE, |s| s.active_watches() == 0),
            "{}",
            dump(&sim)
        );
        let name = format!("gap-{i}");
        jobs.create(&job(&name, json!({"app": "agent"})))
            .expect("create in the gap");
        assert_eq!(
            show(&watch.next(&sim)),
            format!("applied:{name}"),
            "{}",
            dump(&sim)
        );
    }
    assert_eq!(lists(&sim).len(), 1, "no relist: {}", dump(&sim));
    eventually(&sim, "four streams", |s| watches(s).len() >= 4);
    let opened = watches(&sim);
    assert!(
        opened.windows(2).all(|w| rv_of(&w[1]) >= rv_of(&w[0])),
        "{}",
        dump(&sim)
    );
    watch.stop().expect("clean stop");
}

#[test]
fn gone_relists_and_the_snapshot_replaces_the_view() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    jobs.create(&job("j1", json!({"app": "agent"})))
        .expect("create");
    let watch = Running::start(jobs.clone(), fast("app=agent", 10, Duration::from_secs(30)));
    assert_eq!(show(&watch.next(&sim)), "restarted:j1");

    // A lagging watcher gets an ERROR event with 410: relist.
    assert!(sim.wait_until(DEADLINE, |s| s.active_watches() == 1));
    sim.expire_watches();
    assert_eq!(show(&watch.next(&sim)), "restarted:j1");
    eventually(&sim, "a second list", |s| lists(s).len() == 2);

    // Disconnected while the history is compacted: the re-watch from the old version gets 410.
    assert!(sim.wait_until(DEADLINE, |s| s.active_watches() == 1));
    sim.fault(
        Fault::new("GET", JOBS, 1, FaultAction::Delay(Duration::from_secs(2)))
            .with_query("watch=true"),
    );
    sim.drop_watches();
    jobs.create(&job("j2", json!({"app": "agent"})))
        .expect("create while away");
    jobs.delete("j1", &DeleteParams::background())
        .expect("delete while away");
    sim.compact();
    assert_eq!(show(&watch.next(&sim)), "restarted:j2", "{}", dump(&sim));
    eventually(&sim, "a third list", |s| lists(s).len() == 3);
    watch.stop().expect("clean stop");
}

#[test]
fn compaction_during_a_paged_relist_lists_again_unpaged() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    for n in ["a", "b", "c"] {
        jobs.create(&job(n, json!({"app": "agent"})))
            .expect("create");
    }
    let watch = Running::start(jobs.clone(), fast("app=agent", 1, Duration::from_secs(30)));
    assert_eq!(show(&watch.next(&sim)), "restarted:a,b,c");
    eventually(&sim, "three pages", |s| lists(s).len() == 3);

    // The relist's second page is held while the first is answered and the history compacted.
    sim.fault(
        Fault::new("GET", JOBS, 1, FaultAction::Delay(Duration::from_secs(2)))
            .with_query("continue="),
    );
    assert!(sim.wait_until(DEADLINE, |s| s.active_watches() == 1));
    sim.expire_watches();
    let first_pages = |s: &KubeSim| {
        lists(s)
            .iter()
            .filter(|r| r.query_param("continue").is_none())
            .count()
    };
    assert!(
        sim.wait_until(DEADLINE, |s| first_pages(s) == 2),
        "{}",
        dump(&sim)
    );
    jobs.create(&job("d", json!({"app": "agent"})))
        .expect("create during relist");
    sim.compact();
    assert_eq!(
        show(&watch.next(&sim)),
        "restarted:a,b,c,d",
        "{}",
        dump(&sim)
    );
    eventually(&sim, "an unpaged list", |s| {
        lists(s).iter().any(|r| r.query_param("limit").is_none())
    });
    let all = lists(&sim);
    let expired = all.iter().filter(|r| r.status == 410).count();
    let unpaged = all
        .iter()
        .filter(|r| r.query_param("limit").is_none())
        .count();
    assert_eq!((expired, unpaged), (1, 1), "{}", dump(&sim));
    watch.stop().expect("clean stop");
}

#[test]
fn dropped_watches_under_load_keep_the_view_consistent() {
    let sim = sim();
    let client = admin(&sim);
    let jobs: Api<Job> = Api::namespaced(&client, NS);
    // A channel large enough that the driver never waits for this test to read.
    let watch = Running::with_capacity(
        jobs.clone(),
        fast("app=agent", 5, Duration::from_secs(30)),
        100_000,
    );
    let mut view = View::default();
    view.apply(watch.next(&sim));
    let writer = {
        let jobs = jobs.clone();
        std::thread::spawn(move || {
            for i in 0..150 {
                let name = format!("load-{i}");
                jobs.create(&job(&name, json!({"app": "agent"})))
                    .expect("create");
                if i % 3 == 0 {
                    jobs.patch_merge(
                        &name,
                        &json!({"metadata": {"annotations": {"n": i.to_string()}}}),
                    )
                    .expect("patch");
                }
                if i % 4 == 0 {
                    jobs.delete(&name, &DeleteParams::background())
                        .expect("delete");
                }
            }
        })
    };
    // Cut the stream again and again while the writer runs; some re-watches are dropped too.
    let served = |s: &KubeSim| watches(s).iter().filter(|w| w.status == 200).count();
    for round in 0..6 {
        let before = served(&sim);
        if round % 2 == 1 {
            sim.fault(Fault::new("GET", JOBS, 1, FaultAction::Drop).with_query("watch=true"));
        }
        sim.drop_watches();
        assert!(
            sim.wait_until(DEADLINE, |s| served(s) > before && s.active_watches() >= 1),
            "round {round}: {}",
            dump(&sim)
        );
    }
    writer.join().expect("writer");
    let want = truth(&sim, "app");
    let started = Instant::now();
    while view.objects != want && started.elapsed() < DEADLINE {
        view.apply(watch.next(&sim));
    }
    assert_eq!(view.objects, want, "{}", dump(&sim));
    assert_eq!(
        view.restarts,
        1,
        "resumed without relisting: {}",
        dump(&sim)
    );
    let dropped = watches(&sim).iter().filter(|w| w.status == 0).count();
    assert!(dropped >= 3, "{}", dump(&sim));
    watch.stop().expect("clean stop");
}

#[test]
fn errors_back_off_and_recover() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    sim.fail_next("GET", JOBS, 3, 500);
    let watch = Running::start(jobs.clone(), fast("app=agent", 10, Duration::from_secs(30)));
    assert_eq!(show(&watch.next(&sim)), "restarted:");
    eventually(&sim, "four lists", |s| lists(s).len() == 4);
    let statuses: Vec<u16> = lists(&sim).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 500, 200]);

    // A watch request that fails is retried from the same version, without a relist.
    sim.fault(Fault::new("GET", JOBS, 2, FaultAction::Status(503)).with_query("watch=true"));
    assert!(sim.wait_until(DEADLINE, |s| s.active_watches() == 1));
    sim.drop_watches();
    jobs.create(&job("after", json!({"app": "agent"})))
        .expect("create");
    assert_eq!(show(&watch.next(&sim)), "applied:after", "{}", dump(&sim));
    let failed = watches(&sim).iter().filter(|r| r.status == 503).count();
    assert_eq!((failed, lists(&sim).len()), (2, 4), "{}", dump(&sim));
    watch.stop().expect("clean stop");
}

#[test]
fn unauthorized_ends_the_watch_with_an_error() {
    let sim = sim();
    let token = sim.add_service_account_token(NS, "agent");
    let jobs: Api<Job> = Api::namespaced(&client_with(&sim, &token), NS);
    let mut watch = Running::start(jobs, fast("app=agent", 10, Duration::from_secs(30)));
    assert_eq!(show(&watch.next(&sim)), "restarted:");
    assert!(sim.wait_until(DEADLINE, |s| s.active_watches() == 1));
    sim.revoke_token(&token);
    sim.drop_watches();
    let err = watch.join().expect_err("401 is fatal");
    assert!(matches!(err, KubeError::Unauthorized(_)), "{err:?}");
}

#[test]
fn shutdown_stops_a_watch_that_is_streaming_or_backing_off() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    let watch = Running::start(
        jobs.clone(),
        fast("app=agent", 10, Duration::from_secs(300)),
    );
    assert_eq!(show(&watch.next(&sim)), "restarted:");
    assert!(sim.wait_until(DEADLINE, |s| s.active_watches() == 1));
    watch.stop().expect("stopped while streaming");

    sim.fail_next("GET", JOBS, 1_000, 500);
    let mut backing_off = Running::start(
        jobs,
        WatchConfig {
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
            ..fast("app=agent", 10, Duration::from_secs(30))
        },
    );
    assert!(sim.wait_until(DEADLINE, |s| !lists(s).is_empty()));
    backing_off.shutdown.trigger(Reason::Requested);
    backing_off.join().expect("stopped while backing off");
}
