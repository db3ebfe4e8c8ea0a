//! Provisioning a run on the worker's main thread, before any command runs: the run directory, the
//! configuration version (downloaded, checksum-checked, extracted safely), the tool binary from the
//! shared cache, the provider mirror, the Terraform CLI configuration and backend override, and —
//! in the apply stage — the plan file the plan stage uploaded.
//!
//! Layout under `$SCALR_AGENT_DATA_DIR/runs/<task-id>/` (the data volume both containers mount):
//!
//! ```text
//! config/                    the configuration version (SCALR_RUN_CONTENT_ROOT)
//! config/<working-dir>/      where commands run; gets _scalr_backend_override.tf
//! .scalr/terraform.rc        TF_CLI_CONFIG_FILE (no secret unless a mirror needs a file token)
//! .scalr/agent.env           SCALR_AGENT_ENV
//! .scalr/plugin-cache/       TF_PLUGIN_CACHE_DIR, per run
//! .scalr/plan.tfplan         the saved plan
//! .scalr/downloads/          downloads in progress
//! ```

use std::fs::{DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use super::archive::{self, ArchiveError, Limits};
use super::binary_cache::{BinaryCache, BinaryCacheError, CachedBinary, ToolRelease};
use super::provider_cache::{ProviderCache, ProviderCacheError};
use super::tf_config::{self, CliConfig, HttpBackend, TokenPlacement};
use crate::config::Settings;
use crate::platform::{ArtefactKind, PlatformError, Stage, TaskClient, TaskSpec, cpu_platform};
use crate::secret::Secret;

/// The files and directories of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPaths {
    pub root: PathBuf,
    pub content_root: PathBuf,
    pub working_dir: PathBuf,
    pub scalr_dir: PathBuf,
    pub cli_config: PathBuf,
    pub agent_env: PathBuf,
    pub plugin_cache: PathBuf,
    pub plan_file: PathBuf,
    pub downloads: PathBuf,
}

impl RunPaths {
    /// The paths of task `task_id` under `data_dir`; `working_directory` must stay inside the
    /// configuration version.
    pub fn new(
        data_dir: &Path,
        task_id: &str,
        working_directory: &str,
    ) -> Result<Self, ProvisionError> {
        let relative = Path::new(working_directory.trim_matches('/'));
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(ProvisionError::WorkingDirectory {
                dir: working_directory.to_string(),
                problem: "must be a relative path inside the configuration version, without '..'",
            });
        }
        let root = data_dir.join("runs").join(task_id);
        let content_root = root.join("config");
        let scalr_dir = root.join(".scalr");
        Ok(RunPaths {
            working_dir: content_root.join(relative),
            cli_config: scalr_dir.join("terraform.rc"),
            agent_env: scalr_dir.join("agent.env"),
            plugin_cache: scalr_dir.join("plugin-cache"),
            plan_file: scalr_dir.join("plan.tfplan"),
            downloads: scalr_dir.join("downloads"),
            content_root,
            scalr_dir,
            root,
        })
    }
}

/// Why provisioning failed.
#[derive(Debug)]
pub enum ProvisionError {
    /// A directory or file of the run could not be created.
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A download from the platform failed.
    Download {
        what: String,
        source: Box<PlatformError>,
    },
    Extract(ArchiveError),
    WorkingDirectory {
        dir: String,
        problem: &'static str,
    },
    NoToolForPlatform {
        tool: String,
        version: String,
        platform: &'static str,
    },
    BinaryCache(BinaryCacheError),
    ProviderCache(ProviderCacheError),
    /// The apply stage found no plan file among the run's artefacts.
    NoPlanFile,
}

