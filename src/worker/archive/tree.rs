//! The pure part of extraction: checking member paths and resolving symbolic link targets against a
//! model of everything extracted so far.
//!
//! A member path must be relative, free of `..`, within the length and depth limits. A link target
//! is resolved from the link's own directory, following the links the archive created (at most
//! [`MAX_LINK_HOPS`]), and must never climb above the run directory. Because a later link can change
//! what an earlier target means (`a/l2 -> l1/..` followed by `a/l1 -> ..`), every link is resolved
//! again against the final tree when extraction ends.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Links followed while resolving one target before it counts as a loop (Linux's own limit).
pub const MAX_LINK_HOPS: u32 = 40;

/// A member path split into its components: never empty for a member that creates something.
pub(super) type Components = Vec<OsString>;

/// What a member path breaks.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PathProblem {
    Absolute,
    ParentTraversal,
    TooLong { limit: usize },
    TooDeep { limit: usize },
    NameTooLong,
}

/// Why a link target is refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LinkProblem {
    Absolute,
    Escapes,
    Loop,
    Empty,
}

/// Splits and checks a member path. `Ok(vec![])` means the run directory itself (`./`).
pub(super) fn check_path(
    raw: &[u8],
    max_bytes: usize,
    max_depth: usize,
) -> Result<Components, PathProblem> {
    if raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    if raw.len() > max_bytes {
        return Err(PathProblem::TooLong { limit: max_bytes });
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                // NAME_MAX on every Linux filesystem we run on.
                if name.len() > 255 {
                    return Err(PathProblem::NameTooLong);
                }
                out.push(name.to_os_string());
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(PathProblem::ParentTraversal),
            Component::RootDir | Component::Prefix(_) => return Err(PathProblem::Absolute),
        }
    }
    if out.len() > max_depth {
        return Err(PathProblem::TooDeep { limit: max_depth });
    }
    Ok(out)
}

/// One extracted member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Node {
    Dir,
    File,
    Symlink(PathBuf),
}

/// Everything extracted so far, by path.
#[derive(Default)]
pub(super) struct Tree {
    nodes: HashMap<Components, Node>,
}

impl Tree {
    pub(super) fn get(&self, path: &[OsString]) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub(super) fn insert(&mut self, path: Components, node: Node) {
        self.nodes.insert(path, node);
    }

    /// Checks that the link at `link` with `target` resolves inside the run directory.
    pub(super) fn check_link(&self, link: &[OsString], target: &Path) -> Result<(), LinkProblem> {
        if target.as_os_str().is_empty() {
            return Err(LinkProblem::Empty);
        }
        let start = link[..link.len().saturating_sub(1)].to_vec();
        let mut hops = 0;
        self.resolve(start, target, &mut hops).map(|_| ())
    }

