//! Which cache entries to remove: a pure planner shared by the binary and provider caches.
//!
//! Entries idle longer than `max_idle` go first; then, while the cache is over its size limit, the
//! least recently used of the rest. Pinned entries (in use) and entries idle for less than
//! `min_idle` are never chosen, so the limit is soft: a cache full of entries in use stays over it.

use std::time::{Duration, SystemTime};

/// One cache entry as the planner sees it.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub size: u64,
    pub last_used: SystemTime,
    /// In use: never removed.
    pub pinned: bool,
}

/// The rules.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub size_limit: u64,
    /// Remove entries unused for longer than this, whatever the size.
    pub max_idle: Option<Duration>,
    /// Never remove entries used more recently than this.
    pub min_idle: Duration,
}

/// Indices of the entries to remove, ascending.
pub(crate) fn plan(items: &[Candidate], policy: &Policy, now: SystemTime) -> Vec<usize> {
    let idle = |c: &Candidate| now.duration_since(c.last_used).unwrap_or(Duration::ZERO);
    let removable = |c: &Candidate| !c.pinned && idle(c) >= policy.min_idle;
    let mut chosen: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, c)| removable(c) && policy.max_idle.is_some_and(|max| idle(c) > max))
        .map(|(i, _)| i)
        .collect();
    let mut total: u64 = items
        .iter()
        .enumerate()
        .filter(|(i, _)| !chosen.contains(i))
        .map(|(_, c)| c.size)
        .sum();
    let mut lru: Vec<usize> = (0..items.len())
        .filter(|i| !chosen.contains(i) && removable(&items[*i]))
        .collect();
    lru.sort_by_key(|&i| (items[i].last_used, i));
    for i in lru {
        if total <= policy.size_limit {
            break;
        }
        total -= items[i].size;
        chosen.push(i);
    }
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(now: SystemTime, days_ago: u64, size: u64, pinned: bool) -> Candidate {
        Candidate {
            size,
            last_used: now - DAY * days_ago as u32,
            pinned,
        }
    }

    #[test]
    fn plans() {
        let now = SystemTime::UNIX_EPOCH + DAY * 1000;
        let policy = |limit, max_idle_days: Option<u32>, min_idle| Policy {
            size_limit: limit,
            max_idle: max_idle_days.map(|d| DAY * d),
            min_idle,
        };
        let items = vec![
            at(now, 40, 10, false), // 0: stale
            at(now, 40, 10, true),  // 1: stale but in use
            at(now, 5, 10, false),  // 2
            at(now, 1, 10, false),  // 3
            at(now, 0, 10, false),  // 4: just used
        ];
        let cases: &[(Policy, &[usize])] = &[
            (policy(100, Some(30), Duration::ZERO), &[0]),
            (policy(100, None, Duration::ZERO), &[]),
            (policy(30, Some(30), Duration::ZERO), &[0, 2]),
            (policy(0, Some(30), Duration::ZERO), &[0, 2, 3, 4]),
            (policy(0, None, DAY * 2), &[0, 2]),
        ];
        for (p, want) in cases {
            assert_eq!(plan(&items, p, now), *want, "{p:?}");
        }
    }
}
