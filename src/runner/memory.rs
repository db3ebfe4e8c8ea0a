//! The memory monitor: reads the runner container's cgroup and decides when to send SIGTERM.
//!
//! [`CgroupMemory`] reads usage and limit (cgroup v2 `memory.current`/`memory.max`, or v1
//! `memory/memory.usage_in_bytes`/`memory.limit_in_bytes`) under a configurable root. [`MemoryWatch`]
//! is the pure decision: fed one reading per sample, it tracks the peak and says once per command
//! when the soft limit is crossed. Both run on the command thread (`runner::command`), which samples
//! while a command runs.
//!
//! Usage is the working set as the kubelet counts it for OOM decisions: usage minus inactive file
//! pages (`inactive_file` / `total_inactive_file` in `memory.stat`), so page cache the kernel would
//! drop does not trigger the monitor.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::settings::MemoryMonitorSettings;
use crate::ipc::MemorySoftLimit;

/// Limits at or above this (4 EiB) mean "no limit": cgroup v1 reports an unlimited group as a
/// page-rounded `i64::MAX` (9223372036854771712).
pub const UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Which cgroup hierarchy the container sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V2,
    V1,
}

/// Why a sample could not be taken.
#[derive(Debug)]
pub enum CgroupError {
    /// A cgroup file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// A cgroup file held something other than a number (or `max`).
    Parse { path: PathBuf, content: String },
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupError::Read { path, source } => {
                write!(f, "could not read {}: {source}", path.display())
            }
            CgroupError::Parse { path, content } => {
                write!(f, "unexpected content in {}: {content:?}", path.display())
            }
        }
    }
}

impl std::error::Error for CgroupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CgroupError::Read { source, .. } => Some(source),
            CgroupError::Parse { .. } => None,
        }
    }
}

/// One sample of the container's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReading {
    /// Working set in bytes (usage minus inactive file cache).
    pub usage_bytes: u64,
    /// The container's limit; `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

/// The memory files of the container's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMemory {
    pub version: CgroupVersion,
    usage: PathBuf,
    limit: PathBuf,
    stat: PathBuf,
}

impl CgroupMemory {
    /// Finds the memory controller under `root` (normally `/sys/fs/cgroup`): v2 when
    /// `root/memory.current` exists, else v1 when `root/memory/memory.usage_in_bytes` exists.
    /// `None` when neither does (no cgroup namespace, or no memory controller).
    pub fn detect(root: &Path) -> Option<CgroupMemory> {
        if root.join("memory.current").exists() {
            return Some(CgroupMemory {
                version: CgroupVersion::V2,
                usage: root.join("memory.current"),
                limit: root.join("memory.max"),
                stat: root.join("memory.stat"),
            });
        }
        let v1 = root.join("memory");
        if v1.join("memory.usage_in_bytes").exists() {
            return Some(CgroupMemory {
                version: CgroupVersion::V1,
                usage: v1.join("memory.usage_in_bytes"),
                limit: v1.join("memory.limit_in_bytes"),
                stat: v1.join("memory.stat"),
            });
        }
        None
    }

    /// Takes one sample. A missing `memory.stat` counts as no inactive cache.
    pub fn read(&self) -> Result<MemoryReading, CgroupError> {
        let usage_text = read(&self.usage)?;
        let usage = parse_bytes(&usage_text).ok_or_else(|| CgroupError::Parse {
            path: self.usage.clone(),
            content: usage_text.clone(),
        })?;
        let limit_text = read(&self.limit)?;
        let limit = parse_limit(&limit_text).ok_or_else(|| CgroupError::Parse {
            path: self.limit.clone(),
            content: limit_text.clone(),
        })?;
        let inactive = match fs::read_to_string(&self.stat) {
            Ok(stat) => inactive_file_bytes(&stat, self.version).unwrap_or(0),
            Err(_) => 0,
        };
        Ok(MemoryReading {
            usage_bytes: usage.saturating_sub(inactive),
            limit_bytes: limit,
        })
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A byte count as the kernel prints it (`"123\n"`).
pub fn parse_bytes(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit file: `max` (v2) or a value of [`UNLIMITED_THRESHOLD`] or more (v1) mean no limit.
pub fn parse_limit(text: &str) -> Option<Option<u64>> {
    let text = text.trim();
    if text == "max" {
        return Some(None);
    }
    let value = parse_bytes(text)?;
    Some((value < UNLIMITED_THRESHOLD).then_some(value))
}

/// The inactive file cache from `memory.stat` (`inactive_file` in v2, `total_inactive_file` in
/// v1, which includes child groups like v2's does).
pub fn inactive_file_bytes(stat: &str, version: CgroupVersion) -> Option<u64> {
    let key = match version {
        CgroupVersion::V2 => "inactive_file",
        CgroupVersion::V1 => "total_inactive_file",
    };
    stat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| parse_bytes(value)).flatten()
    })
}

/// Per-command monitor state: peak, last limit, and whether SIGTERM was already sent.
#[derive(Clone, Debug)]
pub struct MemoryWatch {
    settings: MemoryMonitorSettings,
    peak_bytes: Option<u64>,
    limit_bytes: Option<u64>,
    soft_limit_reached: bool,
}

impl MemoryWatch {
    pub fn new(settings: MemoryMonitorSettings) -> Self {
        MemoryWatch {
            settings,
            peak_bytes: None,
            limit_bytes: None,
            soft_limit_reached: false,
        }
    }

