//! Controller Leases and adoption: how replicas of one release know which of them are alive, and
//! take over the Jobs of one that is not.
//!
//! Each controller holds a `coordination.k8s.io/v1` Lease named after the release and itself
//! ([`lease_name`]), renewed by the housekeeper every few seconds ([`LeaseKeeper::renew`]) and
//! deleted when it stops in order. A Job names its controller (`scalr.io/controller`). A Job whose
//! controller holds no live Lease (expired, or deleted at shutdown) is adopted by a live replica:
//! [`to_adopt`] picks them, and the housekeeper re-labels each with a merge patch that carries the
//! Job's `resourceVersion`, so of two replicas adopting at once exactly one wins each Job. The
//! supervisor of the loser (and of a controller that was merely slow) sees the Job re-labelled and
//! forgets it, so at most one controller acts on a Job. A replica adopts only while its own Lease is
//! healthy, so replicas that cannot write Leases never trade Jobs back and forth.
//!
//! The pure parts ([`lease_name`], [`expired`], [`desired`], [`to_adopt`]) are tested as tables; the
//! housekeeper thread runs [`LeaseKeeper`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use super::cluster::Cluster;
use super::facts::job_is_terminal;
use super::labels::{
    APP_COMPONENT, APP_INSTANCE, APP_MANAGED_BY, CONTROLLER, MANAGED_BY_VALUE, controller_of,
};
use super::naming::{job_name, label_value};
use crate::kube::KubeError;

/// `app.kubernetes.io/component` of controller Leases.
pub const COMPONENT_CONTROLLER: &str = "controller";
/// How long a Lease lives without renewal (six renewals at the housekeeper's 10 s tick).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(60);
/// Clock skew tolerated between replicas when judging another's Lease.
pub const SKEW: Duration = Duration::from_secs(5);

/// The Lease name of `controller` in release `instance`: a DNS label, hashed when long.
pub fn lease_name(instance: &str, controller: &str) -> String {
    job_name("scalr-agent", instance, controller)
}

/// The label selector of a release's controller Leases.
pub fn lease_selector(instance: &str) -> String {
    format!(
        "{APP_MANAGED_BY}={MANAGED_BY_VALUE},{APP_COMPONENT}={COMPONENT_CONTROLLER},{APP_INSTANCE}={}",
        label_value(instance)
    )
}

/// The Lease's holder.
pub fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// Whether the Lease ran out at `now` (allowing [`SKEW`]); a Lease never renewed counts as expired.
pub fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    let (Some(renewed), Some(secs)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return true;
    };
    let until = Duration::from_secs(secs.max(0) as u64) + SKEW;
    renewed.0.checked_add(until).is_ok_and(|end| end < now)
}

/// The Lease `controller` should hold now: `existing` (keeping its resourceVersion, so the write is
/// a compare-and-swap) renewed, or a new one.
pub fn desired(
    existing: Option<Lease>,
    name: &str,
    instance: &str,
    controller: &str,
    duration: Duration,
    now: Timestamp,
) -> Lease {
    let mut lease = existing.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (APP_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
                (APP_COMPONENT.to_string(), COMPONENT_CONTROLLER.to_string()),
                (APP_INSTANCE.to_string(), label_value(instance)),
            ])),
            annotations: Some(BTreeMap::from([(
                CONTROLLER.to_string(),
                controller.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(controller) {
        spec.holder_identity = Some(controller.to_string());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(duration.as_secs().min(i32::MAX as u64) as i32);
    spec.renew_time = Some(MicroTime(now));
    lease
}

/// A Job to take over: its name, the resourceVersion the patch must match, its old controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adoption {
    /// The Job.
    pub job: String,
    /// Its resourceVersion when listed.
    pub resource_version: String,
    /// The controller that launched it.
    pub from: String,
}

/// The live Lease holders among `leases` at `now`.
pub fn live_holders(leases: &[Lease], now: Timestamp) -> BTreeSet<String> {
    leases
        .iter()
        .filter(|l| l.metadata.deletion_timestamp.is_none() && !expired(l, now))
        .filter_map(|l| holder(l).map(str::to_string))
        .collect()
}

/// The unfinished Jobs of controllers without a live Lease, for `me` to adopt.
pub fn to_adopt(jobs: &[Job], leases: &[Lease], me: &str, now: Timestamp) -> Vec<Adoption> {
    let live = live_holders(leases, now);
    let my_label = label_value(me);
    jobs.iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none() && !job_is_terminal(j))
        .filter_map(|j| {
            let from = controller_of(&j.metadata)?;
            let gone = from != me && from != my_label && !live.contains(from);
            gone.then(|| Adoption {
                job: j.metadata.name.clone().unwrap_or_default(),
                resource_version: j.metadata.resource_version.clone().unwrap_or_default(),
                from: from.to_string(),
            })
        })
        .collect()
}

/// Expired Leases of other controllers that no Job names any more: safe to delete (name, uid).
pub fn stale_leases(
    jobs: &[Job],
    leases: &[Lease],
    me: &str,
    now: Timestamp,
) -> Vec<(String, String)> {
    let named: BTreeSet<&str> = jobs
        .iter()
        .filter_map(|j| controller_of(&j.metadata))
        .collect();
    leases
        .iter()
        .filter(|l| expired(l, now))
        .filter(|l| holder(l).is_some_and(|h| h != me && !named.contains(h)))
        .filter_map(|l| Some((l.metadata.name.clone()?, l.metadata.uid.clone()?)))
        .collect()
}

/// Keeps this controller's Lease.
pub struct LeaseKeeper {
    cluster: Arc<dyn Cluster>,
    name: String,
    instance: String,
    controller: String,
    duration: Duration,
    renewed: Option<Instant>,
}

impl LeaseKeeper {
    /// The keeper of `controller`'s Lease in release `instance`.
    pub fn new(
        cluster: Arc<dyn Cluster>,
        instance: &str,
        controller: &str,
        duration: Duration,
    ) -> Self {
        LeaseKeeper {
            cluster,
            name: lease_name(instance, controller),
            instance: instance.to_string(),
            controller: controller.to_string(),
            duration,
            renewed: None,
        }
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates or renews the Lease.
    pub fn renew(&mut self) -> Result<(), KubeError> {
        let existing = self.cluster.get_lease(&self.name)?;
        let create = existing.is_none();
        let lease = desired(
            existing,
            &self.name,
            &self.instance,
            &self.controller,
            self.duration,
            Timestamp::now(),
        );
        if create {
            self.cluster.create_lease(&lease)?;
        } else {
            self.cluster.replace_lease(&lease)?;
        }
        self.renewed = Some(Instant::now());
        Ok(())
    }

    /// Whether the Lease was renewed within half its duration: only then does this replica adopt.
    pub fn healthy(&self) -> bool {
        self.renewed
            .is_some_and(|at| at.elapsed() < self.duration / 2)
    }

    /// Deletes the Lease (orderly stop): other replicas adopt this controller's Jobs at once.
    pub fn release(&self) {
        match self.cluster.get_lease(&self.name) {
            Ok(Some(lease)) => {
                let uid = lease.metadata.uid.unwrap_or_default();
                if let Err(e) = self.cluster.delete_lease(&self.name, &uid) {
                    log::warn!("could not delete Lease {}: {e}", self.name);
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!("could not read Lease {}: {e}", self.name),
        }
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
