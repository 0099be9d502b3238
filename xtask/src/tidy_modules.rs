//! `tidy`'s module-cycle check: within a crate, modules import each other in one
//! direction. Each module's code (comments, string literals and its test module
//! left out) is read whole; every `use` tree — groups nested and split over lines,
//! `self`, globs, renames — and every `crate::…`, `super::…` or `self::…` path in
//! the code is an edge to the module it names (the longest known module prefix).
//! A name the crate root re-exports (`pub use a::X` in `lib.rs`) counts as a path
//! to `a::X`; a glob import of the crate root is refused, since it would hide its
//! edges. The root itself only declares and re-exports, so its own imports are not
//! edges. A cycle is reported with its path.

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
            let name = entry
                .path()
                .strip_prefix(root)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            check_crate(&entry.path().join("src"), &name, problems);
        }
    }
    check_crate(&root.join("xtask/src"), "xtask", problems);
}

/// A path as written: what it is relative to, then its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    /// `None` for `crate::`; `Some(n)` for `n` times `super::` (`Some(0)` for
    /// `self::` or a bare `use child::…`).
    up: Option<usize>,
    segments: Vec<String>,
    glob: bool,
}

fn check_crate(src: &Path, name: &str, problems: &mut Vec<String>) {
    let modules = modules(src);
    let reexports = modules
        .get("")
        .map(|root| root_reexports(root))
        .unwrap_or_default();
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &modules {
        if module.is_empty() {
            continue;
        }
        let here: Vec<&str> = module.split("::").collect();
        for path in paths(code) {
            let Some(mut full) = absolute(&here, &path) else {
                continue;
            };
            if full.is_empty() && path.glob {
                problems.push(format!(
                    "{name}: {module} glob-imports the crate root; import from the modules"
                ));
                continue;
            }
            let reexported = full
                .first()
                .filter(|first| !modules.contains_key(first.as_str()))
                .and_then(|first| reexports.get(first));
            if let Some(source) = reexported {
                full = source.clone();
            }
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
            let members: BTreeSet<String> = cycle.iter().cloned().collect();
            if reported.insert(members) {
                problems.push(format!(
                    "{name}: modules import each other in a cycle: {}",
                    cycle.join(" -> ")
                ));
            }
        }
    }
}

/// The path from the crate root that `path`, written in module `here`, names.
fn absolute(here: &[&str], path: &Written) -> Option<Vec<String>> {
    let base: &[&str] = match path.up {
        None => &[],
        Some(up) => here.get(..here.len().checked_sub(up)?)?,
    };
    let mut full: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
    full.extend(path.segments.iter().cloned());
    Some(full)
}

/// Module path (`billing::charge`, `""` for the root) → the file's code, cleaned.
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
            out.insert(parts.join("::"), without_test_modules(&clean(&text)));
        }
    }
    out
}

