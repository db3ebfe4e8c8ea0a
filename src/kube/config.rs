//! Where the Kubernetes API is and how to authenticate to it: explicit flags, a kubeconfig
//! ([`super::kubeconfig`]) or the pod's service account (in-cluster).
//!
//! Resolved once at start-up on the calling thread into a [`KubeConfig`]; the only state that changes
//! afterwards is the service-account token, which [`TokenFile`] re-reads as it rotates.

use std::path::PathBuf;

use crate::http::{CaSource, ClientIdentity, ClientIdentityPem, HttpOptions, ProxySettings};
use crate::secret::Secret;

use super::error::KubeError;
pub use super::token::{TOKEN_REFRESH, TokenFile};

/// Where the service account is mounted in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The namespace when none is configured.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A resolved configuration: everything needed to build a [`super::Client`].
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// `https://host:port` (no trailing slash); `http://` is accepted for tests.
    pub server: String,
    /// The namespace calls use unless told otherwise.
    pub namespace: String,
    /// The bearer credential, if any.
    pub auth: Auth,
    /// CA bundle that replaces the built-in roots.
    pub ca: Option<CaSource>,
    /// Client certificate for x509 authentication.
    pub client_cert: Option<ClientCert>,
    /// Skip server certificate verification (kubeconfig `insecure-skip-tls-verify`).
    pub insecure_skip_verify: bool,
    /// kubeconfig `proxy-url`: replaces the environment's proxies for this server.
    pub proxy_url: Option<String>,
    /// Where this came from, for logs and `check`.
    pub origin: Origin,
}

/// Which form of configuration was used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The pod's service account.
    InCluster,
    /// A kubeconfig file and the context chosen in it.
    Kubeconfig { path: PathBuf, context: String },
    /// Command-line flags.
    Explicit,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::InCluster => f.write_str("in-cluster service account"),
            Origin::Kubeconfig { path, context } => {
                write!(f, "kubeconfig {} (context {context})", path.display())
            }
            Origin::Explicit => f.write_str("command-line flags"),
        }
    }
}

/// The bearer credential.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No `Authorization` header (client certificates or an open test server).
    None,
    /// A fixed token.
    Token(Secret),
    /// A token file, re-read as it rotates.
    TokenFile(TokenFile),
}

/// PEM material given either as a file or inline.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file, read when the client is built.
    File(PathBuf),
    /// The bytes themselves (already base64-decoded).
    Data(Vec<u8>),
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::File(path) => write!(f, "File({})", path.display()),
            PemSource::Data(bytes) => write!(f, "Data({} bytes)", bytes.len()),
        }
    }
}

/// A client certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate chain.
    pub cert: PemSource,
    /// The private key (`Debug` shows only its length).
    pub key: PemSource,
}

impl KubeConfig {
    /// HTTP options for this server on top of `base` (timeouts, environment proxies).
    pub fn http_options(&self, base: &HttpOptions) -> Result<HttpOptions, KubeError> {
        let mut options = base.clone();
        options.ca = self.ca.clone();
        options.insecure_skip_verify = self.insecure_skip_verify;
        options.client_identity = None;
        options.client_identity_pem = None;
        match &self.client_cert {
            Some(ClientCert {
                cert: PemSource::File(cert_file),
                key: PemSource::File(key_file),
            }) => {
                options.client_identity = Some(ClientIdentity {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                });
            }
            Some(ClientCert { cert, key }) => {
                let read = |source: &PemSource| match source {
                    PemSource::Data(bytes) => Ok(bytes.clone()),
                    PemSource::File(path) => std::fs::read(path).map_err(|e| {
                        KubeError::Setup(crate::http::HttpError::Setup {
                            what: format!("client certificate file {}", path.display()),
                            detail: e.to_string(),
                        })
                    }),
                };
                options.client_identity_pem = Some(ClientIdentityPem {
                    cert_pem: read(cert)?,
                    key_pem: read(key)?,
                    origin: self.origin.to_string(),
                });
            }
            None => {}
        }
        if let Some(proxy) = &self.proxy_url {
            options.proxy = ProxySettings {
                http: Some(proxy.clone()),
                https: Some(proxy.clone()),
                no_proxy: Default::default(),
            };
        }
        Ok(options)
    }
}

