//! Logging: `log` facade, `env_logger` backend, our own line format and redaction.
//!
//! Two formats (`SCALR_AGENT_LOG_FORMAT`): `plain` for people
//! (`2026-11-29T23:59:01.123Z INFO  scalr_agent::poller: acquired task task_id=t-1`) and `json` for
//! collectors (one object per line: `timestamp`, `level`, `logger`, `message`, then the record's
//! key-values as fields). Every line is passed through [`crate::secret::redact`] after formatting, so a
//! token is masked whoever logs it and whatever format is used. Output goes to stderr.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable single lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Names a JSON field may not take, so context cannot overwrite the fixed fields.
const RESERVED: [&str; 4] = ["timestamp", "level", "logger", "message"];

/// Installs the global logger. `debug` lowers our own modules to `Debug`; dependencies stay at `Info`
/// (HTTP and TLS libraries are noisy at debug and would print request details).
/// Calling it twice is harmless: the second call leaves the first logger in place.
pub fn init(format: LogFormat, debug: bool) {
    let own_level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(log::LevelFilter::Info)
        .filter_module("scalr_agent", own_level)
        .filter_module("scalr_agent_tests", own_level)
        .target(env_logger::Target::Stderr)
        .format(move |buf, record| {
            let line = format_record(format, record);
            buf.write_all(line.as_bytes())
        });
    let _ = builder.try_init();
}

/// Formats one record as a complete, redacted line (with the trailing newline).
pub fn format_record(format: LogFormat, record: &log::Record<'_>) -> String {
    let timestamp = format!("{:.3}", jiff::Timestamp::now());
    let message = record.args().to_string();
    let mut fields = Fields(Vec::new());
    let _ = record.key_values().visit(&mut fields);
    let line = match format {
        LogFormat::Plain => {
            let mut line = format!(
                "{timestamp} {:<5} {}: {message}",
                record.level(),
                record.target()
            );
            for (key, value) in &fields.0 {
                line.push(' ');
                line.push_str(key);
                line.push('=');
                if value.contains(char::is_whitespace) || value.is_empty() {
                    line.push_str(&format!("{value:?}"));
                } else {
                    line.push_str(value);
                }
            }
            line
        }
        LogFormat::Json => {
            let mut object = serde_json::Map::new();
            object.insert("timestamp".into(), timestamp.into());
            object.insert("level".into(), record.level().as_str().into());
            object.insert("logger".into(), record.target().into());
            // Redact before serialising: escaping could otherwise split a secret.
            object.insert(
                "message".into(),
                crate::secret::redact(&message).into_owned().into(),
            );
            for (key, value) in fields.0 {
                let key = if RESERVED.contains(&key.as_str()) {
                    format!("field_{key}")
                } else {
                    key
                };
                object.insert(key, crate::secret::redact(&value).into_owned().into());
            }
            serde_json::Value::Object(object).to_string()
        }
    };
    let mut line = crate::secret::redact(&line).into_owned();
    line.push('\n');
    line
}

struct Fields(Vec<(String, String)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.push((key.as_str().to_string(), value.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: LogFormat, message: &str, kvs: &[(&str, &str)]) -> String {
        let kvs: Vec<(&str, Value<'_>)> = kvs.iter().map(|(k, v)| (*k, Value::from(*v))).collect();
        let args = format_args!("{message}");
        let record = log::Record::builder()
            .args(args)
            .level(log::Level::Info)
            .target("scalr_agent::unit")
            .key_values(&kvs)
            .build();
        format_record(format, &record)
    }

    #[test]
    fn plain_line_has_time_level_logger_message_and_context() {
        let line = render(LogFormat::Plain, "task acquired", &[("task_id", "t-1")]);
        assert!(
            line.ends_with(" INFO  scalr_agent::unit: task acquired task_id=t-1\n"),
            "{line}"
        );
        assert!(line.starts_with("20"), "{line}");
    }

    #[test]
    fn json_line_is_one_object_with_fields() {
        let line = render(
            LogFormat::Json,
            "hello \"world\"",
            &[("job", "j-1"), ("level", "x")],
        );
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["logger"], "scalr_agent::unit");
        assert_eq!(v["message"], "hello \"world\"");
        assert_eq!(v["job"], "j-1");
        assert_eq!(v["field_level"], "x");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn secrets_are_masked_in_both_formats_in_message_and_context() {
        let secret = crate::secret::Secret::new("s3cr3t-\"quoted\"-logging-unit");
        let text = format!("token is {}", secret.expose());
        for format in [LogFormat::Plain, LogFormat::Json] {
            let line = render(format, &text, &[("header", secret.expose())]);
            assert!(!line.contains("s3cr3t"), "{format:?} leaked: {line}");
            assert!(line.contains("***"), "{line}");
        }
    }
}