    /// Every link in the tree whose target no longer resolves inside, sorted by path.
    pub(super) fn escaping_links(&self) -> Vec<(Components, PathBuf, LinkProblem)> {
        let mut bad: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|(path, node)| match node {
                Node::Symlink(target) => self
                    .check_link(path, target)
                    .err()
                    .map(|problem| (path.clone(), target.clone(), problem)),
                _ => None,
            })
            .collect();
        bad.sort_by(|a, b| a.0.cmp(&b.0));
        bad
    }

    fn resolve(
        &self,
        mut current: Components,
        target: &Path,
        hops: &mut u32,
    ) -> Result<Components, LinkProblem> {
        for component in target.components() {
            match component {
                Component::RootDir | Component::Prefix(_) => return Err(LinkProblem::Absolute),
                Component::CurDir => {}
                // `current` only ever holds resolved directories, so `..` here is what the
                // kernel would do too.
                Component::ParentDir => {
                    if current.pop().is_none() {
                        return Err(LinkProblem::Escapes);
                    }
                }
                Component::Normal(name) => {
                    current.push(name.to_os_string());
                    if let Some(Node::Symlink(next)) = self.nodes.get(&current) {
                        *hops += 1;
                        if *hops > MAX_LINK_HOPS {
                            return Err(LinkProblem::Loop);
                        }
                        if next.has_root() {
                            return Err(LinkProblem::Absolute);
                        }
                        current.pop();
                        current = self.resolve(current, next, hops)?;
                    }
                }
            }
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(path: &str) -> Components {
        check_path(path.as_bytes(), 4096, 64).expect("valid path")
    }

    #[test]
    fn member_paths() {
        let cases: &[(&str, Result<usize, PathProblem>)] = &[
            ("main.tf", Ok(1)),
            ("./modules/vpc/main.tf", Ok(3)),
            ("a//b/./c/", Ok(3)),
            ("./", Ok(0)),
            ("../x", Err(PathProblem::ParentTraversal)),
            ("a/../../x", Err(PathProblem::ParentTraversal)),
            ("a/..", Err(PathProblem::ParentTraversal)),
            ("/etc/x", Err(PathProblem::Absolute)),
            ("a\\..\\b", Ok(1)),
        ];
        for (path, want) in cases {
            let got = check_path(path.as_bytes(), 4096, 64).map(|c| c.len());
            assert_eq!(&got, want, "{path}");
        }
        let deep = "d/".repeat(65);
        assert_eq!(
            check_path(deep.as_bytes(), 4096, 64),
            Err(PathProblem::TooDeep { limit: 64 })
        );
        let long = "x".repeat(5000);
        assert_eq!(
            check_path(long.as_bytes(), 4096, 64),
            Err(PathProblem::TooLong { limit: 4096 })
        );
        let name = "n".repeat(256);
        assert_eq!(
            check_path(name.as_bytes(), 4096, 64),
            Err(PathProblem::NameTooLong)
        );
    }

    #[test]
    fn link_targets_resolve_from_the_links_directory() {
        let mut tree = Tree::default();
        tree.insert(comps("a"), Node::Dir);
        tree.insert(comps("a/b"), Node::Dir);
        let cases: &[(&str, &str, Result<(), LinkProblem>)] = &[
            ("a/b/l", "../../main.tf", Ok(())),
            ("a/b/l", "../../../outside", Err(LinkProblem::Escapes)),
            ("l", "..", Err(LinkProblem::Escapes)),
            ("l", ".", Ok(())),
            ("a/l", "/etc/passwd", Err(LinkProblem::Absolute)),
            ("a/l", "", Err(LinkProblem::Empty)),
            ("a/l", "missing/../b", Ok(())),
        ];
        for (link, target, want) in cases {
            assert_eq!(
                &tree.check_link(&comps(link), Path::new(target)),
                want,
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn links_are_followed_while_resolving_and_order_does_not_matter() {
        let mut tree = Tree::default();
        tree.insert(comps("d"), Node::Dir);
        // l2 looks harmless while l1 does not exist yet...
        let l2 = comps("d/l2");
        assert_eq!(tree.check_link(&l2, Path::new("l1/..")), Ok(()));
        tree.insert(l2, Node::Symlink("l1/..".into()));
        // ...and l1 alone is harmless too (it names the run directory)...
        let l1 = comps("d/l1");
        assert_eq!(tree.check_link(&l1, Path::new("..")), Ok(()));
        tree.insert(l1, Node::Symlink("..".into()));
        // ...but together l2 means the run directory's parent.
        let bad = tree.escaping_links();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, comps("d/l2"));
        assert_eq!(bad[0].2, LinkProblem::Escapes);
    }

    #[test]
    fn link_loops_are_refused() {
        let mut tree = Tree::default();
        tree.insert(comps("a"), Node::Symlink("b".into()));
        tree.insert(comps("b"), Node::Symlink("a".into()));
        assert_eq!(
            tree.check_link(&comps("c"), Path::new("a/x")),
            Err(LinkProblem::Loop)
        );
        tree.insert(comps("abs"), Node::Symlink("/etc".into()));
        assert_eq!(
            tree.check_link(&comps("c"), Path::new("abs/x")),
            Err(LinkProblem::Absolute)
        );
    }
}
