//! A container's environment, resolved as the kubelet resolves it: the image's `ENV`, the
//! `kubernetes` service variables, `envFrom` (ConfigMaps and Secrets, with prefixes), then `env`
//! in order — literal values with `$(VAR)` expansion, `fieldRef`, `resourceFieldRef`,
//! `secretKeyRef`, `configMapKeyRef` — and `$(VAR)` expansion of command and args.
//!
//! Pure: Secrets and ConfigMaps come through [`Lookup`], so the kubelet thread passes API reads and
//! tests pass tables. A missing source is the kubelet's `CreateContainerConfigError`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

/// Where Secret and ConfigMap data comes from. `Ok(None)`: the object does not exist.
pub trait Lookup {
    fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String>;
    fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String>;
}

/// What the pod knows about where it runs.
#[derive(Clone, Debug)]
pub struct PodPlace {
    pub node_name: String,
    pub pod_ip: String,
    pub host_ip: String,
    /// `KUBERNETES_SERVICE_HOST`/`PORT`: the API server the pod would reach.
    pub api_host: String,
    pub api_port: u16,
}

/// Why the environment cannot be built (`CreateContainerConfigError`, with this message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError(pub String);

/// `$(VAR)` expansion as Kubernetes does it: defined names are replaced, unknown ones are left as
/// written, `$$` is a literal `$`.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut chars = input.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some((_, '$')) => {
                chars.next();
                out.push('$');
            }
            Some((j, '(')) => match input[j + 1..].find(')') {
                Some(k) => {
                    let name = &input[j + 1..j + 1 + k];
                    match vars(name) {
                        Some(v) => out.push_str(&v),
                        None => out.push_str(&input[i..j + 2 + k]),
                    }
                    let end = j + 1 + k;
                    while chars.peek().is_some_and(|(x, _)| *x <= end) {
                        chars.next();
                    }
                }
                None => {
                    out.push_str(&input[i..]);
                    return out;
                }
            },
            _ => out.push('$'),
        }
    }
    out
}

/// A Kubernetes quantity (`128Mi`, `1G`, `500m`, `1.5`) as a number of base units.
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * factor)
}

/// The limit (or request) of `resource` for `container`, in base units.
pub fn resource_of(container: &Container, kind: &str, resource: &str) -> Option<f64> {
    let r = container.resources.as_ref()?;
    let map = if kind == "limits" {
        &r.limits
    } else {
        &r.requests
    };
    quantity(&map.as_ref()?.get(resource)?.0)
}

fn field_value(pod: &Pod, place: &PodPlace, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = keyed("metadata.labels['", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", &meta.annotations) {
        return Ok(v);
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => place.node_name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => place.host_ip.clone(),
        "status.podIP" | "status.podIPs" => place.pod_ip.clone(),
        other => {
            return Err(EnvError(format!(
                "unsupported fieldRef {other:?} (the pod executor resolves metadata.name, \
                 namespace, uid, labels['k'], annotations['k'], spec.nodeName, \
                 spec.serviceAccountName, status.hostIP(s), status.podIP(s))"
            )));
        }
    })
}

fn resource_field(
    pod: &Pod,
    own: &Container,
    sel: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, EnvError> {
    let container = match &sel.container_name {
        Some(name) if !name.is_empty() => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| &c.name == name))
            .ok_or_else(|| EnvError(format!("container {name:?} not found")))?,
        _ => own,
    };
    let (kind, resource) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError(format!("unsupported resource {:?}", sel.resource)))?;
    // Without a limit the node's allocatable stands in: 8 CPUs, 16 GiB.
    let node = |r: &str| {
        if r == "cpu" {
            8.0
        } else {
            16.0 * 1024.0 * 1024.0 * 1024.0
        }
    };
    let value = resource_of(container, kind, resource).unwrap_or_else(|| {
        if kind == "limits" {
            node(resource)
        } else {
            0.0
        }
    });
    let divisor = sel
        .divisor
        .as_ref()
        .and_then(|d| quantity(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as u64))
}

