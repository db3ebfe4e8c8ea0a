//! Real tools for tests — helm, kubectl, terraform — installed by `scripts/install-tools.sh` (cached,
//! so only the first run downloads) and run with their own HOME, never the user's configuration.
//! Called from any test thread; the install runs once per test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a tool in `target/tools/bin` (or `$SCALR_AGENT_TOOLS_DIR/bin`), installing them first.
pub fn tool(name: &str) -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/install-tools.sh"))
            .output()
            .expect("run scripts/install-tools.sh");
        assert!(
            out.status.success(),
            "scripts/install-tools.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::env::var_os("SCALR_AGENT_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/tools"))
            .join("bin")
    })
    .join(name)
}

/// A private HOME for tools that write configuration or caches there.
fn tool_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        // Integration tests get CARGO_TARGET_TMPDIR; examples (which include this module too) do not.
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/tmp"));
        let home = base.join("tool-home");
        std::fs::create_dir_all(&home).expect("create the tools' HOME under the target directory");
        home
    })
}

/// `helm`, isolated from the user's repositories, plugins and caches.
pub fn helm() -> Command {
    let home = tool_home();
    let mut cmd = Command::new(tool("helm"));
    cmd.env("HOME", home)
        .env("HELM_CONFIG_HOME", home.join("helm/config"))
        .env("HELM_CACHE_HOME", home.join("helm/cache"))
        .env("HELM_DATA_HOME", home.join("helm/data"))
        .env_remove("KUBECONFIG")
        .env_remove("HELM_NAMESPACE")
        .current_dir(repo_root());
    cmd
}

/// `kubectl` with no kubeconfig: only client-side commands work until a test points it at a server.
pub fn kubectl() -> Command {
    let home = tool_home();
    let mut cmd = Command::new(tool("kubectl"));
    cmd.env("HOME", home)
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .current_dir(repo_root());
    cmd
}
