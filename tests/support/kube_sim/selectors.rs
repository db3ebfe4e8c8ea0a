//! Label selectors (equality and set-based, as the apiserver parses them) and field selectors (the
//! fields each resource supports; others are rejected with the server's message). Pure functions.

use serde_json::Value;

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (all requirements must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelReq>);

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),!h`; the error is the server's 400 message.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let part = part.trim();
            let bad = || format!("unable to parse requirement: found '{part}', expected: key");
            if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                if !valid_key(key) {
                    return Err(bad());
                }
                reqs.push(LabelReq::NotExists(key.into()));
                continue;
            }
            let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
            if words.len() == 2 {
                let key = words[0];
                let rest = words[1].trim();
                let (op, set) = if let Some(set) = rest.strip_prefix("notin") {
                    ("notin", set)
                } else if let Some(set) = rest.strip_prefix("in") {
                    ("in", set)
                } else {
                    ("", rest)
                };
                if !op.is_empty() {
                    let set = set.trim();
                    let inner = set
                        .strip_prefix('(')
                        .and_then(|x| x.strip_suffix(')'))
                        .ok_or_else(|| {
                            format!("unable to parse requirement: found '{set}', expected: '('")
                        })?;
                    let values: Vec<String> = inner
                        .split(',')
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                        .collect();
                    if !valid_key(key) || values.iter().any(|v| !valid_value(v)) {
                        return Err(bad());
                    }
                    reqs.push(if op == "in" {
                        LabelReq::In(key.into(), values)
                    } else {
                        LabelReq::NotIn(key.into(), values)
                    });
                    continue;
                }
            }
            let (key, value, negate) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, v, false)
            } else {
                let key = part.trim();
                if !valid_key(key) {
                    return Err(bad());
                }
                reqs.push(LabelReq::Exists(key.into()));
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if !valid_key(key) {
                return Err(bad());
            }
            if !valid_value(value) {
                return Err(format!(
                    "unable to parse requirement: values[0][{key}]: Invalid value: \"{value}\": \
                     a valid label must be an empty string or consist of alphanumeric characters, \
                     '-', '_' or '.', and must start and end with an alphanumeric character"
                ));
            }
            reqs.push(if negate {
                LabelReq::NotEq(key.into(), value.into())
            } else {
                LabelReq::Eq(key.into(), value.into())
            });
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `obj`'s labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// One field requirement: `(field, value, negated)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, String, bool)>);

impl FieldSelector {
    /// Parses `a=b,c!=d` and checks each field is one the resource supports.
    /// `supported` are the resource's extra fields; `metadata.name` and `metadata.namespace` always
    /// work. The error is the reason part of the server's message (see [`field_error_message`]).
    pub fn parse(s: &str, supported: &[String], custom: bool) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, negate) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, false)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            let known = field == "metadata.name"
                || field == "metadata.namespace"
                || supported.iter().any(|f| f == field);
            if !known {
                return Err(if custom {
                    let mut all = vec![
                        "\"metadata.name\"".to_string(),
                        "\"metadata.namespace\"".into(),
                    ];
                    all.extend(supported.iter().map(|f| format!("\"{f}\"")));
                    format!(
                        "\"{field}\" is not a known field selector: only {}",
                        all.join(", ")
                    )
                } else {
                    format!("field label not supported: {field}")
                });
            }
            reqs.push((field.to_string(), value.trim().to_string(), negate));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether `obj` satisfies every requirement (a missing field reads as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, value, negate)| (field_value(obj, field) == *value) != *negate)
    }

    /// The name an `metadata.name=x` requirement pins, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _, neg)| f == "metadata.name" && !neg)
            .map(|(_, v, _)| v.as_str())
    }
}

/// The server's whole 400 message for a bad field selector.
pub fn field_error_message(
    api_version: &str,
    plural: &str,
    labels: &str,
    fields: &str,
    why: &str,
) -> String {
    let gv = if api_version.contains('/') {
        api_version.to_string()
    } else {
        format!("/{api_version}")
    };
    format!(
        "Unable to find \"{gv}, Resource={plural}\" that match label selector \"{labels}\", \
         field selector \"{fields}\": {why}"
    )
}

/// The string value of a dotted field path (numbers and booleans rendered as the server does).
pub fn field_value(obj: &Value, path: &str) -> String {
    // `source` on Events is `source.component`.
    let path = if path == "source" {
        "source.component"
    } else {
        path
    };
    let mut v = obj;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null if path == "spec.hostNetwork" => "false".into(),
        Value::Null if path == "status.successful" => "0".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_parse_and_match() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app,tier=front", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app in (db, web)", true),
            ("app notin (web)", false),
            ("gone notin (x)", true),
            ("app in (web),tier=back", false),
            ("scalr.io/task-id!=x", true),
        ];
        for (sel, want) in cases {
            let parsed = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(parsed.matches(&obj), want, "{sel}");
        }
        for bad in ["a=b=c d", "app in web", "=x", "a=b c"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors_check_supported_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Running"}});
        let fields = vec!["status.phase".to_string()];
        let sel = FieldSelector::parse("status.phase=Running,metadata.name=p", &fields, false)
            .expect("supported");
        assert!(sel.matches(&pod));
        assert_eq!(sel.pinned_name(), Some("p"));
        let sel = FieldSelector::parse("status.phase!=Running", &fields, false).expect("supported");
        assert!(!sel.matches(&pod));
        assert_eq!(
            FieldSelector::parse("spec.foo=x", &fields, false)
                .err()
                .as_deref(),
            Some("field label not supported: spec.foo")
        );
        assert_eq!(
            FieldSelector::parse("spec.foo=x", &[], true)
                .err()
                .as_deref(),
            Some(
                "\"spec.foo\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
            )
        );
        assert_eq!(
            field_error_message(
                "v1",
                "pods",
                "",
                "spec.foo=x",
                "field label not supported: spec.foo"
            ),
            "Unable to find \"/v1, Resource=pods\" that match label selector \"\", field selector \
             \"spec.foo=x\": field label not supported: spec.foo"
        );
    }
}
