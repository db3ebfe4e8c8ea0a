//! Scripted faults: "the next N calls of METHOD on PATH fail with 500/429/409, are delayed, or lose
//! their connection". Rules are consumed in the order they were added; pure bookkeeping, the
//! dispatcher (`server.rs`) acts on what [`Faults::take`] returns.

use std::time::Duration;

/// What happens to a matched call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this status and a `Status` body of the matching reason (500 InternalError,
    /// 429 TooManyRequests with `Retry-After: 1`, 409 Conflict, 503 ServiceUnavailable, ...).
    Status(u16),
    /// Wait this long, then serve the call normally.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
}

/// One rule.
#[derive(Clone, Debug)]
pub struct Fault {
    /// `GET`, `POST`, ...; `None` matches every method.
    pub method: Option<String>,
    /// The path to match; a trailing `*` matches any path with that prefix.
    pub path: String,
    /// Only calls whose query string contains this (e.g. `watch=true`), when set.
    pub query_contains: Option<String>,
    /// How many calls it still applies to.
    pub times: usize,
    pub action: FaultAction,
}

impl Fault {
    /// The next `times` calls of `method` (or any, with `"*"`) on `path` get `action`.
    pub fn new(method: &str, path: &str, times: usize, action: FaultAction) -> Fault {
        Fault {
            method: (method != "*").then(|| method.to_ascii_uppercase()),
            path: path.to_string(),
            query_contains: None,
            times,
            action,
        }
    }

    /// Restricts the rule to calls whose query contains `needle`.
    pub fn with_query(mut self, needle: &str) -> Fault {
        self.query_contains = Some(needle.to_string());
        self
    }

    fn matches(&self, method: &str, path: &str, query: &str) -> bool {
        let method_ok = self.method.as_deref().is_none_or(|m| m == method);
        let path_ok = match self.path.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.path,
        };
        let query_ok = self
            .query_contains
            .as_deref()
            .is_none_or(|q| query.contains(q));
        method_ok && path_ok && query_ok
    }
}

/// The pending rules.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Vec<Fault>,
}

impl Faults {
    /// Adds a rule.
    pub fn add(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.rules.push(fault);
        }
    }

    /// Consumes what applies to this call: every matching delay, then at most one terminal action
    /// (status or drop) from the first matching rule that has one.
    pub fn take(&mut self, method: &str, path: &str, query: &str) -> Vec<FaultAction> {
        let mut out = Vec::new();
        let mut terminal = false;
        for rule in &mut self.rules {
            if !rule.matches(method, path, query) {
                continue;
            }
            let is_delay = matches!(rule.action, FaultAction::Delay(_));
            if !is_delay && terminal {
                continue;
            }
            terminal |= !is_delay;
            rule.times -= 1;
            out.push(rule.action.clone());
        }
        self.rules.retain(|r| r.times > 0);
        out.sort_by_key(|a| !matches!(a, FaultAction::Delay(_)));
        out
    }

    /// Rules not yet used up.
    pub fn pending(&self) -> usize {
        self.rules.len()
    }

    /// Forgets every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_consumed_in_order_and_by_count() {
        let mut f = Faults::default();
        f.add(Fault::new(
            "POST",
            "/apis/batch/v1/namespaces/ns/jobs",
            2,
            FaultAction::Status(500),
        ));
        f.add(Fault::new(
            "*",
            "/api/v1/*",
            1,
            FaultAction::Delay(Duration::from_millis(5)),
        ));
        f.add(Fault::new("*", "/api/v1/*", 1, FaultAction::Drop));
        f.add(
            Fault::new("GET", "/api/v1/pods", 1, FaultAction::Status(410)).with_query("watch=true"),
        );

        let jobs = "/apis/batch/v1/namespaces/ns/jobs";
        assert_eq!(f.take("GET", jobs, ""), vec![]);
        assert_eq!(f.take("POST", jobs, ""), vec![FaultAction::Status(500)]);
        assert_eq!(f.take("POST", jobs, ""), vec![FaultAction::Status(500)]);
        assert_eq!(f.take("POST", jobs, ""), vec![]);
        assert_eq!(
            f.take("GET", "/api/v1/pods", ""),
            vec![
                FaultAction::Delay(Duration::from_millis(5)),
                FaultAction::Drop
            ]
        );
        assert_eq!(f.take("GET", "/api/v1/pods", "limit=1"), vec![]);
        assert_eq!(
            f.take("GET", "/api/v1/pods", "watch=true"),
            vec![FaultAction::Status(410)]
        );
        assert_eq!(f.pending(), 0);
    }
}