    /// Records a sample. Returns `Some` the first time usage reaches the soft limit: the caller then
    /// sends SIGTERM to the command's process group and tells the worker. Never again for this
    /// command, and never without a limit (the limit may appear or change between samples: in-place
    /// pod resize).
    pub fn observe(&mut self, reading: MemoryReading) -> Option<MemorySoftLimit> {
        self.peak_bytes = Some(self.peak_bytes.unwrap_or(0).max(reading.usage_bytes));
        self.limit_bytes = reading.limit_bytes;
        let limit = reading.limit_bytes?;
        if self.soft_limit_reached || reading.usage_bytes < self.settings.soft_limit_bytes(limit) {
            return None;
        }
        self.soft_limit_reached = true;
        Some(MemorySoftLimit {
            usage_bytes: reading.usage_bytes,
            limit_bytes: limit,
        })
    }

    /// Highest usage seen; `None` before the first sample.
    pub fn peak_bytes(&self) -> Option<u64> {
        self.peak_bytes
    }

    /// Limit at the last sample.
    pub fn limit_bytes(&self) -> Option<u64> {
        self.limit_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_parsing_table() {
        let cases = [
            ("max\n", Some(None)),
            ("1073741824\n", Some(Some(1 << 30))),
            ("9223372036854771712\n", Some(None)), // v1 unlimited
            ("9223372036854775807", Some(None)),
            ("4611686018427387903", Some(Some((1 << 62) - 1))),
            ("", None),
            ("-1", None),
            ("12k", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_limit(text), expected, "{text:?}");
        }
    }

    #[test]
    fn inactive_file_by_version() {
        let v2 = "anon 100\nfile 500\ninactive_file 300\nactive_file 200\n";
        let v1 = "cache 10\ninactive_file 7\ntotal_inactive_file 40\n";
        assert_eq!(inactive_file_bytes(v2, CgroupVersion::V2), Some(300));
        assert_eq!(inactive_file_bytes(v1, CgroupVersion::V1), Some(40));
        assert_eq!(inactive_file_bytes("anon 1\n", CgroupVersion::V2), None);
        assert_eq!(
            inactive_file_bytes("inactive_file x\n", CgroupVersion::V2),
            None
        );
    }

    fn write(root: &Path, files: &[(&str, &str)]) {
        for (name, content) in files {
            let path = root.join(name);
            fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            fs::write(path, content).expect("write");
        }
    }

    #[test]
    fn detects_and_reads_v2() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            &[
                ("memory.current", "1000\n"),
                ("memory.max", "4000\n"),
                ("memory.stat", "anon 600\ninactive_file 250\n"),
            ],
        );
        let cgroup = CgroupMemory::detect(dir.path()).expect("v2");
        assert_eq!(cgroup.version, CgroupVersion::V2);
        assert_eq!(
            cgroup.read().expect("read"),
            MemoryReading {
                usage_bytes: 750,
                limit_bytes: Some(4000)
            }
        );
        write(dir.path(), &[("memory.max", "max\n")]);
        assert_eq!(cgroup.read().expect("read").limit_bytes, None);
    }

    #[test]
    fn detects_and_reads_v1_without_stat() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            &[
                ("memory/memory.usage_in_bytes", "2048\n"),
                ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ],
        );
        let cgroup = CgroupMemory::detect(dir.path()).expect("v1");
        assert_eq!(cgroup.version, CgroupVersion::V1);
        assert_eq!(
            cgroup.read().expect("read"),
            MemoryReading {
                usage_bytes: 2048,
                limit_bytes: None
            }
        );
    }

    #[test]
    fn detect_finds_nothing_in_an_empty_root_and_read_reports_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(CgroupMemory::detect(dir.path()), None);
        write(
            dir.path(),
            &[("memory.current", "lots\n"), ("memory.max", "max\n")],
        );
        let cgroup = CgroupMemory::detect(dir.path()).expect("v2");
        assert!(matches!(cgroup.read(), Err(CgroupError::Parse { .. })));
        fs::remove_file(dir.path().join("memory.max")).expect("rm");
        write(dir.path(), &[("memory.current", "1\n")]);
        assert!(matches!(cgroup.read(), Err(CgroupError::Read { .. })));
    }

    fn reading(usage: u64, limit: Option<u64>) -> MemoryReading {
        MemoryReading {
            usage_bytes: usage,
            limit_bytes: limit,
        }
    }

    #[test]
    fn watch_fires_once_and_tracks_the_peak() {
        let mut watch = MemoryWatch::new(MemoryMonitorSettings::default());
        assert_eq!(watch.peak_bytes(), None);
        let steps = [
            (reading(100, Some(1000)), false),
            (reading(799, Some(1000)), false),
            (reading(800, Some(1000)), true), // 80 % reached
            (reading(950, Some(1000)), false),
            (reading(500, Some(1000)), false),
            (reading(990, Some(1000)), false),
        ];
        for (i, (r, fires)) in steps.into_iter().enumerate() {
            let fired = watch.observe(r);
            assert_eq!(fired.is_some(), fires, "step {i}");
            if let Some(m) = fired {
                assert_eq!((m.usage_bytes, m.limit_bytes), (800, 1000));
            }
        }
        assert_eq!(watch.peak_bytes(), Some(990));
        assert_eq!(watch.limit_bytes(), Some(1000));
    }

    #[test]
    fn watch_without_a_limit_only_tracks_the_peak_until_one_appears() {
        let mut watch = MemoryWatch::new(MemoryMonitorSettings::default());
        assert!(watch.observe(reading(5000, None)).is_none());
        assert!(watch.observe(reading(6000, None)).is_none());
        assert_eq!(
            (watch.peak_bytes(), watch.limit_bytes()),
            (Some(6000), None)
        );
        // A limit set later (in-place resize) is honoured.
        assert!(watch.observe(reading(6000, Some(7000))).is_some());
    }
}
