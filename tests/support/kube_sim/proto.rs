//! Decoding of the Kubernetes protobuf request bodies that real clients send through their typed
//! clientsets (`kubectl auth can-i`, `kubectl create configmap|secret|namespace|serviceaccount`,
//! helm's release Secrets, typed deletes): the `k8s\0` envelope around `runtime.Unknown`, and the
//! few messages those are, by field number (from k8s.io/api and apimachinery `generated.proto`),
//! into the JSON the rest of the simulator stores. Responses stay JSON, which these clients accept.
//! Pure.

use base64::Engine;
use serde_json::{Map, Value, json};

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bytes,
    Bool,
    Int,
    Time,
    Msg(&'static [Field]),
    RepStr,
    RepMsg(&'static [Field]),
    MapStr,
    MapBytes,
}

struct Field(u64, &'static str, Kind);

use Kind::*;

const OWNER_REFERENCE: &[Field] = &[
    Field(5, "apiVersion", Str),
    Field(1, "kind", Str),
    Field(3, "name", Str),
    Field(4, "uid", Str),
    Field(6, "controller", Bool),
    Field(7, "blockOwnerDeletion", Bool),
];
const OBJECT_META: &[Field] = &[
    Field(1, "name", Str),
    Field(2, "generateName", Str),
    Field(3, "namespace", Str),
    Field(5, "uid", Str),
    Field(6, "resourceVersion", Str),
    Field(7, "generation", Int),
    Field(8, "creationTimestamp", Time),
    Field(9, "deletionTimestamp", Time),
    Field(10, "deletionGracePeriodSeconds", Int),
    Field(11, "labels", MapStr),
    Field(12, "annotations", MapStr),
    Field(13, "ownerReferences", RepMsg(OWNER_REFERENCE)),
    Field(14, "finalizers", RepStr),
];
const CONFIG_MAP: &[Field] = &[
    Field(1, "metadata", Msg(OBJECT_META)),
    Field(4, "immutable", Bool),
    Field(2, "data", MapStr),
    Field(3, "binaryData", MapBytes),
];
const SECRET: &[Field] = &[
    Field(1, "metadata", Msg(OBJECT_META)),
    Field(5, "immutable", Bool),
    Field(2, "data", MapBytes),
    Field(4, "stringData", MapStr),
    Field(3, "type", Str),
];
const NAMESPACE: &[Field] = &[
    Field(1, "metadata", Msg(OBJECT_META)),
    Field(2, "spec", Msg(&[Field(1, "finalizers", RepStr)])),
];
const OBJECT_REFERENCE: &[Field] = &[
    Field(1, "kind", Str),
    Field(2, "namespace", Str),
    Field(3, "name", Str),
    Field(4, "uid", Str),
    Field(5, "apiVersion", Str),
    Field(6, "resourceVersion", Str),
    Field(7, "fieldPath", Str),
];
const SERVICE_ACCOUNT: &[Field] = &[
    Field(1, "metadata", Msg(OBJECT_META)),
    Field(2, "secrets", RepMsg(OBJECT_REFERENCE)),
    Field(3, "imagePullSecrets", RepMsg(&[Field(1, "name", Str)])),
    Field(4, "automountServiceAccountToken", Bool),
];
const RESOURCE_ATTRIBUTES: &[Field] = &[
    Field(1, "namespace", Str),
    Field(2, "verb", Str),
    Field(3, "group", Str),
    Field(4, "version", Str),
    Field(5, "resource", Str),
    Field(6, "subresource", Str),
    Field(7, "name", Str),
];
const ACCESS_REVIEW: &[Field] = &[
    Field(1, "metadata", Msg(OBJECT_META)),
    Field(
        2,
        "spec",
        Msg(&[
            Field(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
            Field(
                2,
                "nonResourceAttributes",
                Msg(&[Field(1, "path", Str), Field(2, "verb", Str)]),
            ),
        ]),
    ),
];
const RULES_REVIEW: &[Field] = &[
    Field(1, "metadata", Msg(OBJECT_META)),
    Field(2, "spec", Msg(&[Field(1, "namespace", Str)])),
];
const SELF_REVIEW: &[Field] = &[Field(1, "metadata", Msg(OBJECT_META))];
const DELETE_OPTIONS: &[Field] = &[
    Field(1, "gracePeriodSeconds", Int),
    Field(
        2,
        "preconditions",
        Msg(&[Field(1, "uid", Str), Field(2, "resourceVersion", Str)]),
    ),
    Field(3, "orphanDependents", Bool),
    Field(4, "propagationPolicy", Str),
    Field(5, "dryRun", RepStr),
];

fn schema(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (api_version, kind) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => RULES_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => SELF_REVIEW,
        (_, "DeleteOptions") => DELETE_OPTIONS,
        _ => return None,
    })
}

/// One wire value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

/// Splits a message into `(field number, value)` pairs.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let value = match tag & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                let bytes = &buf[pos..end];
                pos = end;
                Wire::Bytes(bytes)
            }
            1 => {
                pos += 8;
                Wire::Varint(0)
            }
            5 => {
                pos += 4;
                Wire::Varint(0)
            }
            t => return Err(format!("unsupported wire type {t}")),
        };
        out.push((tag >> 3, value));
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in a string field".to_string())
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), String> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, w) in fields(b)? {
        if let Wire::Bytes(x) = w {
            match n {
                1 => key = text(x)?,
                2 if bytes_value => {
                    value = json!(base64::engine::general_purpose::STANDARD.encode(x))
                }
                2 => value = json!(text(x)?),
                _ => {}
            }
        }
    }
    Ok((key, value))
}

