//! kubeconfig files: parsed with `serde_yaml_ng`, merged, and resolved into a [`KubeConfig`].
//!
//! Supported: several files (`KUBECONFIG=a:b`, the first to define a name wins, missing files are
//! skipped like kubectl does), `current-context` or an explicit context, the cluster's `server`,
//! `certificate-authority(-data)`, `insecure-skip-tls-verify`, `proxy-url`, and the user's `token`,
//! `tokenFile`, `client-certificate(-data)` and `client-key(-data)`. Relative paths are relative to
//! the file that names them. Exec plugins, auth providers and basic auth are refused with a message
//! that says what to use instead. Pure apart from reading the files; runs once at start-up.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::config::{
    Auth, ClientCert, ConfigError, DEFAULT_NAMESPACE, KubeConfig, Origin, PemSource, TokenFile,
    validate_server,
};
use crate::http::CaSource;
use crate::secret::Secret;

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawFile {
    current_context: Option<String>,
    clusters: Option<Vec<NamedCluster>>,
    contexts: Option<Vec<NamedContext>>,
    users: Option<Vec<NamedUser>>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Option<RawContext>,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    user: Option<RawUser>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawCluster {
    server: Option<String>,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    proxy_url: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct RawContext {
    cluster: Option<String>,
    user: Option<String>,
    namespace: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawUser {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    exec: Option<RawExec>,
    auth_provider: Option<serde_yaml_ng::Value>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct RawExec {
    command: Option<String>,
}

/// Reads, merges and resolves `paths`; `context` overrides `current-context`.
pub fn load(paths: &[PathBuf], context: Option<&str>) -> Result<KubeConfig, ConfigError> {
    let mut files = Vec::new();
    for path in paths.iter().filter(|p| !p.as_os_str().is_empty()) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // kubectl skips missing entries of KUBECONFIG; an explicit single file must exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && paths.len() > 1 => continue,
            Err(e) => {
                return Err(ConfigError::Read {
                    path: path.clone(),
                    detail: e.to_string(),
                });
            }
        };
        files.push((path.clone(), parse(path, &text)?));
    }
    if files.is_empty() {
        return Err(ConfigError::NotFound {
            tried: paths.iter().map(|p| p.display().to_string()).collect(),
        });
    }
    resolve(&files, context)
}

fn parse(path: &Path, text: &str) -> Result<RawFile, ConfigError> {
    if text.trim().is_empty() {
        return Ok(RawFile::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Finds the first entry named `name` across files, with the file it came from.
fn find<'a, T>(
    files: &'a [(PathBuf, RawFile)],
    name: &str,
    list: impl Fn(&'a RawFile) -> Option<&'a Vec<T>>,
    entry_name: impl Fn(&T) -> &str,
) -> Option<(&'a Path, &'a T)> {
    files.iter().find_map(|(path, file)| {
        list(file)?
            .iter()
            .find(|entry| entry_name(entry) == name)
            .map(|entry| (path.as_path(), entry))
    })
}

fn resolve(files: &[(PathBuf, RawFile)], context: Option<&str>) -> Result<KubeConfig, ConfigError> {
    let first = files[0].0.clone();
    let err = |path: &Path, detail: String| ConfigError::Kubeconfig {
        path: path.to_path_buf(),
        detail,
    };
    let context_name = match context {
        Some(name) => name.to_string(),
        None => files
            .iter()
            .find_map(|(_, f)| f.current_context.clone().filter(|c| !c.is_empty()))
            .ok_or_else(|| {
                err(
                    &first,
                    "no current-context is set; run `kubectl config use-context NAME` or pass a \
                     context"
                        .into(),
                )
            })?,
    };
    let (context_path, ctx) = find(files, &context_name, |f| f.contexts.as_ref(), |c| &c.name)
        .ok_or_else(|| err(&first, format!("context {context_name:?} is not defined")))?;
    let ctx = ctx.context.clone().unwrap_or_default();
    let cluster_name = ctx.cluster.clone().unwrap_or_default();
    let (cluster_path, cluster) = find(files, &cluster_name, |f| f.clusters.as_ref(), |c| &c.name)
        .ok_or_else(|| {
            err(
                context_path,
                format!(
                    "context {context_name:?} names cluster {cluster_name:?}, which is not defined"
                ),
            )
        })?;
    let cluster = cluster.cluster.clone().unwrap_or_default();
    let user = match ctx.user.as_deref().filter(|u| !u.is_empty()) {
        Some(user_name) => {
            let (user_path, user) = find(files, user_name, |f| f.users.as_ref(), |u| &u.name)
                .ok_or_else(|| {
                    err(
                        context_path,
                        format!("context {context_name:?} names user {user_name:?}, which is not defined"),
                    )
                })?;
            Some((user_path, user_name, user.user.clone().unwrap_or_default()))
        }
        None => None,
    };

    let server = cluster
        .server
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            err(
                cluster_path,
                format!("cluster {cluster_name:?} has no server"),
            )
        })?;
    let server = validate_server(server, &format!("server of cluster {cluster_name:?}"))?;
    if cluster.tls_server_name.is_some() {
        return Err(err(
            cluster_path,
            format!(
                "cluster {cluster_name:?} sets tls-server-name, which scalr-agent does not \
                 support; point server at a name the certificate covers"
            ),
        ));
    }
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) if !data.trim().is_empty() => Some(CaSource::Pem(decode_base64(
            data,
            &format!("certificate-authority-data of cluster {cluster_name:?}"),
        )?)),
        (_, Some(file)) if !file.is_empty() => {
            Some(CaSource::File(relative_to(cluster_path, file)))
        }
        _ => None,
    };
    let (auth, client_cert) = match user {
        Some((path, name, user)) => resolve_user(path, name, &user)?,
        None => (Auth::None, None),
    };
    Ok(KubeConfig {
        server,
        namespace: ctx
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        auth,
        ca,
        client_cert,
        insecure_skip_verify: cluster.insecure_skip_tls_verify,
        proxy_url: cluster.proxy_url.filter(|p| !p.is_empty()),
        origin: Origin::Kubeconfig {
            path: context_path.to_path_buf(),
            context: context_name,
        },
    })
}

fn resolve_user(
    path: &Path,
    name: &str,
    user: &RawUser,
) -> Result<(Auth, Option<ClientCert>), ConfigError> {
    let err = |detail: String| ConfigError::Kubeconfig {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(exec) = &user.exec {
        let command = exec.command.as_deref().unwrap_or("?");
        return Err(err(format!(
            "user {name:?} authenticates through the exec plugin {command:?}, which scalr-agent \
             does not run; give the user a token, tokenFile or client certificate (for example a \
             service-account token from `kubectl create token`), or run in-cluster"
        )));
    }
    if user.auth_provider.is_some() {
        return Err(err(format!(
            "user {name:?} uses an auth-provider, which scalr-agent does not support; give the user \
             a token, tokenFile or client certificate, or run in-cluster"
        )));
    }
    // client-go: a token file, when set, takes precedence over an inline token.
    let auth = match (&user.token_file, &user.token) {
        (Some(file), _) if !file.is_empty() => {
            Auth::TokenFile(TokenFile::new(relative_to(path, file)))
        }
        (_, Some(token)) if !token.is_empty() => Auth::Token(Secret::new(token.trim())),
        _ => Auth::None,
    };
    let pem = |data: &Option<String>,
               file: &Option<String>,
               what: &str|
     -> Result<Option<PemSource>, ConfigError> {
        match (data, file) {
            (Some(data), _) if !data.trim().is_empty() => Ok(Some(PemSource::Data(decode_base64(
                data,
                &format!("{what}-data of user {name:?}"),
            )?))),
            (_, Some(file)) if !file.is_empty() => {
                Ok(Some(PemSource::File(relative_to(path, file))))
            }
            _ => Ok(None),
        }
    };
    let cert = pem(
        &user.client_certificate_data,
        &user.client_certificate,
        "client-certificate",
    )?;
    let key = pem(&user.client_key_data, &user.client_key, "client-key")?;
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
        (None, None) => None,
        _ => {
            return Err(err(format!(
                "user {name:?} has a client certificate without its key (or a key without its \
                 certificate); give both"
            )));
        }
    };
    if matches!(auth, Auth::None) && client_cert.is_none() && user.username.is_some() {
        return Err(err(format!(
            "user {name:?} has only a username and password; Kubernetes removed basic \
             authentication in 1.19: give the user a token or client certificate"
        )));
    }
    let _ = &user.password;
    Ok((auth, client_cert))
}

fn relative_to(kubeconfig: &Path, file: &str) -> PathBuf {
    let file = Path::new(file);
    if file.is_absolute() {
        return file.to_path_buf();
    }
    kubeconfig
        .parent()
        .map(|dir| dir.join(file))
        .unwrap_or_else(|| file.to_path_buf())
}

fn decode_base64(data: &str, what: &str) -> Result<Vec<u8>, ConfigError> {
    let compact: String = data.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| ConfigError::Invalid {
            what: what.to_string(),
            detail: format!("not valid base64 ({e})"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CONTEXTS: &str = r#"
apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: dev-cluster
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
- name: prod-cluster
  cluster:
    server: https://prod.example:443/
    certificate-authority: certs/ca.pem
    insecure-skip-tls-verify: true
    proxy-url: http://proxy:3128
contexts:
- name: dev
  context: {cluster: dev-cluster, user: dev-user, namespace: ci}
- name: prod
  context: {cluster: prod-cluster, user: prod-user}
users:
- name: dev-user
  user:
    token: dev-token-unit-0123456789
- name: prod-user
  user:
    tokenFile: tokens/prod
    client-certificate: certs/client.pem
    client-key-data: a2V5
"#;

    fn resolve_text(text: &str, context: Option<&str>) -> Result<KubeConfig, ConfigError> {
        let path = PathBuf::from("/home/u/.kube/config");
        resolve(&[(path.clone(), parse(&path, text)?)], context)
    }

    #[test]
    fn current_context_is_used_by_default() {
        let config = resolve_text(TWO_CONTEXTS, None).expect("dev");
        assert_eq!(config.server, "https://127.0.0.1:6443");
        assert_eq!(config.namespace, "ci");
        assert_eq!(
            config.ca,
            Some(CaSource::Pem(b"-----BEGIN CERTIFICATE-----\n".to_vec()))
        );
        assert!(
            matches!(&config.auth, Auth::Token(t) if t.expose() == "dev-token-unit-0123456789")
        );
        assert!(!config.insecure_skip_verify);
        assert_eq!(
            config.origin,
            Origin::Kubeconfig {
                path: "/home/u/.kube/config".into(),
                context: "dev".into()
            }
        );
        assert!(
            !format!("{config:?}").contains("dev-token-unit"),
            "token leaked in Debug"
        );
    }

    #[test]
    fn explicit_context_files_relative_to_the_kubeconfig() {
        let config = resolve_text(TWO_CONTEXTS, Some("prod")).expect("prod");
        assert_eq!(config.server, "https://prod.example:443");
        assert_eq!(config.namespace, DEFAULT_NAMESPACE);
        assert_eq!(
            config.ca,
            Some(CaSource::File("/home/u/.kube/certs/ca.pem".into()))
        );
        assert!(config.insecure_skip_verify);
        assert_eq!(config.proxy_url.as_deref(), Some("http://proxy:3128"));
        assert!(
            matches!(&config.auth, Auth::TokenFile(f) if f.path() == Path::new("/home/u/.kube/tokens/prod"))
        );
        assert_eq!(
            config.client_cert,
            Some(ClientCert {
                cert: PemSource::File("/home/u/.kube/certs/client.pem".into()),
                key: PemSource::Data(b"key".to_vec()),
            })
        );
    }

    #[test]
    fn unusable_kubeconfigs_fail_with_a_reason() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                TWO_CONTEXTS,
                Some("staging"),
                "context \"staging\" is not defined",
            ),
            ("clusters: []\n", None, "no current-context"),
            (
                "current-context: c\ncontexts: [{name: c, context: {cluster: x}}]\n",
                None,
                "names cluster \"x\", which is not defined",
            ),
            (
                "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: 'https://h'}}]\n",
                None,
                "names user \"u\", which is not defined",
            ),
            (
                "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\nclusters: [{name: k, cluster: {}}]\n",
                None,
                "has no server",
            ),
            (
                "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: 'https://h'}}]\nusers: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: aws, args: [eks, get-token]}}}]\n",
                None,
                "exec plugin \"aws\", which scalr-agent does not run",
            ),
            (
                "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: 'https://h'}}]\nusers: [{name: u, user: {auth-provider: {name: gcp}}}]\n",
                None,
                "auth-provider",
            ),
            (
                "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: 'https://h'}}]\nusers: [{name: u, user: {username: a, password: b}}]\n",
                None,
                "basic authentication",
            ),
            (
                "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: 'https://h'}}]\nusers: [{name: u, user: {client-certificate: c.pem}}]\n",
                None,
                "without its key",
            ),
            (
                "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\nclusters: [{name: k, cluster: {server: 'https://h', certificate-authority-data: '!!'}}]\n",
                None,
                "not valid base64",
            ),
            ("current-context: [\n", None, "not valid"),
        ];
        for (text, context, want) in cases {
            let err = resolve_text(text, *context).expect_err(want);
            assert!(err.to_string().contains(want), "want {want:?} in: {err}");
        }
    }

    #[test]
    fn several_files_merge_first_definition_wins_and_missing_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(
            &a,
            "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: 'https://first'}}]\n",
        )
        .expect("a");
        std::fs::write(
            &b,
            "current-context: ignored\nclusters: [{name: k, cluster: {server: 'https://second'}}]\nusers: [{name: u, user: {tokenFile: tok}}]\n",
        )
        .expect("b");
        let missing = dir.path().join("missing");
        let config = load(&[missing.clone(), a, b.clone()], None).expect("merged");
        assert_eq!(config.server, "https://first");
        assert!(
            matches!(&config.auth, Auth::TokenFile(f) if f.path() == b.parent().expect("dir").join("tok"))
        );
        assert!(matches!(
            load(std::slice::from_ref(&missing), None),
            Err(ConfigError::Read { .. })
        ));
        assert!(matches!(
            load(&[missing.clone(), dir.path().join("also-missing")], None),
            Err(ConfigError::NotFound { .. })
        ));
    }
}
