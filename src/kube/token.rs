//! The bearer token file (service-account token, kubeconfig `tokenFile`), re-read as it rotates.
//!
//! The kubelet rotates projected service-account tokens well before they expire and swaps the file
//! atomically. [`TokenFile`] re-reads it when its copy is older than [`TOKEN_REFRESH`], and at once
//! when the API server answered 401 ([`TokenFile::reload`]). Shared by every clone of the client
//! (`Arc<Mutex<_>>`), so any thread may call it; the token is a [`Secret`] and never printed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::KubeError;
use crate::secret::Secret;

/// A token older than this is read again before use (client-go and kube-rs use 60 s).
pub const TOKEN_REFRESH: Duration = Duration::from_secs(60);

/// A token file shared by every clone of the client; re-read when stale or after a 401.
#[derive(Clone)]
pub struct TokenFile {
    path: PathBuf,
    refresh: Duration,
    cached: Arc<Mutex<Option<(Secret, Instant)>>>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl TokenFile {
    /// A token file re-read every [`TOKEN_REFRESH`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_refresh(path, TOKEN_REFRESH)
    }

    /// A token file re-read every `refresh` (tests use zero to re-read on every call).
    pub fn with_refresh(path: impl Into<PathBuf>, refresh: Duration) -> Self {
        TokenFile {
            path: path.into(),
            refresh,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current token: the cached copy while fresh, else the file read again.
    pub fn token(&self) -> Result<Secret, KubeError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, read_at)) = cached.as_ref()
            && read_at.elapsed() < self.refresh
        {
            return Ok(token.clone());
        }
        let token = self.read()?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Reads the file now (after a 401); `true` when the token differs from the cached one.
    pub fn reload(&self) -> Result<bool, KubeError> {
        let token = self.read()?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let changed = cached.as_ref().is_none_or(|(old, _)| *old != token);
        *cached = Some((token, Instant::now()));
        Ok(changed)
    }

    fn read(&self) -> Result<Secret, KubeError> {
        let error = |detail: String| KubeError::Credentials {
            path: self.path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(&self.path).map_err(|e| error(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(error("the file is empty".into()));
        }
        Ok(Secret::new(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_cached_until_stale_and_reloaded_on_demand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token-unit-12345").expect("write");
        let cached = TokenFile::with_refresh(&path, Duration::from_secs(3600));
        let always = TokenFile::with_refresh(&path, Duration::ZERO);
        assert_eq!(
            cached.token().expect("t").expose(),
            "first-token-unit-12345"
        );
        assert_eq!(
            always.token().expect("t").expose(),
            "first-token-unit-12345"
        );
        std::fs::write(&path, "second-token-unit-12345\n").expect("rotate");
        assert_eq!(
            cached.token().expect("t").expose(),
            "first-token-unit-12345"
        );
        assert_eq!(
            always.token().expect("t").expose(),
            "second-token-unit-12345"
        );
        assert!(
            cached.reload().expect("reload"),
            "rotated token is a change"
        );
        assert!(
            !cached.reload().expect("reload"),
            "same token again is no change"
        );
        assert_eq!(
            cached.token().expect("t").expose(),
            "second-token-unit-12345"
        );
        std::fs::write(&path, "  \n").expect("empty");
        assert!(matches!(always.token(), Err(KubeError::Credentials { .. })));
    }
}