/// The environment that decides which configuration applies, read once (tests build it directly).
#[derive(Clone, Debug, Default)]
pub struct KubeEnv {
    /// `KUBERNETES_SERVICE_HOST`.
    pub service_host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT`.
    pub service_port: Option<String>,
    /// `KUBECONFIG`: one or more paths separated by `:`.
    pub kubeconfig: Option<String>,
    /// `HOME`, for `~/.kube/config`.
    pub home: Option<PathBuf>,
    /// Where the service account is mounted ([`SERVICE_ACCOUNT_DIR`] outside tests).
    pub service_account_dir: PathBuf,
}

impl KubeEnv {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        KubeEnv {
            service_host: var("KUBERNETES_SERVICE_HOST"),
            service_port: var("KUBERNETES_SERVICE_PORT"),
            kubeconfig: var("KUBECONFIG"),
            home: var("HOME").map(PathBuf::from),
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
        }
    }
}

/// Command-line overrides. Every field is optional; `server` alone selects the explicit form.
#[derive(Clone, Debug, Default)]
pub struct Explicit {
    /// API server URL (`--kube-server`): with it, no kubeconfig or service account is read.
    pub server: Option<String>,
    /// Bearer token.
    pub token: Option<Secret>,
    /// Bearer token file (re-read as it rotates).
    pub token_file: Option<PathBuf>,
    /// CA bundle.
    pub ca: Option<CaSource>,
    /// Skip server certificate verification.
    pub insecure_skip_verify: bool,
    /// Namespace, overriding whatever the chosen form says.
    pub namespace: Option<String>,
    /// A kubeconfig file to use instead of `KUBECONFIG`/in-cluster/`~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig context instead of `current-context`.
    pub context: Option<String>,
}

