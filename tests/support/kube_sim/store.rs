//! The object store: schemaless JSON objects keyed like etcd (resource, namespace, name), one global
//! resourceVersion, and the event history that watches and consistent lists read from.
//!
//! Every write takes the next resourceVersion, stamps it into the object and appends an event that
//! also keeps the previous version, so the state at any retained resourceVersion can be rebuilt
//! (paging snapshots, `resourceVersionMatch=Exact`). `compact` drops history like etcd compaction:
//! older versions then answer 410. Callers hold the simulator's lock; nothing here blocks.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

/// `(resource key "jobs.batch", namespace or "", name)`.
pub type ObjKey = (String, String, String);

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: ObjKey,
    /// The object after the change; for a delete, the last state stamped with the delete's version.
    pub object: Value,
    /// The object before the change (absent for a create).
    pub prev: Option<Value>,
}

/// The objects, the clock and the history.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<ObjKey, Value>,
    rv: u64,
    history: VecDeque<Event>,
    /// Events with a version above this are retained; watching from it or later works.
    compacted: u64,
    /// Keep at most this many events (oldest dropped, like periodic compaction).
    pub history_limit: Option<usize>,
}

/// The object's `metadata.resourceVersion` as a number.
pub fn object_rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn stamp(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

impl Store {
    /// The current resourceVersion (of the last write).
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest version still readable.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// One object.
    pub fn get(&self, key: &ObjKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Every object, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&ObjKey, &Value)> {
        self.objects.iter()
    }

    /// The objects of resource `gr`, in one namespace or all (`None`), in key order.
    pub fn list<'a>(
        &'a self,
        gr: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
        let start = (
            gr.to_string(),
            namespace.unwrap_or("").to_string(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.0 == gr && namespace.is_none_or(|ns| k.1 == ns))
    }

    fn record(&mut self, kind: EventType, key: ObjKey, object: Value, prev: Option<Value>) {
        self.history.push_back(Event {
            rv: self.rv,
            kind,
            key,
            object,
            prev,
        });
        if let Some(limit) = self.history_limit {
            while self.history.len() > limit {
                if let Some(e) = self.history.pop_front() {
                    self.compacted = e.rv;
                }
            }
        }
    }

    /// Stores a new object; returns it with its resourceVersion.
    pub fn create(&mut self, key: ObjKey, mut obj: Value) -> Value {
        self.rv += 1;
        stamp(&mut obj, self.rv);
        self.objects.insert(key.clone(), obj.clone());
        self.record(EventType::Added, key, obj.clone(), None);
        obj
    }

    /// Replaces an existing object; returns it with its new resourceVersion.
    pub fn update(&mut self, key: ObjKey, mut obj: Value) -> Value {
        self.rv += 1;
        stamp(&mut obj, self.rv);
        let prev = self.objects.insert(key.clone(), obj.clone());
        self.record(EventType::Modified, key, obj.clone(), prev);
        obj
    }

    /// Removes an object; returns its last state stamped with the delete's resourceVersion.
    pub fn remove(&mut self, key: &ObjKey) -> Option<Value> {
        let prev = self.objects.remove(key)?;
        self.rv += 1;
        let mut last = prev.clone();
        stamp(&mut last, self.rv);
        self.record(EventType::Deleted, key.clone(), last.clone(), Some(prev));
        Some(last)
    }

    /// Events with a version above `rv`, or `Err(oldest)` when some of them were compacted away.
    pub fn events_after(&self, rv: u64) -> Result<impl Iterator<Item = &Event>, u64> {
        if rv < self.compacted {
            return Err(self.compacted);
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..))
    }

    /// The objects of `gr` (one namespace or all) as they were at version `at`, in key order.
    pub fn snapshot(
        &self,
        gr: &str,
        namespace: Option<&str>,
        at: u64,
    ) -> Result<Vec<(ObjKey, Value)>, u64> {
        if at < self.compacted {
            return Err(self.compacted);
        }
        let mut view: BTreeMap<ObjKey, Value> = self
            .list(gr, namespace)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let start = self.history.partition_point(|e| e.rv <= at);
        for e in self.history.range(start..).rev() {
            if e.key.0 != gr || namespace.is_some_and(|ns| e.key.1 != ns) {
                continue;
            }
            match &e.prev {
                Some(prev) => {
                    view.insert(e.key.clone(), prev.clone());
                }
                None => {
                    view.remove(&e.key);
                }
            }
        }
        Ok(view.into_iter().collect())
    }

    /// Forgets all history up to now: older resourceVersions answer 410 from here on.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Number of retained events.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> ObjKey {
        ("configmaps".into(), "ns".into(), name.into())
    }

    fn cm(name: &str, v: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "data": {"v": v}})
    }

    #[test]
    fn versions_rise_and_snapshots_rebuild_the_past() {
        let mut s = Store::default();
        let a = s.create(key("a"), cm("a", "1"));
        assert_eq!(object_rv(&a), 1);
        s.create(key("b"), cm("b", "1"));
        s.update(key("a"), cm("a", "2"));
        let gone = s.remove(&key("b")).expect("b existed");
        assert_eq!(object_rv(&gone), 4);
        assert_eq!(s.rv(), 4);

        let at2 = s.snapshot("configmaps", Some("ns"), 2).expect("retained");
        let names: Vec<_> = at2
            .iter()
            .map(|(k, v)| (k.2.clone(), v["data"]["v"].clone()))
            .collect();
        assert_eq!(
            names,
            vec![("a".into(), json!("1")), ("b".into(), json!("1"))]
        );
        let now = s.snapshot("configmaps", None, 4).expect("retained");
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].1["data"]["v"], "2");

        let after: Vec<u64> = s.events_after(2).expect("retained").map(|e| e.rv).collect();
        assert_eq!(after, vec![3, 4]);
        s.compact();
        assert_eq!(s.events_after(2).err(), Some(4));
        assert!(s.snapshot("configmaps", None, 3).is_err());
        assert_eq!(s.events_after(4).expect("current is fine").count(), 0);
    }

    #[test]
    fn history_limit_compacts_the_oldest() {
        let mut s = Store {
            history_limit: Some(2),
            ..Store::default()
        };
        for i in 0..5 {
            s.create(key(&format!("c{i}")), cm("c", "1"));
        }
        assert_eq!(s.history_len(), 2);
        assert_eq!(s.compacted(), 3);
        assert!(s.events_after(2).is_err());
        assert_eq!(s.events_after(3).expect("kept").count(), 2);
    }
}
