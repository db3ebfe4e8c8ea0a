//! The CLI configuration and backend override texts; real Terraform reads them in
//! `tests/it/worker_parts`.

use std::path::Path;

use super::*;

fn mirror(url: &str, token: Option<&str>, include: &[&str]) -> NetworkMirror {
    NetworkMirror {
        url: url.into(),
        token: token.map(Secret::new),
        include: include.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn full_cli_config() {
    let mirrors = [
        mirror(
            "https://mirror.example.com/providers/",
            Some("tok-en-one"),
            &["registry.terraform.io/hashicorp/*"],
        ),
        mirror(
            "https://other.example:8443/p/",
            Some("tok-en-two"),
            &["example.com/*/*", "registry.terraform.io/hashicorp/*"],
        ),
    ];
    let text = cli_config(&CliConfig {
        filesystem_mirror: Some(Path::new("/cache/providers")),
        network_mirrors: &mirrors,
        direct: true,
        plugin_cache_dir: Some(Path::new("/data/run-1/plugin-cache")),
        tokens: TokenPlacement::Env,
    });
    let want = r#"# Written by scalr-agent for this run.
disable_checkpoint = true
plugin_cache_dir = "/data/run-1/plugin-cache"

provider_installation {
  filesystem_mirror {
    path = "/cache/providers"
  }
  network_mirror {
    url = "https://mirror.example.com/providers/"
    include = ["registry.terraform.io/hashicorp/*"]
  }
  network_mirror {
    url = "https://other.example:8443/p/"
    include = ["example.com/*/*", "registry.terraform.io/hashicorp/*"]
  }
  direct {
    exclude = ["registry.terraform.io/hashicorp/*", "example.com/*/*"]
  }
}

credentials "other.example:8443" {
  token = "tok-en-two"
}
"#;
    assert_eq!(text, want);
    assert!(
        !text.contains("tok-en-one"),
        "an env-placed token stays out of the file"
    );
    let env: Vec<(String, String)> = mirror_token_env(&mirrors)
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_string()))
        .collect();
    assert_eq!(
        env,
        [(
            "TF_TOKEN_mirror_example_com".to_string(),
            "tok-en-one".to_string()
        )]
    );

    let file = cli_config(&CliConfig {
        filesystem_mirror: None,
        network_mirrors: &mirrors,
        direct: true,
        plugin_cache_dir: None,
        tokens: TokenPlacement::File,
    });
    assert!(file.contains("credentials \"mirror.example.com\" {\n  token = \"tok-en-one\""));
    assert!(!file.contains("plugin_cache_dir") && !file.contains("filesystem_mirror"));
}

#[test]
fn direct_is_left_out_when_a_mirror_covers_everything_or_when_disabled() {
    let all = [mirror("https://m.example/", None, &[])];
    let text = cli_config(&CliConfig {
        filesystem_mirror: None,
        network_mirrors: &all,
        direct: true,
        plugin_cache_dir: None,
        tokens: TokenPlacement::Env,
    });
    assert!(!text.contains("direct"), "{text}");
    let text = cli_config(&CliConfig {
        filesystem_mirror: Some(Path::new("/c")),
        network_mirrors: &[],
        direct: false,
        plugin_cache_dir: None,
        tokens: TokenPlacement::Env,
    });
    assert!(!text.contains("direct"), "{text}");
    let text = cli_config(&CliConfig {
        direct: true,
        ..CliConfig {
            filesystem_mirror: None,
            network_mirrors: &[],
            direct: false,
            plugin_cache_dir: None,
            tokens: TokenPlacement::Env,
        }
    });
    assert!(text.contains("  direct {}\n"), "{text}");
}

#[test]
fn hcl_strings_and_token_names() {
    let strings = [
        ("plain", r#""plain""#),
        ("a\"b\\c", r#""a\"b\\c""#),
        ("line\nnext", r#""line\nnext""#),
        ("${var.x} %{if} $x %x", r#""$${var.x} %%{if} $x %x""#),
        ("\u{1}", r#""\u0001""#),
    ];
    for (raw, want) in strings {
        assert_eq!(hcl_string(raw), want, "{raw:?}");
    }
    let names = [
        ("mirror.example.com", Some("TF_TOKEN_mirror_example_com")),
        ("my-mirror.io", Some("TF_TOKEN_my__mirror_io")),
        ("host:8443", None),
        ("bücher.example", None),
        ("", None),
    ];
    for (host, want) in names {
        assert_eq!(token_env_name(host).as_deref(), want, "{host}");
    }
}

#[test]
fn backend_override_names_the_endpoints_and_no_secret() {
    let text = backend_override(&HttpBackend {
        address: "https://acme.scalr.io/api/iacp/v3/runs/run-1/state",
        lock_address: "https://acme.scalr.io/api/iacp/v3/runs/run-1/state/lock",
        unlock_address: "https://acme.scalr.io/api/iacp/v3/runs/run-1/state/lock",
        username: "run-1",
    });
    let want = r#"# Written by scalr-agent: state lives on the platform for this run.
terraform {
  backend "http" {
    address        = "https://acme.scalr.io/api/iacp/v3/runs/run-1/state"
    lock_address   = "https://acme.scalr.io/api/iacp/v3/runs/run-1/state/lock"
    unlock_address = "https://acme.scalr.io/api/iacp/v3/runs/run-1/state/lock"
    lock_method    = "LOCK"
    unlock_method  = "UNLOCK"
    update_method  = "POST"
    username       = "run-1"
  }
}
"#;
    assert_eq!(text, want);
    assert!(BACKEND_OVERRIDE_FILE.ends_with("_override.tf"));
    let env = backend_env(&Secret::new("run-token-value"));
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].0, "TF_HTTP_PASSWORD");
    assert_eq!(env[0].1.expose(), "run-token-value");
}
