//! exec-loop's settings: command-line flags and environment, validated into [`ExecLoopConfig`].
//!
//! Pure: environment variables come in through a lookup closure, so tests pass a table. Runs once on
//! the main thread at start-up.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::RunnerError;

/// Where the chart mounts the data volume when `SCALR_AGENT_DATA_DIR` is unset.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/scalr-agent/data";
/// Socket file name inside the data directory.
pub const SOCKET_FILE: &str = "exec-loop.sock";
/// exec-loop's marker directory, relative to the data directory.
pub const MARKERS_SUBDIR: &str = "markers/runner";
/// Where cgroup v2 (or the v1 hierarchy) is mounted in the container.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub const ENV_DATA_DIR: &str = "SCALR_AGENT_DATA_DIR";
pub const ENV_CGROUP_ROOT: &str = "SCALR_AGENT_CGROUP_ROOT";

/// Run commands for the worker over a Unix socket (the runner container's entrypoint).
#[derive(FromArgs, Debug, Clone, PartialEq, Eq)]
#[argh(subcommand, name = "exec-loop")]
pub struct ExecLoopArgs {
    /// unix socket to listen on (default: $SCALR_AGENT_DATA_DIR/exec-loop.sock)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// directory for the `started` and `healthy` markers
    /// (default: $SCALR_AGENT_DATA_DIR/markers/runner)
    #[argh(option)]
    pub markers_dir: Option<PathBuf>,
    /// exit when no worker has been connected for this long; counted from start-up and from each
    /// disconnect (default: 300)
    #[argh(option, default = "300")]
    pub worker_gone_timeout_secs: u64,
    /// where the container's cgroup is mounted (default: $SCALR_AGENT_CGROUP_ROOT or /sys/fs/cgroup)
    #[argh(option)]
    pub cgroup_root: Option<PathBuf>,
    /// how often the memory monitor samples the cgroup while a command runs (default: 500)
    #[argh(option, default = "500")]
    pub memory_sample_interval_ms: u64,
    /// how often the `healthy` marker is touched (default: 10)
    #[argh(option, default = "10")]
    pub healthy_interval_secs: u64,
}

/// The memory monitor's settings (`SCALR_AGENT_MEMORY_MONITOR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMonitorSettings {
    /// Whether exec-loop samples the cgroup at all. Default true.
    pub enabled: bool,
    /// Usage, in percent of the container's memory limit, at which the command's process group
    /// gets SIGTERM (once per command). Default 80, 1..=100.
    pub soft_limit_percent: u8,
    /// Peak usage, in percent of the soft limit, above which the worker warns in the run log.
    /// Default 90, 1..=100.
    pub warn_percent: u8,
}

impl Default for MemoryMonitorSettings {
    fn default() -> Self {
        MemoryMonitorSettings {
            enabled: true,
            soft_limit_percent: 80,
            warn_percent: 90,
        }
    }
}

impl MemoryMonitorSettings {
    /// Usage in bytes at which the soft limit is reached, for a container limit of `limit_bytes`.
    pub fn soft_limit_bytes(&self, limit_bytes: u64) -> u64 {
        percent_of(limit_bytes, self.soft_limit_percent)
    }

    /// Peak usage in bytes from which the worker warns: `warn_percent` of the soft limit (as in
    /// Scalr's agent: 90 % of an 80 % soft limit is 72 % of the container's limit).
    pub fn warn_bytes(&self, limit_bytes: u64) -> u64 {
        percent_of(self.soft_limit_bytes(limit_bytes), self.warn_percent)
    }

    /// Whether an `Exited` report's peak deserves the warning in the run log. `false` without a
    /// peak or a limit.
    pub fn should_warn(&self, peak_bytes: Option<u64>, limit_bytes: Option<u64>) -> bool {
        match (peak_bytes, limit_bytes) {
            (Some(peak), Some(limit)) => self.enabled && peak >= self.warn_bytes(limit),
            _ => false,
        }
    }
}

/// `percent` % of `value`, rounded down, without overflow.
fn percent_of(value: u64, percent: u8) -> u64 {
    // value * 100 / 100 never exceeds value, so the result fits in u64.
    (u128::from(value) * u128::from(percent) / 100) as u64
}

impl From<&crate::config::MemoryMonitor> for MemoryMonitorSettings {
    /// The central configuration validates `SCALR_AGENT_MEMORY_MONITOR_*`; exec-loop uses its result.
    fn from(m: &crate::config::MemoryMonitor) -> Self {
        MemoryMonitorSettings {
            enabled: m.enabled,
            soft_limit_percent: m.soft_limit_percent,
            warn_percent: m.warn_percent,
        }
    }
}

/// Everything exec-loop needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecLoopConfig {
    pub socket: PathBuf,
    pub markers_dir: PathBuf,
    pub worker_gone_timeout: Duration,
    pub cgroup_root: PathBuf,
    pub memory: MemoryMonitorSettings,
    pub memory_sample_interval: Duration,
    pub healthy_interval: Duration,
}

