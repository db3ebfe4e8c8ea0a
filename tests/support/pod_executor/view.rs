//! A container's view of the filesystem, and the textual rewriting that stands in for a mount
//! namespace: in-container paths (volume mounts, image paths) map to host paths.
//!
//! Container processes run on the host, so what they are given must name host paths: argv[0] is
//! resolved through the view (the image or a volume must hold it), and every argument, env value
//! and probe command has the in-container paths it mentions replaced by their host paths. A path is
//! recognised at a word boundary (start, whitespace, `=`, `:`, quotes, shell punctuation) and must
//! end at `/` or a boundary, so `/data` in `echo hi > /data/x` is rewritten while `/database` and
//! `http://h/data` are not. Mounts shadow image paths; the longest prefix wins. Pure.

use std::path::{Path, PathBuf};

/// One mapped prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// In-container absolute path, without a trailing `/`.
    pub container: String,
    /// Where it is on the host.
    pub host: PathBuf,
    /// From a volume mount (shadows image paths).
    pub mount: bool,
}

/// The container's mappings, longest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    mappings: Vec<Mapping>,
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-~/+@%".contains(c)
}

impl View {
    /// Builds a view from image paths and volume mounts (`(mountPath, host dir)`).
    pub fn new<'a>(
        image: impl IntoIterator<Item = (&'a String, &'a PathBuf)>,
        mounts: impl IntoIterator<Item = (String, PathBuf)>,
    ) -> View {
        let mut mappings: Vec<Mapping> = mounts
            .into_iter()
            .map(|(c, h)| Mapping {
                container: c.trim_end_matches('/').to_string(),
                host: h,
                mount: true,
            })
            .collect();
        for (c, h) in image {
            let c = c.trim_end_matches('/').to_string();
            // A mount at or above an image path hides it.
            let hidden = mappings.iter().any(|m| {
                m.mount && (c == m.container || c.starts_with(&format!("{}/", m.container)))
            });
            if !hidden {
                mappings.push(Mapping {
                    container: c,
                    host: h.clone(),
                    mount: false,
                });
            }
        }
        mappings.sort_by_key(|m| std::cmp::Reverse(m.container.len()));
        View { mappings }
    }

    /// The mappings, longest prefix first.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The host path of an absolute in-container path, if the view maps it.
    pub fn to_host(&self, container_path: &str) -> Option<PathBuf> {
        self.mappings.iter().find_map(|m| {
            if container_path == m.container {
                Some(m.host.clone())
            } else {
                let rest = container_path.strip_prefix(&m.container)?;
                let rest = rest.strip_prefix('/')?;
                Some(m.host.join(rest))
            }
        })
    }

    /// `text` with every in-container path it mentions replaced by its host path.
    pub fn rewrite(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        let bytes = text.as_bytes();
        while i < text.len() {
            let boundary = i == 0 || !text[..i].chars().next_back().is_some_and(path_char);
            if boundary && bytes[i] == b'/' {
                let found = self.mappings.iter().find(|m| {
                    text[i..].starts_with(&m.container) && {
                        let end = i + m.container.len();
                        end == text.len()
                            || text[end..]
                                .chars()
                                .next()
                                .is_some_and(|c| c == '/' || !path_char(c))
                    }
                });
                if let Some(m) = found {
                    out.push_str(&m.host.to_string_lossy());
                    i += m.container.len();
                    continue;
                }
            }
            let c = text[i..].chars().next().expect("i is a char boundary");
            out.push(c);
            i += c.len_utf8();
        }
        out
    }

    /// Resolves a command name as the runtime does: an absolute path through the view; a bare name
    /// through each entry of the container's `PATH` (in-container directories). The host path of an
    /// existing file, or `None` ("executable file not found").
    pub fn resolve_command(&self, name: &str, path_env: Option<&str>) -> Option<PathBuf> {
        let exists = |p: &Path| p.is_file();
        if name.contains('/') {
            let abs = if name.starts_with('/') {
                name.to_string()
            } else {
                return None;
            };
            return self.to_host(&abs).filter(|p| exists(p));
        }
        path_env
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .split(':')
            .filter(|d| d.starts_with('/'))
            .find_map(|dir| {
                self.to_host(&format!("{}/{name}", dir.trim_end_matches('/')))
                    .filter(|p| exists(p))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn view() -> View {
        let image: BTreeMap<String, PathBuf> = [
            (
                "/usr/local/bin/agent".to_string(),
                PathBuf::from("/host/bin/agent"),
            ),
            (
                "/opt/x/inner".to_string(),
                PathBuf::from("/host/image-inner"),
            ),
            ("/bin".to_string(), PathBuf::from("/bin")),
        ]
        .into_iter()
        .collect();
        View::new(
            &image,
            [
                ("/data".to_string(), PathBuf::from("/h/pod/data")),
                ("/opt/x".to_string(), PathBuf::from("/h/pod/x")),
                (
                    "/var/lib/a/cache/".to_string(),
                    PathBuf::from("/h/claims/c"),
                ),
            ],
        )
    }

    #[test]
    fn rewrites_paths_at_boundaries_only() {
        let v = view();
        let cases = [
            ("/data", "/h/pod/data"),
            ("/data/x/y", "/h/pod/data/x/y"),
            ("--file=/data/m", "--file=/h/pod/data/m"),
            (
                "echo hi > /data/x && cat '/data/x'",
                "echo hi > /h/pod/data/x && cat '/h/pod/data/x'",
            ),
            ("/database", "/database"),
            ("http://host/data/x", "http://host/data/x"),
            (
                "PATH=/usr/local/bin/agent:/bin",
                "PATH=/host/bin/agent:/bin",
            ),
            ("/var/lib/a/cache/p", "/h/claims/c/p"),
            ("/opt/x/inner/f", "/h/pod/x/inner/f"),
            ("naïve /data", "naïve /h/pod/data"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(v.rewrite(input), want, "{input:?}");
        }
    }

    #[test]
    fn mounts_shadow_image_paths_and_longest_prefix_wins() {
        let v = view();
        assert_eq!(
            v.to_host("/opt/x/inner"),
            Some(PathBuf::from("/h/pod/x/inner"))
        );
        assert_eq!(
            v.to_host("/usr/local/bin/agent"),
            Some(PathBuf::from("/host/bin/agent"))
        );
        assert_eq!(v.to_host("/usr/local/bin"), None);
        assert_eq!(v.to_host("/etc/hosts"), None);
    }

    #[test]
    fn commands_resolve_through_the_view_and_path() {
        let v = view();
        assert_eq!(
            v.resolve_command("sh", Some("/nowhere:/bin")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            v.resolve_command("/bin/sh", None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            v.resolve_command("/usr/bin/env", None),
            None,
            "not in the image"
        );
        assert_eq!(v.resolve_command("no-such-tool", Some("/bin")), None);
        assert_eq!(v.resolve_command("bin/sh", None), None);
    }
}
