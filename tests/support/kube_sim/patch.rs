//! Patch application: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch
//! as kubectl sends it (merge keys for the lists of our resources, `$patch`, `$retainKeys`,
//! `$setElementOrder/…`, `$deleteFromPrimitiveList/…`). Pure functions on `serde_json::Value`.

use serde_json::{Map, Value};

/// JSON merge patch: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer: {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("doc is missing path: \"{path}\""))?,
            Value::Array(a) => {
                let i: usize = t
                    .parse()
                    .map_err(|_| format!("invalid array index in path: \"{path}\""))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("doc is missing path: \"{path}\""))?
            }
            _ => return Err(format!("doc is missing path: \"{path}\"")),
        };
    }
    Ok(cur)
}

fn get_ptr<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, String> {
    let mut cur = doc;
    for t in split_pointer(path)? {
        cur = match cur {
            Value::Object(m) => m.get(&t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("doc is missing path: \"{path}\""))?;
    }
    Ok(cur)
}

fn remove_ptr(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = split_pointer(path)?;
    let (last, parents) = tokens
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_string())?;
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("unable to remove nonexistent key: {last}: missing value")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index in path: \"{path}\""))?;
            if i >= a.len() {
                return Err(format!("unable to remove index {i}: out of bounds"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("doc is missing path: \"{path}\"")),
    }
}

fn add_ptr(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), String> {
    let tokens = split_pointer(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(format!(
                    "replace operation does not apply: doc is missing key: {path}"
                ));
            }
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index in path: \"{path}\""))?;
            if replace {
                let slot = a.get_mut(i).ok_or_else(|| {
                    format!("replace operation does not apply: doc is missing path: {path}")
                })?;
                *slot = value;
            } else {
                if i > a.len() {
                    return Err(format!(
                        "add operation does not apply: index {i} out of bounds"
                    ));
                }
                a.insert(i, value);
            }
            Ok(())
        }
        _ => Err(format!("doc is missing path: \"{path}\"")),
    }
}

/// JSON patch (RFC 6902). The error is the message the server puts in its 422.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or_else(|| "json patch must be an array of operations".to_string())?;
    let mut doc = target.clone();
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or("missing path in json patch operation")?;
        let value = || op.get("value").cloned().ok_or("missing value");
        match op["op"].as_str().unwrap_or("") {
            "add" => add_ptr(&mut doc, path, value()?, false)?,
            "replace" => add_ptr(&mut doc, path, value()?, true)?,
            "remove" => {
                remove_ptr(&mut doc, path)?;
            }
            "move" => {
                let from = op["from"].as_str().ok_or("missing from")?;
                let v = remove_ptr(&mut doc, from)?;
                add_ptr(&mut doc, path, v, false)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("missing from")?;
                let v = get_ptr(&doc, from)?.clone();
                add_ptr(&mut doc, path, v, false)?;
            }
            "test" => {
                if get_ptr(&doc, path)? != &value()? {
                    return Err(format!("testing value {path} failed: test failed"));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    Ok(doc)
}

/// The merge key of list field `field` under a strategic merge, or `None` when the list is replaced.
/// `Some("")` marks a merged list of scalars (finalizers).
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "ports" => match sample {
            Some(v) if v.get("containerPort").is_some() => Some("containerPort"),
            _ => Some("port"),
        },
        "hostAliases" => Some("ip"),
        "ownerReferences" => Some("uid"),
        "conditions" => Some("type"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "finalizers" => Some(""),
        _ => None,
    }
}

/// Strategic merge patch for built-in types. The error is the server's message.
pub fn strategic_merge(target: &Value, patch: &Value) -> Result<Value, String> {
    smp_value(target, patch)
}

fn smp_value(target: &Value, patch: &Value) -> Result<Value, String> {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            smp_map(t, p).map(|m| m.map_or(Value::Null, Value::Object))
        }
        (_, Value::Object(p)) => {
            smp_map(&Map::new(), p).map(|m| m.map_or(Value::Null, Value::Object))
        }
        _ => Ok(patch.clone()),
    }
}

/// Merges a map; `None` means the `$patch: delete` directive removed it.
fn smp_map(
    target: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut out = patch.clone();
            out.remove("$patch");
            return Ok(Some(out));
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("Unknown patch type: {other}")),
    }
    let mut out = target.clone();
    if let Some(keep) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or("$retainKeys must be a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), v.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let drop = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|x| !drop.contains(x));
            }
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let current = out.get(k);
        let merged = match (current, v) {
            (Some(Value::Array(cur)), Value::Array(items)) => {
                match merge_key(k, items.first().or(cur.first())) {
                    Some(key) => smp_list(cur, items, key)?,
                    None => Value::Array(strip_directives(items)),
                }
            }
            (_, Value::Array(items)) => Value::Array(strip_directives(items)),
            (Some(cur), Value::Object(_)) => smp_value(cur, v)?,
            (None, Value::Object(_)) => smp_value(&Value::Null, v)?,
            _ => v.clone(),
        };
        if merged.is_null() && v.is_object() {
            out.remove(k);
        } else {
            out.insert(k.clone(), merged);
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (out.get_mut(&field), order.as_array()) {
            reorder(list, order);
        }
    }
    Ok(Some(out))
}