impl ExecLoopConfig {
    /// Fills flag defaults from the environment (`lookup`) and validates. `memory` comes from the
    /// central configuration ([`crate::config::Settings::memory`]).
    pub fn from_args(
        args: &ExecLoopArgs,
        memory: MemoryMonitorSettings,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ExecLoopConfig, RunnerError> {
        let data_dir = lookup(ENV_DATA_DIR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let cgroup_root = args
            .cgroup_root
            .clone()
            .or_else(|| {
                lookup(ENV_CGROUP_ROOT)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CGROUP_ROOT));
        if args.worker_gone_timeout_secs == 0 {
            return Err(RunnerError::Flag {
                flag: "--worker-gone-timeout-secs",
                problem: "must be at least 1",
            });
        }
        if args.memory_sample_interval_ms == 0 {
            return Err(RunnerError::Flag {
                flag: "--memory-sample-interval-ms",
                problem: "must be at least 1",
            });
        }
        if args.healthy_interval_secs == 0 {
            return Err(RunnerError::Flag {
                flag: "--healthy-interval-secs",
                problem: "must be at least 1",
            });
        }
        Ok(ExecLoopConfig {
            socket: args
                .socket
                .clone()
                .unwrap_or_else(|| data_dir.join(SOCKET_FILE)),
            markers_dir: args
                .markers_dir
                .clone()
                .unwrap_or_else(|| data_dir.join(MARKERS_SUBDIR)),
            worker_gone_timeout: Duration::from_secs(args.worker_gone_timeout_secs),
            cgroup_root,
            memory,
            memory_sample_interval: Duration::from_millis(args.memory_sample_interval_ms),
            healthy_interval: Duration::from_secs(args.healthy_interval_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn args(list: &[&str]) -> ExecLoopArgs {
        ExecLoopArgs::from_args(&["exec-loop"], list).expect("valid flags")
    }

    #[test]
    fn percent_math() {
        let s = MemoryMonitorSettings::default();
        let cases = [
            // limit, soft (80 %), warn (90 % of soft)
            (1000, 800, 720),
            (1, 0, 0),
            (0, 0, 0),
            (
                u64::MAX,
                (u128::from(u64::MAX) * 80 / 100) as u64,
                (u128::from(u64::MAX) * 80 / 100 * 90 / 100) as u64,
            ),
            (2 * 1024 * 1024 * 1024, 1717986918, 1546188226),
        ];
        for (limit, soft, warn) in cases {
            assert_eq!(s.soft_limit_bytes(limit), soft, "soft of {limit}");
            assert_eq!(s.warn_bytes(limit), warn, "warn of {limit}");
        }
        let full = MemoryMonitorSettings {
            enabled: true,
            soft_limit_percent: 100,
            warn_percent: 100,
        };
        assert_eq!(full.soft_limit_bytes(12345), 12345);
        assert_eq!(full.warn_bytes(12345), 12345);
    }

    #[test]
    fn should_warn_needs_peak_limit_and_an_enabled_monitor() {
        let s = MemoryMonitorSettings::default();
        assert!(s.should_warn(Some(720), Some(1000)));
        assert!(!s.should_warn(Some(719), Some(1000)));
        assert!(!s.should_warn(None, Some(1000)));
        assert!(!s.should_warn(Some(999), None));
        let off = MemoryMonitorSettings {
            enabled: false,
            ..s
        };
        assert!(!off.should_warn(Some(999), Some(1000)));
    }

    #[test]
    fn defaults_derive_from_the_data_dir() {
        let config =
            ExecLoopConfig::from_args(&args(&[]), MemoryMonitorSettings::default(), env(&[]))
                .expect("valid");
        assert_eq!(
            config.socket,
            PathBuf::from("/var/lib/scalr-agent/data/exec-loop.sock")
        );
        assert_eq!(
            config.markers_dir,
            PathBuf::from("/var/lib/scalr-agent/data/markers/runner")
        );
        assert_eq!(config.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(config.worker_gone_timeout, Duration::from_secs(300));
        assert_eq!(config.healthy_interval, Duration::from_secs(10));
        assert_eq!(config.memory, MemoryMonitorSettings::default());

        let config = ExecLoopConfig::from_args(
            &args(&[]),
            MemoryMonitorSettings::default(),
            env(&[(ENV_DATA_DIR, "/data"), (ENV_CGROUP_ROOT, "/fake/cg")]),
        )
        .expect("valid");
        assert_eq!(config.socket, PathBuf::from("/data/exec-loop.sock"));
        assert_eq!(config.markers_dir, PathBuf::from("/data/markers/runner"));
        assert_eq!(config.cgroup_root, PathBuf::from("/fake/cg"));
    }

    #[test]
    fn flags_override_the_environment() {
        let config = ExecLoopConfig::from_args(
            &args(&[
                "--socket",
                "/s.sock",
                "--markers-dir",
                "/m",
                "--cgroup-root",
                "/cg",
                "--worker-gone-timeout-secs",
                "5",
            ]),
            MemoryMonitorSettings::default(),
            env(&[(ENV_DATA_DIR, "/data"), (ENV_CGROUP_ROOT, "/fake/cg")]),
        )
        .expect("valid");
        assert_eq!(config.socket, PathBuf::from("/s.sock"));
        assert_eq!(config.markers_dir, PathBuf::from("/m"));
        assert_eq!(config.cgroup_root, PathBuf::from("/cg"));
        assert_eq!(config.worker_gone_timeout, Duration::from_secs(5));
    }

    #[test]
    fn zero_durations_are_rejected() {
        for flag in [
            "--worker-gone-timeout-secs",
            "--memory-sample-interval-ms",
            "--healthy-interval-secs",
        ] {
            let err = ExecLoopConfig::from_args(
                &args(&[flag, "0"]),
                MemoryMonitorSettings::default(),
                env(&[]),
            )
            .expect_err(flag);
            assert!(
                matches!(err, RunnerError::Flag { flag: f, .. } if f == flag),
                "{err:?}"
            );
        }
    }
}
