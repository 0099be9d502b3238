//! Scopes: what a key may call. A set of eight scopes with the groups `read`,
//! `write` and `*`.

use std::fmt;
use std::str::FromStr;

/// One permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `GET /v1/models`.
    Models,
    /// Chat completions, completions, responses, messages.
    Chat,
    /// Embeddings.
    Embeddings,
    /// Image generation.
    Image,
    /// Image edits.
    ImageEdit,
    /// Text to speech.
    Tts,
    /// Speech to text (transcriptions and translations).
    Stt,
    /// Usage endpoints.
    Usage,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 8] = [
        Scope::Models,
        Scope::Chat,
        Scope::Embeddings,
        Scope::Image,
        Scope::ImageEdit,
        Scope::Tts,
        Scope::Stt,
        Scope::Usage,
    ];

    /// The name used in the CLI, the store and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Models => "models",
            Scope::Chat => "chat",
            Scope::Embeddings => "embeddings",
            Scope::Image => "image",
            Scope::ImageEdit => "image_edit",
            Scope::Tts => "tts",
            Scope::Stt => "stt",
            Scope::Usage => "usage",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scope or group name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?}; scopes are models, chat, embeddings, image, image_edit, tts, stt, usage, and the groups read, write, *"
)]
pub struct UnknownScope(pub String);

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet(u16);

impl ScopeSet {
    /// No scope.
    pub const NONE: ScopeSet = ScopeSet(0);

    /// Every scope (`*`).
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    /// The `read` group: models and usage.
    pub fn read() -> Self {
        [Scope::Models, Scope::Usage].into_iter().collect()
    }

    /// The `write` group: every generating scope.
    pub fn write() -> Self {
        [
            Scope::Chat,
            Scope::Embeddings,
            Scope::Image,
            Scope::ImageEdit,
            Scope::Tts,
            Scope::Stt,
        ]
        .into_iter()
        .collect()
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of two sets.
    pub fn union(self, other: ScopeSet) -> ScopeSet {
        ScopeSet(self.0 | other.0)
    }

    /// The scopes in display order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

/// Parses a comma-separated list of scopes and groups, e.g. `chat,models` or `read,embeddings`.
impl FromStr for ScopeSet {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = ScopeSet::NONE;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let add = match name {
                "*" => ScopeSet::all(),
                "read" => ScopeSet::read(),
                "write" => ScopeSet::write(),
                _ => Scope::ALL
                    .into_iter()
                    .find(|scope| scope.name() == name)
                    .map(|scope| [scope].into_iter().collect())
                    .ok_or_else(|| UnknownScope(name.to_owned()))?,
            };
            set = set.union(add);
        }
        Ok(set)
    }
}

/// Comma-separated scope names in display order; `*` when every scope is set.
impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == ScopeSet::all() {
            return f.write_str("*");
        }
        let names: Vec<&str> = self.iter().map(Scope::name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeSet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_expand() {
        let read: ScopeSet = "read".parse().unwrap();
        assert!(read.contains(Scope::Models) && read.contains(Scope::Usage));
        assert!(!read.contains(Scope::Chat));
        let write: ScopeSet = "write".parse().unwrap();
        assert!(write.contains(Scope::Chat) && write.contains(Scope::Stt));
        assert!(!write.contains(Scope::Models) && !write.contains(Scope::Usage));
        assert_eq!("read,write".parse::<ScopeSet>().unwrap(), ScopeSet::all());
        assert_eq!("*".parse::<ScopeSet>().unwrap(), ScopeSet::all());
    }

    #[test]
    fn display_round_trips() {
        for text in ["chat,models", "image_edit", "", "*", "usage, embeddings"] {
            let set: ScopeSet = text.parse().unwrap();
            assert_eq!(set.to_string().parse::<ScopeSet>().unwrap(), set, "{text}");
        }
        assert_eq!(
            "chat,models".parse::<ScopeSet>().unwrap().to_string(),
            "models,chat"
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        let err = "chat,admin".parse::<ScopeSet>().unwrap_err();
        assert_eq!(err, UnknownScope("admin".to_owned()));
        assert!(err.to_string().contains("image_edit"));
    }
}
