//! Model names and patterns: an exact name or a trailing-`*` prefix, as upstreams
//! and keys list them.

/// A model name or a trailing-`*` pattern such as `gpt-4o*`; `*` alone matches all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelPattern {
    /// Exactly this name.
    Exact(String),
    /// Any name starting with this.
    Prefix(String),
}

/// A model pattern with a `*` anywhere but at the end, or empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "model pattern {0:?} is not valid: use an exact name or a name ending in a single '*' such as \"gpt-4o*\""
)]
pub struct InvalidModelPattern(pub String);

impl ModelPattern {
    /// Parses `name` or `prefix*`.
    pub fn parse(text: &str) -> Result<Self, InvalidModelPattern> {
        let invalid = || InvalidModelPattern(text.to_owned());
        if text.is_empty() || text.trim() != text {
            return Err(invalid());
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(invalid()),
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if text.contains('*') => Err(invalid()),
            None => Ok(Self::Exact(text.to_owned())),
        }
    }

    /// Whether `model` matches.
    pub fn matches(&self, model: &str) -> bool {
        match self {
            Self::Exact(name) => name == model,
            Self::Prefix(prefix) => model.starts_with(prefix.as_str()),
        }
    }

    /// Whether some model name matches both patterns.
    pub fn overlaps(&self, other: &ModelPattern) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(name), Self::Prefix(prefix))
            | (Self::Prefix(prefix), Self::Exact(name)) => name.starts_with(prefix.as_str()),
            (Self::Prefix(a), Self::Prefix(b)) => {
                a.starts_with(b.as_str()) || b.starts_with(a.as_str())
            }
        }
    }

    /// The exact name, for listing models.
    pub fn exact(&self) -> Option<&str> {
        match self {
            Self::Exact(name) => Some(name),
            Self::Prefix(_) => None,
        }
    }
}

/// Whether a key whose allowed list is `allowed` may use `model`. An empty list
/// allows every model. Entries that are not valid patterns match nothing.
pub fn key_allows_model(allowed: &[String], model: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|entry| ModelPattern::parse(entry).is_ok_and(|p| p.matches(model)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps() {
        let p = |t: &str| ModelPattern::parse(t).unwrap();
        assert!(p("gpt-4o*").overlaps(&p("gpt-*")) && p("gpt-*").overlaps(&p("gpt-4o-mini")));
        assert!(p("o3").overlaps(&p("o3")) && !p("o3").overlaps(&p("o1*")));
        assert!(!p("claude-*").overlaps(&p("gpt-*")));
    }

    #[test]
    fn patterns() {
        let p = ModelPattern::parse("gpt-4o*").unwrap();
        assert!(p.matches("gpt-4o") && p.matches("gpt-4o-mini") && !p.matches("gpt-4"));
        assert!(ModelPattern::parse("*").unwrap().matches("anything"));
        assert!(ModelPattern::parse("o3").unwrap().matches("o3"));
        assert!(!ModelPattern::parse("o3").unwrap().matches("o3-mini"));
        for bad in ["", "g*pt", "**", " gpt", "a*b*"] {
            assert!(ModelPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(key_allows_model(&[], "x"));
        assert!(key_allows_model(&["gpt-4o*".into()], "gpt-4o-mini"));
        assert!(!key_allows_model(&["gpt-4o".into()], "gpt-4o-mini"));
    }
}