impl std::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProvisionError::Prepare { path, source } => write!(
                f,
                "cannot prepare {}: {source}; is the data volume writable?",
                path.display()
            ),
            ProvisionError::Download { what, source } => {
                write!(f, "cannot download {what}: {source}")
            }
            ProvisionError::Extract(e) => {
                write!(f, "the configuration version was refused: {e}")
            }
            ProvisionError::WorkingDirectory { dir, problem } => {
                write!(f, "the workspace's working directory {dir:?} {problem}")
            }
            ProvisionError::NoToolForPlatform {
                tool,
                version,
                platform,
            } => write!(
                f,
                "the platform offers {tool} {version} for no {platform} download; choose a \
                 version available for this platform"
            ),
            ProvisionError::BinaryCache(e) => write!(f, "cannot provision the tool: {e}"),
            ProvisionError::ProviderCache(e) => {
                write!(f, "cannot prepare the provider cache: {e}")
            }
            ProvisionError::NoPlanFile => write!(
                f,
                "the plan stage uploaded no plan file; run the plan again"
            ),
        }
    }
}

impl std::error::Error for ProvisionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProvisionError::Prepare { source, .. } => Some(source),
            ProvisionError::Download { source, .. } => Some(source.as_ref()),
            ProvisionError::Extract(e) => Some(e),
            ProvisionError::BinaryCache(e) => Some(e),
            ProvisionError::ProviderCache(e) => Some(e),
            _ => None,
        }
    }
}

/// What provisioning produced.
#[derive(Debug)]
pub struct Provisioned {
    /// The tool, leased from the shared cache for as long as this value lives.
    pub binary: CachedBinary,
    /// The shared provider mirror, when the cache is enabled.
    pub provider_cache: Option<ProviderCache>,
    /// `TF_TOKEN_<host>` variables for the network mirrors.
    pub mirror_tokens: Vec<(String, Secret)>,
}

fn make_dir(path: &Path) -> Result<(), ProvisionError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| ProvisionError::Prepare {
            path: path.to_path_buf(),
            source,
        })
}

