//! The controller's two stop signals and its probe markers.
//!
//! - `intake`: stop taking offers. SIGTERM triggers it (drain, deregister, exit), and so does a 401
//!   from either API ([`Lifecycle::unauthorized`]): the credential is gone, stop in order.
//! - `stop`: every thread ends. The main thread triggers it after draining; a failed thread
//!   triggers it too (through `Threads`).
//!
//! Markers for the Deployment's exec probes live under `$SCALR_AGENT_DATA_DIR/markers/controller/`:
//! `healthy` is touched by the heartbeat loop on every beat (its age is the liveness probe) and
//! `ready` exists once the controller is registered and its watches have listed.

use std::path::{Path, PathBuf};

use crate::probe::touch_marker;
use crate::shutdown::{Reason, Shutdown};

/// Both stop signals, cheap to clone.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Stop taking offers (SIGTERM, 401).
    pub intake: Shutdown,
    /// End every thread.
    pub stop: Shutdown,
}

impl Lifecycle {
    /// Fresh signals.
    pub fn new() -> Self {
        Lifecycle::default()
    }

    /// A credential was refused (401): log once what to do and stop in order.
    pub fn unauthorized(&self, what: &str) {
        if !self.intake.is_triggered() {
            log::error!("{what}; stopping the controller");
        }
        self.intake.trigger(Reason::Unauthorized(what.to_string()));
    }

    /// Whether new tasks may still be taken.
    pub fn accepting(&self) -> bool {
        !self.intake.is_triggered() && !self.stop.is_triggered()
    }
}

/// The controller's marker files.
#[derive(Clone, Debug)]
pub struct Markers {
    dir: PathBuf,
}

impl Markers {
    /// Markers under `<data_dir>/markers/controller`.
    pub fn new(data_dir: &Path) -> Self {
        Markers {
            dir: data_dir.join("markers").join("controller"),
        }
    }

    /// The liveness marker's path.
    pub fn healthy(&self) -> PathBuf {
        self.dir.join("healthy")
    }

    /// The readiness marker's path.
    pub fn ready(&self) -> PathBuf {
        self.dir.join("ready")
    }

    /// Touches `healthy`; a failure is logged (the probe will then restart the pod).
    pub fn touch_healthy(&self) {
        let touched =
            std::fs::create_dir_all(&self.dir).and_then(|()| touch_marker(&self.healthy()));
        if let Err(e) = touched {
            log::warn!("cannot touch {}: {e}", self.healthy().display());
        }
    }

    /// Creates `ready`.
    pub fn set_ready(&self) {
        match std::fs::create_dir_all(&self.dir).and_then(|()| touch_marker(&self.ready())) {
            Ok(()) => log::info!("ready: registered, watching Jobs and Pods"),
            Err(e) => log::warn!("cannot create {}: {e}", self.ready().display()),
        }
    }

    /// Removes `ready` (draining or stopping).
    pub fn clear_ready(&self) {
        let _ = std::fs::remove_file(self.ready());
    }
}
