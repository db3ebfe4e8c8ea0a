//! The Kubernetes client: configuration, typed REST calls with k8s-openapi types over the shared
//! HTTP layer, classified errors, and the list-then-watch machinery.
//!
//! - [`config`] / [`kubeconfig`]: where the API is and how to authenticate (in-cluster with a
//!   rotating token, kubeconfig, explicit flags), resolved once at start-up.
//! - [`Client`]: one API server; attaches the token, classifies every failure into [`KubeError`].
//! - [`Api<K>`]: get, list, create, replace, merge patch, delete, status, watch for one resource
//!   type (Jobs, Pods, Secrets, Events, Leases, SelfSubjectAccessReviews, [`AgentTaskTemplate`]).
//! - [`watch`]: the pure list-then-watch state machine; [`watcher::run`] drives it on a thread and
//!   sends [`WatchEvent`]s (`Restarted` snapshot after every (re)list, then `Applied`/`Deleted`).
//!
//! Blocking, no async runtime; every type here is `Send + Sync` and cheap to clone. Supported
//! Kubernetes versions and behaviour: `docs/kubernetes.md`.

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod kubeconfig;
pub mod resource;
pub mod token;
pub mod watch;
pub mod watcher;

pub use api::{Api, DeleteParams, ListParams, Propagation, WatchParams, WatchStream};
pub use client::Client;
pub use config::{
    Auth, ClientCert, ConfigError, Explicit, KubeConfig, KubeEnv, Origin, PemSource, TokenFile,
};
pub use error::{ApiFailure, FieldCause, KubeError};
pub use resource::{AgentTaskTemplate, AgentTaskTemplateSpec, ApiResource, KubeObject, ObjectList};
pub use watch::{WatchEvent, WatchMachine};
pub use watcher::WatchConfig;