fn time(b: &[u8]) -> Result<Value, String> {
    let mut seconds = 0i64;
    for (n, w) in fields(b)? {
        if let (1, Wire::Varint(v)) = (n, w) {
            seconds = v as i64;
        }
    }
    if seconds == 0 {
        return Ok(Value::Null);
    }
    let t = jiff::Timestamp::from_second(seconds).map_err(|e| e.to_string())?;
    Ok(json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

/// Decodes one message by `schema`; empty and zero values are left out, as Go's `omitempty` does.
fn message(buf: &[u8], schema: &[Field]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (n, w) in fields(buf)? {
        let Some(Field(_, name, kind)) = schema.iter().find(|f| f.0 == n) else {
            continue;
        };
        let name = name.to_string();
        match (*kind, w) {
            (Str, Wire::Bytes(b)) if !b.is_empty() => {
                out.insert(name, json!(text(b)?));
            }
            (Bytes, Wire::Bytes(b)) if !b.is_empty() => {
                out.insert(
                    name,
                    json!(base64::engine::general_purpose::STANDARD.encode(b)),
                );
            }
            (Bool, Wire::Varint(v)) if v != 0 => {
                out.insert(name, json!(true));
            }
            (Int, Wire::Varint(v)) if v != 0 => {
                out.insert(name, json!(v as i64));
            }
            (Time, Wire::Bytes(b)) => {
                let t = time(b)?;
                if !t.is_null() {
                    out.insert(name, t);
                }
            }
            (Msg(inner), Wire::Bytes(b)) => {
                let m = message(b, inner)?;
                if !m.is_empty() {
                    out.insert(name, Value::Object(m));
                }
            }
            (RepStr, Wire::Bytes(b)) => {
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(text(b)?));
                }
            }
            (RepMsg(inner), Wire::Bytes(b)) => {
                let m = message(b, inner)?;
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(Value::Object(m));
                }
            }
            (MapStr | MapBytes, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, matches!(kind, MapBytes))?;
                let map = out.entry(name).or_insert_with(|| json!({}));
                map[k] = v;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Decodes a protobuf request body into the JSON object it stands for. The error says why, for a
/// 400 or 415 answer.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let unknown = body
        .strip_prefix(b"k8s\0")
        .ok_or("the body does not start with the Kubernetes protobuf magic number")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, w) in fields(unknown)? {
        match (n, w) {
            (1, Wire::Bytes(tm)) => {
                for (m, v) in fields(tm)? {
                    if let Wire::Bytes(s) = v {
                        match m {
                            1 => api_version = text(s)?,
                            2 => kind = text(s)?,
                            _ => {}
                        }
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let schema = schema(&api_version, &kind).ok_or_else(|| {
        format!("the simulator decodes no protobuf {api_version} {kind}; send JSON")
    })?;
    let mut obj = message(raw, schema)?;
    if kind != "DeleteOptions" {
        obj.insert("apiVersion".into(), json!(api_version));
        obj.insert("kind".into(), json!(kind));
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes kubectl v1.37.1 sends for `kubectl auth can-i create jobs` in namespace default.
    const CAN_I: &[u8] =
        b"k8s\x00\x0a\x32\x0a\x17authorization.k8s.io/v1\x12\x17SelfSubjectAccessReview\
\x12\x44\x0a\x10\x0a\x00\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x26\x0a\x24\
\x0a\x07default\x12\x06create\x1a\x05batch\x22\x00\x2a\x04jobs\x32\x00\x3a\x00\
\x1a\x08\x08\x00\x12\x00\x1a\x00\x20\x00\x1a\x00\x22\x00";

    #[test]
    fn decodes_kubectls_access_review() {
        let v = decode(CAN_I).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"namespace": "default", "verb": "create",
                    "group": "batch", "resource": "jobs"}}})
        );
    }

    fn len_field(n: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_secrets_with_maps_and_bytes() {
        let mut meta = len_field(1, b"s");
        meta.extend(len_field(
            11,
            &[len_field(1, b"k"), len_field(2, b"v")].concat(),
        ));
        let mut secret = len_field(1, &meta);
        secret.extend(len_field(
            2,
            &[len_field(1, b"token"), len_field(2, b"\x00\x01")].concat(),
        ));
        secret.extend(len_field(3, b"Opaque"));
        let type_meta = [len_field(1, b"v1"), len_field(2, b"Secret")].concat();
        let body = [
            b"k8s\0".to_vec(),
            len_field(1, &type_meta),
            len_field(2, &secret),
        ]
        .concat();
        let v = decode(&body).expect("decodes");
        assert_eq!(v["metadata"], json!({"name": "s", "labels": {"k": "v"}}));
        assert_eq!(v["data"], json!({"token": "AAE="}));
        assert_eq!(v["type"], "Opaque");
        let pod = [
            b"k8s\0".to_vec(),
            len_field(1, &[len_field(1, b"v1"), len_field(2, b"Pod")].concat()),
        ]
        .concat();
        assert!(decode(&pod).is_err());
    }
}