/// Why no usable configuration was found.
#[derive(Debug)]
pub enum ConfigError {
    /// No form applied.
    NotFound { tried: Vec<String> },
    /// A file could not be read.
    Read { path: PathBuf, detail: String },
    /// A kubeconfig was not valid YAML of the expected shape.
    Parse { path: PathBuf, detail: String },
    /// The kubeconfig is usable in general but not for us (missing entry, unsupported auth).
    Kubeconfig { path: PathBuf, detail: String },
    /// A value was malformed (server URL, base64 data).
    Invalid { what: String, detail: String },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::NotFound { tried } => write!(
                f,
                "no Kubernetes configuration found (tried {}); run inside a pod with a service \
                 account, set KUBECONFIG, or pass the API server explicitly",
                tried.join(", ")
            ),
            ConfigError::Read { path, detail } => {
                write!(f, "cannot read {}: {detail}", path.display())
            }
            ConfigError::Parse { path, detail } => {
                write!(f, "kubeconfig {} is not valid: {detail}", path.display())
            }
            ConfigError::Kubeconfig { path, detail } => {
                write!(f, "kubeconfig {}: {detail}", path.display())
            }
            ConfigError::Invalid { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl KubeConfig {
    /// Picks the configuration: explicit `server` > explicit kubeconfig > `KUBECONFIG` > in-cluster
    /// (`KUBERNETES_SERVICE_HOST` set) > `~/.kube/config`. `explicit.namespace` overrides the
    /// namespace of whichever form applies.
    pub fn discover(env: &KubeEnv, explicit: &Explicit) -> Result<KubeConfig, ConfigError> {
        let mut config = if explicit.server.is_some() {
            Self::explicit(explicit)?
        } else if let Some(path) = &explicit.kubeconfig {
            super::kubeconfig::load(std::slice::from_ref(path), explicit.context.as_deref())?
        } else if let Some(list) = &env.kubeconfig {
            let paths: Vec<PathBuf> = std::env::split_paths(list).collect();
            super::kubeconfig::load(&paths, explicit.context.as_deref())?
        } else if env.service_host.is_some() {
            Self::in_cluster(env)?
        } else {
            let home_config = env.home.as_ref().map(|h| h.join(".kube").join("config"));
            match home_config {
                Some(path) if path.exists() => {
                    super::kubeconfig::load(&[path], explicit.context.as_deref())?
                }
                other => {
                    let mut tried = vec![
                        "KUBECONFIG (unset)".to_string(),
                        "in-cluster (KUBERNETES_SERVICE_HOST unset)".to_string(),
                    ];
                    if let Some(path) = other {
                        tried.push(path.display().to_string());
                    }
                    return Err(ConfigError::NotFound { tried });
                }
            }
        };
        if let Some(ns) = explicit.namespace.as_ref().filter(|n| !n.is_empty()) {
            config.namespace = ns.clone();
        }
        if explicit.server.is_none() {
            // Flags refine a kubeconfig or in-cluster form too.
            if let Some(token) = &explicit.token {
                config.auth = Auth::Token(token.clone());
            }
            if let Some(path) = &explicit.token_file {
                config.auth = Auth::TokenFile(TokenFile::new(path));
            }
            if explicit.ca.is_some() {
                config.ca = explicit.ca.clone();
            }
            config.insecure_skip_verify |= explicit.insecure_skip_verify;
        }
        Ok(config)
    }

    /// The explicit form: `explicit.server` with the given token, CA and namespace.
    pub fn explicit(explicit: &Explicit) -> Result<KubeConfig, ConfigError> {
        let server = explicit.server.as_deref().unwrap_or_default();
        let auth = match (&explicit.token_file, &explicit.token) {
            (Some(path), _) => Auth::TokenFile(TokenFile::new(path)),
            (None, Some(token)) => Auth::Token(token.clone()),
            (None, None) => Auth::None,
        };
        Ok(KubeConfig {
            server: validate_server(server, "the Kubernetes API server")?,
            namespace: explicit
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            auth,
            ca: explicit.ca.clone(),
            client_cert: None,
            insecure_skip_verify: explicit.insecure_skip_verify,
            proxy_url: None,
            origin: Origin::Explicit,
        })
    }

    /// The in-cluster form: `KUBERNETES_SERVICE_HOST`/`PORT`, and the mounted token, CA and namespace.
    pub fn in_cluster(env: &KubeEnv) -> Result<KubeConfig, ConfigError> {
        let host = env.service_host.as_deref().unwrap_or_default().trim();
        if host.is_empty() {
            return Err(ConfigError::NotFound {
                tried: vec!["in-cluster (KUBERNETES_SERVICE_HOST unset)".into()],
            });
        }
        let port = env.service_port.as_deref().unwrap_or("443").trim();
        if port.parse::<u16>().is_err() {
            return Err(ConfigError::Invalid {
                what: "KUBERNETES_SERVICE_PORT".into(),
                detail: format!("{port:?} is not a port number"),
            });
        }
        // IPv6 service addresses need brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let dir = &env.service_account_dir;
        let token_path = dir.join("token");
        if !token_path.exists() {
            return Err(ConfigError::Read {
                path: token_path,
                detail: "no service-account token is mounted; set automountServiceAccountToken \
                         on the pod or use a kubeconfig"
                    .into(),
            });
        }
        let ca_path = dir.join("ca.crt");
        let namespace = match std::fs::read_to_string(dir.join("namespace")) {
            Ok(ns) if !ns.trim().is_empty() => ns.trim().to_string(),
            _ => DEFAULT_NAMESPACE.to_string(),
        };
        Ok(KubeConfig {
            server: format!("https://{host}:{port}"),
            namespace,
            auth: Auth::TokenFile(TokenFile::new(token_path)),
            ca: ca_path.exists().then_some(CaSource::File(ca_path)),
            client_cert: None,
            insecure_skip_verify: false,
            proxy_url: None,
            origin: Origin::InCluster,
        })
    }
}

/// Checks a server URL and drops a trailing slash.
pub(crate) fn validate_server(server: &str, what: &str) -> Result<String, ConfigError> {
    let server = server.trim().trim_end_matches('/');
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.contains(['?', '#']) => Ok(server.to_string()),
        _ => Err(ConfigError::Invalid {
            what: what.to_string(),
            detail: format!("{server:?} is not an https:// URL such as https://10.0.0.1:6443"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn service_account(dir: &Path, namespace: Option<&str>) {
        std::fs::write(dir.join("token"), "sa-token-unit-1234567890\n").expect("token");
        std::fs::write(dir.join("ca.crt"), "pem").expect("ca");
        if let Some(ns) = namespace {
            std::fs::write(dir.join("namespace"), ns).expect("ns");
        }
    }

    fn env(dir: &Path) -> KubeEnv {
        KubeEnv {
            service_host: Some("10.96.0.1".into()),
            service_port: Some("443".into()),
            service_account_dir: dir.to_path_buf(),
            ..KubeEnv::default()
        }
    }

    #[test]
    fn in_cluster_reads_the_mounted_service_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        service_account(dir.path(), Some("ci\n"));
        let config = KubeConfig::discover(&env(dir.path()), &Explicit::default()).expect("config");
        assert_eq!(config.server, "https://10.96.0.1:443");
        assert_eq!(config.namespace, "ci");
        assert_eq!(config.origin, Origin::InCluster);
        assert_eq!(config.ca, Some(CaSource::File(dir.path().join("ca.crt"))));
        let Auth::TokenFile(file) = &config.auth else {
            panic!("{:?}", config.auth)
        };
        assert_eq!(
            file.token().expect("token").expose(),
            "sa-token-unit-1234567890"
        );
        assert!(!format!("{config:?}").contains("sa-token-unit"));
    }

    #[test]
    fn in_cluster_variants_and_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        service_account(dir.path(), None);
        let mut e = env(dir.path());
        e.service_host = Some("fd00::1".into());
        e.service_port = None;
        let config = KubeConfig::in_cluster(&e).expect("ipv6");
        assert_eq!(config.server, "https://[fd00::1]:443");
        assert_eq!(config.namespace, DEFAULT_NAMESPACE);
        e.service_port = Some("https".into());
        assert!(matches!(
            KubeConfig::in_cluster(&e),
            Err(ConfigError::Invalid { .. })
        ));
        let empty = tempfile::tempdir().expect("tempdir");
        let err = KubeConfig::in_cluster(&env(empty.path())).expect_err("no token");
        assert!(
            err.to_string().contains("automountServiceAccountToken"),
            "{err}"
        );
    }

    #[test]
    fn explicit_flags_win_and_refine() {
        let dir = tempfile::tempdir().expect("tempdir");
        service_account(dir.path(), Some("ci"));
        let explicit = Explicit {
            server: Some("https://127.0.0.1:6443/".into()),
            token: Some(Secret::new("flag-token-unit-123456")),
            namespace: Some("other".into()),
            insecure_skip_verify: true,
            ..Explicit::default()
        };
        let config = KubeConfig::discover(&env(dir.path()), &explicit).expect("explicit");
        assert_eq!(config.server, "https://127.0.0.1:6443");
        assert_eq!(config.namespace, "other");
        assert_eq!(config.origin, Origin::Explicit);
        assert!(config.insecure_skip_verify);
        assert!(matches!(&config.auth, Auth::Token(t) if t.expose() == "flag-token-unit-123456"));

        // Without a server, flags refine the in-cluster form.
        let refine = Explicit {
            namespace: Some("x".into()),
            token_file: Some(dir.path().join("other-token")),
            ..Explicit::default()
        };
        let config = KubeConfig::discover(&env(dir.path()), &refine).expect("in-cluster");
        assert_eq!(
            (config.origin, config.namespace.as_str()),
            (Origin::InCluster, "x")
        );
        assert!(matches!(&config.auth, Auth::TokenFile(f) if f.path().ends_with("other-token")));

        let bad = Explicit {
            server: Some("10.0.0.1:6443".into()),
            ..Explicit::default()
        };
        assert!(matches!(
            KubeConfig::explicit(&bad),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn kubeconfig_env_beats_in_cluster_and_home_config_comes_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        service_account(dir.path(), Some("ci"));
        let kubeconfig = |server: &str| {
            format!(
                "current-context: c\ncontexts: [{{name: c, context: {{cluster: k}}}}]\n\
                 clusters: [{{name: k, cluster: {{server: '{server}'}}}}]\n"
            )
        };
        let file = dir.path().join("kubeconfig");
        std::fs::write(&file, kubeconfig("https://from-env:6443")).expect("kubeconfig");
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir(home.path().join(".kube")).expect(".kube");
        std::fs::write(
            home.path().join(".kube/config"),
            kubeconfig("https://from-home:6443"),
        )
        .expect("home config");
        let mut e = env(dir.path());
        e.home = Some(home.path().to_path_buf());
        e.kubeconfig = Some(file.display().to_string());
        let config = KubeConfig::discover(&e, &Explicit::default()).expect("env kubeconfig");
        assert_eq!(config.server, "https://from-env:6443");
        e.kubeconfig = None;
        let config = KubeConfig::discover(&e, &Explicit::default()).expect("in-cluster");
        assert_eq!(config.origin, Origin::InCluster);
        e.service_host = None;
        let config = KubeConfig::discover(&e, &Explicit::default()).expect("home");
        assert_eq!(config.server, "https://from-home:6443");
        // An explicit kubeconfig path and context beat everything but an explicit server.
        let explicit = Explicit {
            kubeconfig: Some(file.clone()),
            context: Some("c".into()),
            ..Explicit::default()
        };
        let config = KubeConfig::discover(&e, &explicit).expect("explicit kubeconfig");
        assert_eq!(config.server, "https://from-env:6443");
    }

    #[test]
    fn nothing_configured_says_what_was_tried() {
        let home = tempfile::tempdir().expect("tempdir");
        let e = KubeEnv {
            home: Some(home.path().to_path_buf()),
            ..KubeEnv::default()
        };
        let err = KubeConfig::discover(&e, &Explicit::default()).expect_err("nothing");
        let text = err.to_string();
        assert!(
            text.contains("KUBECONFIG") && text.contains(".kube/config"),
            "{text}"
        );
    }

    #[test]
    fn client_cert_data_becomes_pem_options_and_files_stay_files() {
        let mut config = KubeConfig::explicit(&Explicit {
            server: Some("https://127.0.0.1:1".into()),
            ..Explicit::default()
        })
        .expect("config");
        config.client_cert = Some(ClientCert {
            cert: PemSource::Data(b"cert".to_vec()),
            key: PemSource::Data(b"key".to_vec()),
        });
        let options = config
            .http_options(&HttpOptions::default())
            .expect("options");
        let pem = options.client_identity_pem.expect("pem identity");
        assert_eq!(
            (pem.cert_pem.as_slice(), pem.key_pem.as_slice()),
            (&b"cert"[..], &b"key"[..])
        );
        assert!(!format!("{:?}", config.client_cert).contains("key\""));
        config.client_cert = Some(ClientCert {
            cert: PemSource::File("/c.pem".into()),
            key: PemSource::File("/k.pem".into()),
        });
        config.proxy_url = Some("http://proxy:3128".into());
        let options = config
            .http_options(&HttpOptions::default())
            .expect("options");
        assert_eq!(
            options.client_identity.expect("files").key_file,
            PathBuf::from("/k.pem")
        );
        assert_eq!(options.proxy.https.as_deref(), Some("http://proxy:3128"));
    }
}
