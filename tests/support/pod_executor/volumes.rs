//! A pod's volumes as host directories: `emptyDir` (one directory per pod), `secret` and
//! `configMap` (files with the item's or the default mode), `persistentVolumeClaim` (one directory
//! per claim, shared by every pod that mounts it), `hostPath` (the host path itself). Other types
//! fail to mount, as a driver that is missing would.
//!
//! Runs on the pod's thread; Secret and ConfigMap data come through [`Lookup`], so a missing one
//! is a `FailedMount` the thread retries.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};

use super::env::Lookup;

/// Where one pod's files live on the host.
#[derive(Clone, Debug)]
pub struct PodDirs {
    /// `<work>/pods/<uid prefix>`.
    pub root: PathBuf,
    /// `<work>/claims`: claims are shared across pods.
    pub claims: PathBuf,
}

impl PodDirs {
    /// The directory of volume `name` (emptyDir, secret, configMap).
    pub fn volume(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }

    /// A container's private directories: HOME, working directory, cgroup files.
    pub fn container(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(name)
    }
}

/// The host directory of claim `claim` in `namespace`.
pub fn claim_dir(claims: &Path, namespace: &str, claim: &str) -> PathBuf {
    claims.join(namespace).join(claim)
}

fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    kind: &str,
) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let chosen: Vec<(String, String, i32)> = match items {
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                if !data.contains_key(&it.key) {
                    return Err(format!(
                        "{kind} references non-existent {kind} key: {}",
                        it.key
                    ));
                }
                out.push((
                    it.key.clone(),
                    it.path.clone(),
                    it.mode.unwrap_or(default_mode),
                ));
            }
            out
        }
        None => data
            .keys()
            .map(|k| (k.clone(), k.clone(), default_mode))
            .collect(),
    };
    for (key, rel, mode) in chosen {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        fs::write(&path, &data[&key]).map_err(|e| format!("write {}: {e}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode as u32 & 0o7777))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(())
}

fn set_up(v: &Volume, pod: &Pod, dirs: &PodDirs, lookup: &dyn Lookup) -> Result<PathBuf, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir = dirs.volume(&v.name);
    if v.empty_dir.is_some() {
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.unwrap_or(0o644);
        return match lookup.secret(&name)? {
            Some(data) => {
                write_files(&dir, &data, s.items.as_ref(), mode, "secret")?;
                Ok(dir)
            }
            None if s.optional == Some(true) => {
                fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                Ok(dir)
            }
            None => Err(format!("secret {name:?} not found")),
        };
    }
    if let Some(c) = &v.config_map {
        let name = c.name.clone();
        let mode = c.default_mode.unwrap_or(0o644);
        return match lookup.config_map(&name)? {
            Some(data) => {
                let bytes = data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                write_files(&dir, &bytes, c.items.as_ref(), mode, "configmap")?;
                Ok(dir)
            }
            None if c.optional == Some(true) => {
                fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                Ok(dir)
            }
            None => Err(format!("configmap {name:?} not found")),
        };
    }
    if let Some(claim) = &v.persistent_volume_claim {
        let dir = claim_dir(&dirs.claims, ns, &claim.claim_name);
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => fs::create_dir_all(&path).map_err(|e| e.to_string())?,
            "Directory" if !path.is_dir() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a directory",
                    h.path
                ));
            }
            "File" if !path.is_file() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a file",
                    h.path
                ));
            }
            _ => {}
        }
        return Ok(path);
    }
    Err(
        "volume type not supported by the pod executor (emptyDir, secret, configMap, \
         persistentVolumeClaim and hostPath are)"
            .into(),
    )
}

/// Sets up every volume: name → host path. The error is the kubelet's `FailedMount` message.
pub fn set_up_all(
    pod: &Pod,
    dirs: &PodDirs,
    lookup: &dyn Lookup,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = set_up(v, pod, dirs, lookup)
            .map_err(|e| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// `(mountPath, host path)` of a container's volume mounts (`subPath` directories are created).
pub fn mounts(
    container: &k8s_openapi::api::core::v1::Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let base = volumes
            .get(&m.name)
            .ok_or_else(|| format!("volume {:?} not found", m.name))?;
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = base.join(sub);
                if !p.exists() {
                    fs::create_dir_all(&p).map_err(|e| format!("create subPath {sub}: {e}"))?;
                }
                p
            }
            None => base.clone(),
        };
        out.push((m.mount_path.clone(), host));
    }
    Ok(out)
}
