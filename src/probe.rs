//! Marker files for Kubernetes probes: writing them ([`touch_marker`]) and checking them
//! (`scalr-agent probe`).
//!
//! Task pods expose no ports and the agent image has no shell, so startup and liveness probes are
//! `exec` probes that run this binary: `scalr-agent probe --file .../healthy --max-age-secs 60`.
//! exec-loop (and the worker) touch their markers from their main loops; a stale `healthy` means the
//! loop is stuck. Runs on the main thread; prints one line on failure and nothing on success.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use argh::FromArgs;

/// Exit 0 if a marker file exists (and is fresh), else 1 with the reason on stderr.
#[derive(FromArgs, Debug, Clone, PartialEq, Eq)]
#[argh(subcommand, name = "probe")]
pub struct ProbeArgs {
    /// the marker file to check
    #[argh(option)]
    pub file: PathBuf,
    /// fail unless the file was modified within this many seconds
    #[argh(option)]
    pub max_age_secs: Option<u64>,
}

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// The marker does not exist (not started yet, or gone).
    Missing { path: PathBuf },
    /// The marker exists but was not touched within the allowed age.
    Stale {
        path: PathBuf,
        age: Duration,
        max_age: Duration,
    },
    /// The marker could not be inspected.
    Inspect { path: PathBuf, source: io::Error },
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Missing { path } => write!(f, "{} does not exist", path.display()),
            ProbeError::Stale { path, age, max_age } => write!(
                f,
                "{} was last touched {}s ago (allowed: {}s); the loop that touches it is stuck",
                path.display(),
                age.as_secs(),
                max_age.as_secs()
            ),
            ProbeError::Inspect { path, source } => {
                write!(f, "could not inspect {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProbeError::Inspect { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Runs the `probe` subcommand.
pub fn run(args: &ProbeArgs) -> Result<(), ProbeError> {
    check(
        &args.file,
        args.max_age_secs.map(Duration::from_secs),
        SystemTime::now(),
    )
}

/// Checks the marker at `path` as of `now`.
pub fn check(path: &Path, max_age: Option<Duration>, now: SystemTime) -> Result<(), ProbeError> {
    let modified = match fs::metadata(path) {
        Ok(meta) => meta.modified().map_err(|source| ProbeError::Inspect {
            path: path.to_path_buf(),
            source,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ProbeError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(ProbeError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    judge(path, modified, max_age, now)
}

/// The pure decision: fresh enough? A modification time in the future (clock step) counts as fresh.
pub fn judge(
    path: &Path,
    modified: SystemTime,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Result<(), ProbeError> {
    let Some(max_age) = max_age else {
        return Ok(());
    };
    let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
    if age > max_age {
        return Err(ProbeError::Stale {
            path: path.to_path_buf(),
            age,
            max_age,
        });
    }
    Ok(())
}

/// Creates the marker at `path` or sets its modification time to now.
pub fn touch_marker(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.set_modified(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_table() {
        let path = Path::new("/m/healthy");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let secs = Duration::from_secs;
        let cases = [
            (t0, None, t0 + secs(86_400), true),
            (t0, Some(secs(60)), t0 + secs(60), true),
            (t0, Some(secs(60)), t0 + secs(61), false),
            (t0, Some(secs(0)), t0, true),
            (t0 + secs(30), Some(secs(10)), t0, true), // modified in the future
        ];
        for (modified, max_age, now, fresh) in cases {
            let result = judge(path, modified, max_age, now);
            assert_eq!(
                result.is_ok(),
                fresh,
                "{modified:?} {max_age:?} {now:?}: {result:?}"
            );
            if let Err(e) = result {
                assert!(matches!(e, ProbeError::Stale { .. }));
                assert!(e.to_string().contains("61s ago"), "{e}");
            }
        }
    }

    #[test]
    fn check_missing_then_touched_then_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("healthy");
        assert!(matches!(
            check(&path, None, SystemTime::now()),
            Err(ProbeError::Missing { .. })
        ));
        touch_marker(&path).expect("touch");
        let now = SystemTime::now();
        check(&path, Some(Duration::from_secs(5)), now).expect("fresh");
        let later = now + Duration::from_secs(3600);
        assert!(matches!(
            check(&path, Some(Duration::from_secs(5)), later),
            Err(ProbeError::Stale { .. })
        ));
        // Touching again refreshes the time without truncating content.
        fs::write(&path, "kept").expect("write");
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .expect("backdate");
        assert!(check(&path, Some(Duration::from_secs(5)), now).is_err());
        touch_marker(&path).expect("touch again");
        check(&path, Some(Duration::from_secs(5)), SystemTime::now()).expect("fresh again");
        assert_eq!(fs::read_to_string(&path).expect("read"), "kept");
    }
}
