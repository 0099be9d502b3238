//! Writes one section of `docs/benchmarks.md` (from its `## ` heading to the
//! next), leaving the others as they are: the load runs' table and the
//! instruction count each own one.

use std::path::Path;

use anyhow::{Context as _, Result};

/// Replaces the section under `heading` in the file at `path` (from its heading to
/// the next `## ` heading), or appends it; other sections stay as they are.
pub(crate) fn write_section(path: &Path, heading: &str, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let updated = replace_section(&text, heading, section);
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

fn replace_section(text: &str, heading: &str, section: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|line| line.trim_end() == heading);
    let section = section.trim_end();
    match start {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|line| line.starts_with("## "))
                .map_or(lines.len(), |offset| start + 1 + offset);
            let mut out = lines[..start].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(section);
            out.push('\n');
            if end < lines.len() {
                out.push('\n');
                out.push_str(&lines[end..].join("\n"));
                out.push('\n');
            }
            out
        }
        None => {
            let mut out = text.trim_end().to_owned();
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(section);
            out.push('\n');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADING: &str = "## Gateway overhead (cargo xtask bench)";

    #[test]
    fn replaces_only_its_own_section() {
        let doc = "# Benchmarks\n\n## Other\n\nkeep\n\n## Gateway overhead (cargo xtask bench)\n\nold\n\n## Later\n\nkeep too\n";
        let new = "## Gateway overhead (cargo xtask bench)\n\nnew\n";
        let out = replace_section(doc, HEADING, new);
        assert_eq!(
            out,
            "# Benchmarks\n\n## Other\n\nkeep\n\n## Gateway overhead (cargo xtask bench)\n\nnew\n\n## Later\n\nkeep too\n"
        );
        assert_eq!(replace_section(&out, HEADING, new), out);
    }

    #[test]
    fn appends_when_missing() {
        let out = replace_section(
            "# Benchmarks\n\n## Other\n\nkeep\n",
            HEADING,
            "## Gateway overhead (cargo xtask bench)\n\nnew\n",
        );
        assert_eq!(
            out,
            "# Benchmarks\n\n## Other\n\nkeep\n\n## Gateway overhead (cargo xtask bench)\n\nnew\n"
        );
    }
}
