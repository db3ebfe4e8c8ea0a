//! Images as the pod executor models them: a test-configured registry from image reference to a
//! filesystem "image" (in-image paths mapped to host files or directories, plus the image's ENV,
//! ENTRYPOINT/CMD and working directory), reference parsing and normalisation as the container
//! runtime does it (`busybox` = `docker.io/library/busybox:latest`), and scripted pull failures.
//!
//! Pure data and lookups; the kubelet threads read the registry (shared, immutable after start) and
//! the failure list (behind the executor's lock).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A filesystem image: what a container built from it sees besides its volumes.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// In-image absolute path (file or directory) → host path.
    pub paths: BTreeMap<String, PathBuf>,
    /// The image's `ENV`, in order; values may name in-image paths (rewritten like the pod's env).
    pub env: Vec<(String, String)>,
    /// `ENTRYPOINT`, used when the container has no `command`.
    pub entrypoint: Vec<String>,
    /// `CMD`, used when the container has neither `command` nor `args`.
    pub cmd: Vec<String>,
    /// `WORKDIR` (an in-image path).
    pub working_dir: Option<String>,
}

impl Image {
    /// An empty image: nothing runs in it until paths are added.
    pub fn new() -> Image {
        Image::default()
    }

    /// Maps in-image path `in_image` (absolute; a file or a directory) to `host`.
    pub fn path(mut self, in_image: &str, host: impl AsRef<Path>) -> Image {
        assert!(
            in_image.starts_with('/'),
            "image paths are absolute: {in_image}"
        );
        self.paths.insert(
            in_image.trim_end_matches('/').to_string(),
            host.as_ref().to_path_buf(),
        );
        self
    }