/// Drops `$patch` entries from a list that is replaced wholesale.
fn strip_directives(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .filter(|i| i.get("$patch").is_none())
        .cloned()
        .collect()
}

fn smp_list(current: &[Value], items: &[Value], key: &str) -> Result<Value, String> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(Value::Array(strip_directives(items)));
    }
    let mut out: Vec<Value> = current.to_vec();
    if key.is_empty() {
        for i in items {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    for item in items {
        let Some(k) = item.get(key) else {
            return Err(format!(
                "map: {item} does not contain declared merge key: {key}"
            ));
        };
        let pos = out.iter().position(|o| o.get(key) == Some(k));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                out.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => {
                let merged = smp_value(&out[p], item)?;
                out[p] = merged;
            }
            None => out.push(smp_value(&Value::Null, item)?),
        }
    }
    Ok(Value::Array(out))
}

/// Puts elements named in `order` first, in that order; the others keep their relative order after.
fn reorder(list: &mut Vec<Value>, order: &[Value]) {
    let key_of = |v: &Value| -> Value {
        match v {
            Value::Object(m) => m
                .iter()
                .find(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "name"
                            | "mountPath"
                            | "containerPort"
                            | "port"
                            | "uid"
                            | "type"
                            | "ip"
                            | "devicePath"
                            | "topologyKey"
                    )
                })
                .map(|(_, v)| v.clone())
                .unwrap_or(Value::Null),
            other => other.clone(),
        }
    };
    let mut rest = std::mem::take(list);
    for o in order {
        let k = key_of(o);
        if let Some(p) = rest.iter().position(|v| key_of(v) == k) {
            list.push(rest.remove(p));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": [1, 2]}), json!({"a": [3]}), json!({"a": [3]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (json!(["a"]), json!({"a": "b"}), json!({"a": "b"})),
        ];
        for (target, patch, want) in cases {
            assert_eq!(merge_patch(&target, &patch), want, "{patch}");
        }
    }

    #[test]
    fn json_patch_operations() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        let ops = json!([
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "remove", "path": "/list/0"},
            {"op": "test", "path": "/list/0", "value": 2},
            {"op": "copy", "from": "/list", "path": "/copy"},
            {"op": "move", "from": "/copy", "path": "/moved"}
        ]);
        let out = json_patch(&doc, &ops).expect("applies");
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "9", "b/c": "2"}}, "list": [2, 3], "moved": [2, 3]})
        );
        assert!(
            json_patch(
                &doc,
                &json!([{"op": "test", "path": "/list/0", "value": 5}])
            )
            .is_err()
        );
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(
            json_patch(
                &doc,
                &json!([{"op": "replace", "path": "/nope", "value": 1}])
            )
            .is_err()
        );
    }

    #[test]
    fn strategic_merge_merges_keyed_lists_and_honours_directives() {
        let live = json!({
            "metadata": {"labels": {"app": "x"}, "finalizers": ["a"]},
            "spec": {"template": {"spec": {
                "containers": [
                    {"name": "main", "image": "old", "env": [{"name": "A", "value": "1"}]},
                    {"name": "side", "image": "s"}],
                "tolerations": [{"key": "t1"}]}}}});
        let patch = json!({
            "metadata": {"labels": {"tier": "y"}, "finalizers": ["b"]},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "side"}, {"name": "main"}],
                "containers": [
                    {"name": "main", "image": "new", "env": [{"name": "B", "value": "2"}]},
                    {"name": "side", "$patch": "delete"}],
                "tolerations": [{"key": "t2"}]}}}});
        let out = strategic_merge(&live, &patch).expect("applies");
        assert_eq!(out["metadata"]["labels"], json!({"app": "x", "tier": "y"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().map(Vec::len), Some(1));
        assert_eq!(containers[0]["image"], "new");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "t2"}])
        );

        let out = strategic_merge(
            &live,
            &json!({"metadata": {"labels": {"app": null}},
            "spec": {"$retainKeys": [], "template": null},
            "$deleteFromPrimitiveList/x": [1]}),
        )
        .expect("applies");
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(out["spec"], json!({}));
        let replaced = strategic_merge(&live, &json!({"spec": {"$patch": "replace", "a": 1}}))
            .expect("applies");
        assert_eq!(replaced["spec"], json!({"a": 1}));
        let reordered = strategic_merge(
            &live,
            &json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "main"}]}}}}),
        )
        .expect("applies");
        assert_eq!(
            reordered["spec"]["template"]["spec"]["containers"][0]["name"],
            "side"
        );
    }
}