/// The container's environment, in the order the process gets it.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    image_env: &[(String, String)],
    place: &PodPlace,
    lookup: &dyn Lookup,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = vec![
        ("KUBERNETES_SERVICE_HOST".into(), place.api_host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), place.api_port.to_string()),
    ];
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(n, _)| *n != k);
        vars.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match lookup.config_map(&r.name).map_err(EnvError)? {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match lookup.secret(&r.name).map_err(EnvError)? {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut vars, format!("{prefix}{k}"), lossy(&v));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (_, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    Some(field_value(pod, place, &f.field_path)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource_field(pod, container, r)?)
                } else if let Some(r) = &from.secret_key_ref {
                    match lookup.secret(&r.name).map_err(EnvError)? {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => Some(lossy(v)),
                            None if r.optional == Some(true) => None,
                            None => {
                                return Err(EnvError(format!(
                                    "couldn't find key {} in Secret {ns}/{}",
                                    r.key, r.name
                                )));
                            }
                        },
                        None if r.optional == Some(true) => None,
                        None => return Err(EnvError(format!("secret {:?} not found", r.name))),
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    match lookup.config_map(&r.name).map_err(EnvError)? {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if r.optional == Some(true) => None,
                            None => {
                                return Err(EnvError(format!(
                                    "couldn't find key {} in ConfigMap {ns}/{}",
                                    r.key, r.name
                                )));
                            }
                        },
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(EnvError(format!("configmap {:?} not found", r.name)));
                        }
                    }
                } else {
                    None
                }
            }
            (Some(v), None) => {
                let known = vars.clone();
                Some(expand(v, &|name| {
                    known
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                }))
            }
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            set(&mut vars, e.name.clone(), v);
        }
    }
    let mut out: Vec<(String, String)> = image_env
        .iter()
        .filter(|(n, _)| !vars.iter().any(|(m, _)| m == n))
        .cloned()
        .collect();
    out.extend(vars);
    Ok(out)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The argv a container runs: `command` (or the image's ENTRYPOINT) then `args` (or, when the
/// container sets neither, the image's CMD), with `$(VAR)` expanded from `env`.
pub fn argv(
    container: &Container,
    entrypoint: &[String],
    cmd: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let lookup = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let (command, args): (Vec<String>, Vec<String>) = match (&container.command, &container.args) {
        (Some(c), Some(a)) => (c.clone(), a.clone()),
        (Some(c), None) => (c.clone(), Vec::new()),
        (None, Some(a)) => (entrypoint.to_vec(), a.clone()),
        (None, None) => (entrypoint.to_vec(), cmd.to_vec()),
    };
    command
        .iter()
        .chain(args.iter())
        .map(|s| expand(s, &lookup))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Table;
    impl Lookup for Table {
        fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
            Ok((name == "s").then(|| BTreeMap::from([("token".into(), b"t0k".to_vec())])))
        }
        fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
            Ok((name == "c").then(|| BTreeMap::from([("LEVEL".into(), "debug".into())])))
        }
    }

    fn place() -> PodPlace {
        PodPlace {
            node_name: "node-1".into(),
            pod_ip: "127.0.0.1".into(),
            host_ip: "127.0.0.1".into(),
            api_host: "127.0.0.1".into(),
            api_port: 6443,
        }
    }

    fn pod(env: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ci", "uid": "u-1", "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "main", "image": "busybox", "env": env,
                "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"},
                    {"secretRef": {"name": "missing", "optional": true}}],
                "resources": {"limits": {"memory": "64Mi"}}}]},
        }))
        .expect("pod");
        let c = pod.spec.as_ref().expect("spec").containers[0].clone();
        (pod, c)
    }

    #[test]
    fn resolves_values_refs_and_expansion_in_order() {
        let (p, c) = pod(json!([
            {"name": "A", "value": "one"},
            {"name": "B", "value": "$(A)-$(NOPE)-$$(A)"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "PATH", "value": "/override"},
        ]));
        let image = [
            ("PATH".to_string(), "/bin".to_string()),
            ("LANG".to_string(), "C".to_string()),
        ];
        let env = resolve(&p, &c, &image, &place(), &Table).expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("B"), Some("one-$(NOPE)-$(A)"));
        assert_eq!(get("NAME"), Some("p"));
        assert_eq!(get("NODE"), Some("node-1"));
        assert_eq!(get("APP"), Some("a"));
        assert_eq!(get("TOKEN"), Some("t0k"));
        assert_eq!(get("MEM_MI"), Some("64"));
        assert_eq!(get("CM_LEVEL"), Some("debug"));
        assert_eq!(get("PATH"), Some("/override"));
        assert_eq!(get("LANG"), Some("C"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("6443"));
        let argv = argv(
            &c,
            &["/bin/sh".into()],
            &["-c".into(), "echo $(A)".into()],
            &env,
        );
        assert_eq!(argv, ["/bin/sh", "-c", "echo one"]);
    }

    #[test]
    fn missing_sources_are_config_errors() {
        let cases = [
            (
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]),
                Some("secret \"gone\" not found"),
            ),
            (
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
                Some("couldn't find key k in Secret ci/s"),
            ),
            (
                json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]),
                Some("couldn't find key k in ConfigMap ci/c"),
            ),
            (
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}}]),
                None,
            ),
        ];
        for (env, want) in cases {
            let (p, c) = pod(env.clone());
            let got = resolve(&p, &c, &[], &place(), &Table).err().map(|e| e.0);
            assert_eq!(got.as_deref(), want, "{env}");
        }
    }

    #[test]
    fn quantities() {
        for (q, want) in [
            ("128Mi", 134217728.0),
            ("1G", 1e9),
            ("500m", 0.5),
            ("2", 2.0),
            ("1.5Ki", 1536.0),
        ] {
            assert_eq!(quantity(q), Some(want), "{q}");
        }
        assert_eq!(quantity("12Q"), None);
    }
}
