//! What this binary is: version, git commit, target triple and whether it is statically linked.
//! Printed by `scalr-agent version`, sent to the platform on registration, used in the user agent.

/// The crate version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from, when the build could see one.
pub fn commit() -> Option<&'static str> {
    let commit = env!("SCALR_AGENT_BUILD_COMMIT");
    (!commit.is_empty()).then_some(commit)
}

/// The target triple the binary was compiled for.
pub const TARGET: &str = env!("SCALR_AGENT_BUILD_TARGET");

/// Whether the C runtime is linked statically (glibc `crt-static` or musl).
pub const STATIC: bool = cfg!(target_feature = "crt-static");

/// The HTTP user agent: `scalr-agent/<version>`.
pub fn user_agent() -> String {
    format!("scalr-agent/{VERSION}")
}

/// The multi-line report of `scalr-agent version`.
pub fn report() -> String {
    format!(
        "scalr-agent {VERSION}\ncommit: {}\ntarget: {TARGET}\nstatic: {}\n",
        commit().unwrap_or("unknown"),
        if STATIC { "yes" } else { "no" }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn report_names_every_field() {
        let report = super::report();
        for field in ["scalr-agent ", "commit: ", "target: ", "static: "] {
            assert!(report.contains(field), "{field} missing in {report}");
        }
        assert!(super::user_agent().starts_with("scalr-agent/"));
    }
}
