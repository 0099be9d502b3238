//! `tidy`'s module-cycle check: within a crate, modules import each other in one
//! direction. Every `crate::…` and `super::…` path in a module's non-test code
//! is an edge to the module it names (the longest known module prefix); edges
//! to and from the crate root are left out, since the root only declares and
//! re-exports. A cycle is reported with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Reports every import cycle between the modules of each crate under `root`.
pub(crate) fn check(root: &Path, problems: &mut Vec<String>) {
    for parent in ["crates", "bins", "examples"] {
        let Ok(entries) = fs::read_dir(root.join(parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            check_crate(
                &entry.path().join("src"),
                &relative(root, &entry.path()),
                problems,
            );
        }
    }
    check_crate(&root.join("xtask/src"), "xtask", problems);
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Module path (`billing::charge`) → the file's non-test source.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let Ok(rel) = path.strip_prefix(src) else {
                continue;
            };
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
                parts.clear();
            }
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_owned(),
                None => text,
            };
            out.insert(parts.join("::"), code);
        }
    }
    out
}

/// What a path is relative to.
#[derive(Clone, Copy)]
enum Anchor {
    Crate,
    Super,
    /// `self::…`, or a `use` of a child module by its bare name.
    SelfModule,
}

/// The paths a module's code names, as segment lists after their anchor.
fn paths(code: &str) -> Vec<(Anchor, Vec<String>)> {
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        // `use child::Item;` names a child module without an anchor.
        let bare_use = line
            .split_once("use ")
            .filter(|(before, _)| matches!(before.trim(), "" | "pub" | "pub(crate)"))
            .map(|(_, rest)| rest)
            .filter(|rest| {
                !["crate::", "super::", "self::"]
                    .iter()
                    .any(|a| rest.starts_with(a))
            });
        if let Some(rest) = bare_use {
            out.push((Anchor::SelfModule, segments(rest)));
        }
        for (anchor, kind) in [
            ("crate::", Anchor::Crate),
            ("super::", Anchor::Super),
            ("self::", Anchor::SelfModule),
        ] {
            let mut rest = line;
            while let Some(at) = rest.find(anchor) {
                let before = rest[..at].chars().last();
                rest = &rest[at + anchor.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                if let Some(group) = rest.strip_prefix('{') {
                    let inner = group.split('}').next().unwrap_or_default();
                    for item in inner.split(',') {
                        out.push((kind, segments(item.trim())));
                    }
                } else {
                    out.push((kind, segments(rest)));
                }
            }
        }
    }
    out
}

fn segments(text: &str) -> Vec<String> {
    text.split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty())
        .collect()
}

fn check_crate(src: &Path, name: &str, problems: &mut Vec<String>) {
    let modules = modules(src);
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &modules {
        if module.is_empty() {
            continue;
        }
        let here: Vec<&str> = module.split("::").collect();
        for (anchor, segments) in paths(code) {
            let base = match anchor {
                Anchor::Crate => &here[..0],
                Anchor::Super => &here[..here.len() - 1],
                Anchor::SelfModule => &here[..],
            };
            let mut full: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
            full.extend(segments);
            let target = (0..=full.len())
                .rev()
                .map(|n| full[..n].join("::"))
                .find(|prefix| modules.contains_key(prefix))
                .unwrap_or_default();
            if !target.is_empty() && target != *module {
                edges.entry(module.as_str()).or_default().insert(target);
            }
        }
    }
    let mut reported = BTreeSet::new();
    for start in edges.keys() {
        let mut path = vec![(*start).to_owned()];
        if let Some(cycle) = find_cycle(start, &edges, &mut path, &mut BTreeSet::new()) {
            let mut members: Vec<&String> = cycle.iter().collect();
            members.sort();
            members.dedup();
            if reported.insert(members.into_iter().cloned().collect::<Vec<_>>()) {
                problems.push(format!(
                    "{name}: modules import each other in a cycle: {}",
                    cycle.join(" -> ")
                ));
            }
        }
    }
}

/// A path from `start` back to `path[0]`, if there is one.
fn find_cycle(
    at: &str,
    edges: &BTreeMap<&str, BTreeSet<String>>,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in edges.get(at).into_iter().flatten() {
        if *next == path[0] {
            let mut cycle = path.clone();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(cycle) = find_cycle(next, edges, path, seen) {
                return Some(cycle);
            }
            path.pop();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_through_a_parent_module_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("billing")).unwrap();
        fs::write(src.join("lib.rs"), "//! x\nmod billing;\nmod error;\n").unwrap();
        fs::write(src.join("error.rs"), "//! x\nuse crate::billing::Charge;\n").unwrap();
        fs::write(
            src.join("billing/mod.rs"),
            "//! x\nmod charge;\npub(crate) use charge::Charge;\n",
        )
        .unwrap();
        fs::write(
            src.join("billing/charge.rs"),
            "//! x\nuse crate::{error::ProxyError, body::X};\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        check_crate(&src, "demo", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("billing::charge -> error -> billing"),
            "{problems:?}"
        );

        fs::write(
            src.join("error.rs"),
            "//! x\n// crate::billing is not imported\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        check_crate(&src, "demo", &mut problems);
        assert_eq!(problems, Vec::<String>::new());
    }
}