/// The code without comments and with string and char literals emptied.
fn clean(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1).copied()) {
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            ('"', _) => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal (not a lifetime): 'x', '\n', '"'.
            ('\'', Some(c)) if chars.get(i + 2) == Some(&'\'') || c == '\\' => {
                i += if c == '\\' { 4 } else { 3 };
                out.push_str("' '");
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The code without `#[cfg(test)] mod … { … }` blocks.
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let is_module = item.starts_with("mod ") || item.starts_with("pub(crate) mod ");
        match (is_module, item.find('{')) {
            (true, Some(open)) if !item[..open].contains(';') => {
                let body = &item[open..];
                let mut depth = 0usize;
                let mut end = body.len();
                for (i, c) in body.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &body[end..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Every path the code names: the leaves of its `use` trees, then the anchored
/// paths elsewhere.
fn paths(code: &str) -> Vec<Written> {
    let mut out = Vec::new();
    for tree in use_trees(code) {
        expand(&[], &tree, &mut out);
    }
    let bytes = code.as_bytes();
    for anchor in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(anchor) {
            let start = from + at;
            from = start + anchor.len();
            let before = start.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            let end = code[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |n| start + n);
            if let Some(path) = parse_path(&[], &code[start..end]) {
                out.push(path);
            }
        }
    }
    out
}

/// The text of every `use …;` declaration.
fn use_trees(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("use ") {
        let start = from + at;
        from = start + 4;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        if let Some(end) = code[from..].find(';') {
            out.push(normalize(&code[from..from + end]));
            from += end;
        }
    }
    out
}

/// A `use` tree on one line: single spaces, none around `::`, braces and commas.
fn normalize(tree: &str) -> String {
    let spaced = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = spaced.chars().collect();
    let tight = |c: Option<&char>| matches!(c, Some(':' | '{' | '}' | ','));
    let mut out = String::with_capacity(spaced.len());
    for (i, &c) in chars.iter().enumerate() {
        let before = i.checked_sub(1).and_then(|j| chars.get(j));
        if c == ' ' && (tight(chars.get(i + 1)) || tight(before)) {
            continue;
        }
        out.push(c);
    }
    out
}

/// Expands a normalized `use` tree under `prefix` into its leaves.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Written>) {
    let tree = tree.trim_start_matches("::");
    let Some(open) = tree.find('{') else {
        let leaf = tree.split(" as ").next().unwrap_or(tree);
        if let Some(path) = parse_path(prefix, leaf) {
            out.push(path);
        }
        return;
    };
    let head = tree[..open].trim_end_matches("::");
    let mut inner_prefix = prefix.to_vec();
    inner_prefix.extend(
        head.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
    let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut depth = 0usize;
    let mut item_start = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                expand_item(&inner_prefix, &body[item_start..i], out);
                item_start = i + 1;
            }
            _ => {}
        }
    }
    expand_item(&inner_prefix, &body[item_start..], out);
}

fn expand_item(prefix: &[String], item: &str, out: &mut Vec<Written>) {
    if item.is_empty() {
        return;
    }
    if item == "self" || item.starts_with("self as ") {
        if let Some(path) = parse_path(prefix, "") {
            out.push(path);
        }
        return;
    }
    expand(prefix, item, out);
}

/// `prefix` then `text` (`crate::a::B`, `super::super::c`, `child::D`, `*`) as a
/// written path; `None` for a path that names nothing in the crate.
fn parse_path(prefix: &[String], text: &str) -> Option<Written> {
    let mut segments: Vec<String> = prefix.to_vec();
    segments.extend(
        text.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
    let glob = segments.last().is_some_and(|s| s == "*");
    if glob {
        segments.pop();
    }
    let mut rest = segments.as_slice();
    let up = match rest.first().map(String::as_str) {
        Some("crate") => {
            rest = &rest[1..];
            None
        }
        Some("super") => {
            let n = rest.iter().take_while(|s| *s == "super").count();
            rest = &rest[n..];
            Some(n)
        }
        Some("self") => {
            rest = &rest[1..];
            Some(0)
        }
        // `std::…`, `http::…` or a child module: resolved against this module,
        // where only a child matches.
        Some(_) => Some(0),
        None => return None,
    };
    let segments = rest
        .iter()
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty())
        .collect();
    Some(Written { up, segments, glob })
}

/// Names the crate root re-exports → the path they come from.
fn root_reexports(root: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for tree in use_trees(root) {
        let mut leaves = Vec::new();
        expand(&[], &tree, &mut leaves);
        for leaf in leaves {
            let plain = leaf.up == Some(0) && !leaf.glob && leaf.segments.len() > 1;
            if let Some(name) = leaf.segments.last().filter(|_| plain) {
                out.insert(name.clone(), leaf.segments.clone());
            }
        }
    }
    out
}

/// A path from `at` back to `path[0]`, if there is one.
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

    /// The problems for a crate of `files` (path under `src`, content).
    fn problems_of(files: &[(&str, &str)]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for (path, text) in files {
            let path = src.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("//! x\n{text}")).unwrap();
        }
        let mut problems = Vec::new();
        check_crate(&src, "demo", &mut problems);
        problems
    }

    const BILLING: (&str, &str) = (
        "billing/mod.rs",
        "mod charge;\npub(crate) use charge::Charge;\n",
    );

    #[test]
    fn a_cycle_through_a_parent_module_is_found() {
        let problems = problems_of(&[
            ("lib.rs", "mod billing;\nmod error;\n"),
            ("error.rs", "use crate::billing::Charge;\n"),
            BILLING,
            (
                "billing/charge.rs",
                "use crate::{error::ProxyError, body::X};\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
            ),
        ]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("billing::charge -> error -> billing"),
            "{problems:?}"
        );
    }

    #[test]
    fn comments_strings_and_test_modules_are_not_edges() {
        let problems = problems_of(&[
            ("lib.rs", "mod billing;\nmod error;\n"),
            (
                "error.rs",
                "// use crate::billing::Charge;\nconst S: &str = \"crate::billing\";\n#[cfg(test)]\nmod tests {\n    use crate::billing::Charge;\n}\nfn after() {}\n",
            ),
            BILLING,
            ("billing/charge.rs", "use crate::error::ProxyError;\n"),
        ]);
        assert_eq!(problems, Vec::<String>::new());
    }

    #[test]
    fn groups_over_lines_nested_groups_and_code_after_tests_are_read() {
        let charge_uses = [
            "use crate::{\n    body::X,\n    error::ProxyError,\n};\n",
            "use crate::{body::{A, B}, error::{self, ProxyError}};\n",
            "#[cfg(test)]\nmod tests {}\nfn late(e: crate::error::ProxyError) -> usize { 0 }\n",
            "use super::super::error::ProxyError;\n",
            "use crate::ProxyError;\n",
        ];
        for uses in charge_uses {
            let problems = problems_of(&[
                (
                    "lib.rs",
                    "mod billing;\nmod body;\nmod error;\npub use error::ProxyError;\n",
                ),
                ("body.rs", ""),
                ("error.rs", "use crate::billing::Charge;\n"),
                BILLING,
                ("billing/charge.rs", uses),
            ]);
            assert_eq!(problems.len(), 1, "{uses}: {problems:?}");
        }
    }

    #[test]
    fn a_glob_of_the_crate_root_is_refused() {
        let problems = problems_of(&[("lib.rs", "mod a;\n"), ("a.rs", "use super::*;\n")]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("glob-imports the crate root"));
    }
}