fn write_file(path: &Path, text: &str) -> Result<(), ProvisionError> {
    std::fs::write(path, text).map_err(|source| ProvisionError::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `version` (`1.15.5`, `0.13.7`) is older than 1.2, the first Terraform to read mirror
/// tokens from `TF_TOKEN_*` variables. OpenTofu always does.
fn tokens_in_file(tool: &str, version: &str) -> bool {
    if tool != "terraform" {
        return false;
    }
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) < (1, 2)
}

/// Provisions the run described by `spec` into `paths`; `note` gets a line per stage for the run
/// log.
pub fn provision(
    task: &TaskClient,
    spec: &TaskSpec,
    settings: &Settings,
    paths: &RunPaths,
    note: &mut dyn FnMut(String),
) -> Result<Provisioned, ProvisionError> {
    for dir in [
        &paths.root,
        &paths.scalr_dir,
        &paths.plugin_cache,
        &paths.downloads,
    ] {
        make_dir(dir)?;
    }
    let download = |what: &str, d: &crate::platform::Download, dest: &Path| {
        task.download(d, dest)
            .map_err(|source| ProvisionError::Download {
                what: what.to_string(),
                source: Box::new(source),
            })
    };

    let cv = &spec.configuration_version;
    let archive_path = paths.downloads.join("configuration.tar.gz");
    download("the configuration version", &cv.download, &archive_path)?;
    let mut file = File::open(&archive_path).map_err(|source| ProvisionError::Prepare {
        path: archive_path.clone(),
        source,
    })?;
    let extracted = archive::extract(
        &mut file,
        &cv.download.sha256,
        &paths.content_root,
        &Limits::default(),
    )
    .map_err(ProvisionError::Extract)?;
    let _ = std::fs::remove_file(&archive_path);
    note(format!(
        "Configuration version {}: {} files, {} bytes (sha256 {})",
        cv.id, extracted.files, extracted.bytes, extracted.sha256
    ));
    if !paths.working_dir.is_dir() {
        return Err(ProvisionError::WorkingDirectory {
            dir: spec.workspace.working_directory.clone(),
            problem: "does not exist in the configuration version",
        });
    }

    let tool = &spec.tool;
    let platform = cpu_platform();
    let release = tool
        .download_for(platform)
        .ok_or_else(|| ProvisionError::NoToolForPlatform {
            tool: tool.name.clone(),
            version: tool.version.clone(),
            platform,
        })?;
    let staged = paths.downloads.join(format!("{}.download", tool.name));
    let cache = BinaryCache::new(&settings.cache_dir, &settings.binary_cache);
    let binary = cache
        .provision(
            &ToolRelease {
                tool: &tool.name,
                version: &tool.version,
                sha256: &release.download.sha256,
            },
            &mut |out: &mut dyn Write| {
                task.download(&release.download, &staged)?;
                let copied = std::io::copy(&mut File::open(&staged)?, out);
                let _ = std::fs::remove_file(&staged);
                copied.map(drop).map_err(Into::into)
            },
        )
        .map_err(ProvisionError::BinaryCache)?;
    note(format!(
        "{} {} for {platform}: {}",
        tool.name,
        tool.version,
        if binary.downloaded() {
            "downloaded into the shared cache"
        } else {
            "from the shared cache"
        }
    ));

    let providers = ProviderCache::new(&settings.cache_dir, &settings.provider_cache);
    let provider_cache = if providers.enabled() {
        providers
            .ensure_dir()
            .map_err(ProvisionError::ProviderCache)?;
        Some(providers)
    } else {
        None
    };
    let placement = if tokens_in_file(&tool.name, &tool.version) {
        TokenPlacement::File
    } else {
        TokenPlacement::Env
    };
    let cli = tf_config::cli_config(&CliConfig {
        filesystem_mirror: provider_cache.as_ref().map(|p| p.mirror_dir()),
        network_mirrors: &settings.network_mirrors,
        direct: true,
        plugin_cache_dir: None,
        tokens: placement,
    });
    write_file(&paths.cli_config, &cli)?;
    let backend = &spec.state_backend;
    let override_text = tf_config::backend_override(&HttpBackend {
        address: &backend.address,
        lock_address: &backend.lock_address,
        unlock_address: &backend.unlock_address,
        username: &backend.username,
    });
    write_file(
        &paths.working_dir.join(tf_config::BACKEND_OVERRIDE_FILE),
        &override_text,
    )?;
    write_file(&paths.agent_env, "")?;

    if spec.stage == Stage::Apply {
        let plan = spec
            .artefacts
            .iter()
            .find(|a| a.kind == ArtefactKind::PlanFile)
            .ok_or(ProvisionError::NoPlanFile)?;
        download("the plan file", &plan.download, &paths.plan_file)?;
        note(format!(
            "Plan file of the plan stage: {} bytes",
            plan.download.size
        ));
    }
    let mirror_tokens = match placement {
        TokenPlacement::Env => tf_config::mirror_token_env(&settings.network_mirrors),
        TokenPlacement::File => Vec::new(),
    };
    Ok(Provisioned {
        binary,
        provider_cache,
        mirror_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_directory_stays_inside() {
        let data = Path::new("/data");
        let paths = RunPaths::new(data, "task-1", "stacks/net/").expect("valid");
        assert_eq!(
            paths.working_dir,
            Path::new("/data/runs/task-1/config/stacks/net")
        );
        assert_eq!(paths.content_root, Path::new("/data/runs/task-1/config"));
        assert_eq!(
            RunPaths::new(data, "task-1", "").expect("root").working_dir,
            paths.content_root
        );
        assert_eq!(
            RunPaths::new(data, "task-1", "/abs")
                .expect("leading slash trimmed")
                .working_dir,
            Path::new("/data/runs/task-1/config/abs")
        );
        for bad in ["../x", "a/../../b", "a/.."] {
            assert!(RunPaths::new(data, "task-1", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_placement_by_version() {
        for (tool, version, file) in [
            ("terraform", "1.15.5", false),
            ("terraform", "1.2.0", false),
            ("terraform", "1.1.9", true),
            ("terraform", "0.13.7", true),
            ("tofu", "1.6.0", false),
        ] {
            assert_eq!(tokens_in_file(tool, version), file, "{tool} {version}");
        }
    }
}