    /// Adds an `ENV` entry.
    pub fn env(mut self, name: &str, value: &str) -> Image {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets `ENTRYPOINT`.
    pub fn entrypoint(mut self, argv: &[&str]) -> Image {
        self.entrypoint = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `CMD`.
    pub fn cmd(mut self, argv: &[&str]) -> Image {
        self.cmd = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `WORKDIR`.
    pub fn working_dir(mut self, dir: &str) -> Image {
        self.working_dir = Some(dir.to_string());
        self
    }

    /// A shell image: `/bin/sh` and the usual tool directories of the host, PATH set. Enough for
    /// `sh -c` scripts with coreutils (`cat`, `sleep`, `echo`).
    pub fn busybox() -> Image {
        Image::new()
            .path("/bin", "/bin")
            .path("/usr/bin", "/usr/bin")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
    }
}

impl Image {
    /// The agent image as the Containerfile builds it: FROM scratch with the static binary at
    /// `/usr/local/bin/scalr-agent` (pass `env!("CARGO_BIN_EXE_scalr-agent")`).
    pub fn scalr_agent(binary: impl AsRef<Path>) -> Image {
        Image::new()
            .path("/usr/local/bin/scalr-agent", binary)
            .entrypoint(&["/usr/local/bin/scalr-agent"])
    }

    /// A runner image like `scalr/runner`: a shell and coreutils, and `tools_bin` (real terraform,
    /// from `scripts/install-tools.sh`) as `/usr/local/bin`, first on PATH.
    pub fn runner(tools_bin: impl AsRef<Path>) -> Image {
        Image::busybox().path("/usr/local/bin", tools_bin)
    }
}

/// Images by normalised reference.
#[derive(Clone, Debug, Default)]
pub struct ImageRegistry {
    images: BTreeMap<String, Image>,
}

impl ImageRegistry {
    /// Registers `image` under `reference` (any form: `busybox`, `scalr/agent:1.0`, `reg:5000/x@sha256:…`).
    pub fn insert(&mut self, reference: &str, image: Image) {
        let key = normalize(reference)
            .unwrap_or_else(|| panic!("{reference:?} is not a valid image reference"));
        self.images.insert(key, image);
    }

    /// The image a reference names.
    pub fn get(&self, reference: &str) -> Option<&Image> {
        self.images.get(&normalize(reference)?)
    }
}

/// How a scripted pull fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullFailure {
    /// The registry refuses or lacks the image: `ErrImagePull`, then `ImagePullBackOff`, retried.
    ErrImagePull,
    /// The reference cannot be parsed: `InvalidImageName`, never retried.
    InvalidImageName,
}

/// A scripted pull failure for references matching `pattern` (`*` matches any run of characters;
/// matched against the reference as written and in normalised form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullFault {
    pub pattern: String,
    pub failure: PullFailure,
}

impl PullFault {
    /// Whether this fault applies to `reference`.
    pub fn matches(&self, reference: &str) -> bool {
        glob(&self.pattern, reference)
            || normalize(reference).is_some_and(|n| glob(&self.pattern, &n))
    }
}

/// `*`-only glob match of a whole string.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

fn component_ok(c: &str) -> bool {
    // [a-z0-9]+ separated by `.`, `_`, `__` or runs of `-`.
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        && !c.contains("..")
        && !c.contains("___")
}

fn tag_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn digest_ok(d: &str) -> bool {
    d.split_once(':').is_some_and(|(alg, hex)| {
        !alg.is_empty() && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The fully qualified form of an image reference (`docker.io/library/busybox:latest`), or `None`
/// when the runtime could not parse it (`InvalidImageName`).
pub fn normalize(reference: &str) -> Option<String> {
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    if digest.is_some_and(|d| !digest_ok(d)) {
        return None;
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if tag.is_some_and(|t| !tag_ok(t)) {
        return None;
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let domain = if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        let d = parts.remove(0);
        if !d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        {
            return None;
        }
        d.to_string()
    } else {
        "docker.io".to_string()
    };
    if parts.is_empty() || !parts.iter().all(|c| component_ok(c)) {
        return None;
    }
    let mut path = parts.join("/");
    if domain == "docker.io" && parts.len() == 1 {
        path = format!("library/{path}");
    }
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(t), _) => out.push_str(&format!(":{t}")),
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push_str(&format!("@{d}"));
    }
    Some(out)
}

/// A stable fake digest for an image (the `imageID` a runtime reports).
pub fn image_id(reference: &str) -> String {
    use sha2::Digest;
    let normal = normalize(reference).unwrap_or_else(|| reference.to_string());
    let hash = sha2::Sha256::digest(normal.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let repo = normal
        .split('@')
        .next()
        .unwrap_or(&normal)
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or(normal.as_str(), |(r, _)| r)
        .to_string();
    format!("{repo}@sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_the_runtime() {
        let cases = [
            ("busybox", Some("docker.io/library/busybox:latest")),
            ("busybox:1.36", Some("docker.io/library/busybox:1.36")),
            ("scalr/runner:0.2.0", Some("docker.io/scalr/runner:0.2.0")),
            ("ghcr.io/scalr/agent:1.0", Some("ghcr.io/scalr/agent:1.0")),
            ("localhost:5000/agent", Some("localhost:5000/agent:latest")),
            ("Bad/Image", None),
            ("busybox:", None),
            ("has space", None),
            ("", None),
            ("x@sha256:12", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn globs_and_faults_match_written_and_normal_forms() {
        assert!(glob("*", "anything"));
        assert!(glob("scalr/*:1.*", "scalr/runner:1.2"));
        assert!(!glob("scalr/*:1.*", "scalr/runner:2.0"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
        let fault = PullFault {
            pattern: "docker.io/library/busybox:*".into(),
            failure: PullFailure::ErrImagePull,
        };
        assert!(fault.matches("busybox"));
        assert!(!fault.matches("alpine"));
    }

    #[test]
    fn registry_finds_any_spelling() {
        let mut reg = ImageRegistry::default();
        reg.insert("busybox", Image::busybox());
        assert!(reg.get("docker.io/library/busybox:latest").is_some());
        assert!(reg.get("busybox:latest").is_some());
        assert!(reg.get("busybox:1").is_none());
        assert!(image_id("busybox").starts_with("docker.io/library/busybox@sha256:"));
    }
}
