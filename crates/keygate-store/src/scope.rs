//! Scopes: what a key may call. A set of eleven scopes with the groups `read`,
//! `write` and `*`. The three for stored objects (files, batches, stored
//! responses) came last: `stored` joined `read`, `upload` joined `write`, and
//! `delete` is in `*` only. Keys are stored with their scopes spelt out (or
//! `*`), so a key made before keeps exactly what it could do.

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
    /// Reading stored objects: files, batches, stored responses.
    Stored,
    /// Creating stored objects: file uploads, batches.
    Upload,
    /// Deleting stored objects and cancelling batches.
    Delete,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 11] = [
        Scope::Models,
        Scope::Chat,
        Scope::Embeddings,
        Scope::Image,
        Scope::ImageEdit,
        Scope::Tts,
        Scope::Stt,
        Scope::Usage,
        Scope::Stored,
        Scope::Upload,
        Scope::Delete,
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
            Scope::Stored => "stored",
            Scope::Upload => "upload",
            Scope::Delete => "delete",
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
    "unknown scope {0:?}; scopes are models, chat, embeddings, image, image_edit, tts, stt, usage, stored, upload, delete, and the groups read, write, *"
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

    /// The `read` group: models, usage and stored objects.
    pub fn read() -> Self {
        [Scope::Models, Scope::Usage, Scope::Stored]
            .into_iter()
            .collect()
    }

    /// The `write` group: every generating scope, and uploads.
    pub fn write() -> Self {
        [
            Scope::Chat,
            Scope::Embeddings,
            Scope::Image,
            Scope::ImageEdit,
            Scope::Tts,
            Scope::Stt,
            Scope::Upload,
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
        assert!(read.contains(Scope::Stored) && write.contains(Scope::Upload));
        assert!(!read.contains(Scope::Delete) && !write.contains(Scope::Delete));
        assert_eq!(
            "read,write,delete".parse::<ScopeSet>().unwrap(),
            ScopeSet::all()
        );
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
    fn keys_stored_before_the_object_scopes_keep_their_meaning() {
        // What the old groups were stored as.
        let old_read: ScopeSet = "models,usage".parse().unwrap();
        let old_write: ScopeSet = "chat,embeddings,image,image_edit,tts,stt".parse().unwrap();
        for old in [old_read, old_write] {
            assert!(!old.contains(Scope::Stored) && !old.contains(Scope::Upload));
            assert!(!old.contains(Scope::Delete));
        }
        assert_eq!("*".parse::<ScopeSet>().unwrap(), ScopeSet::all());
    }

    #[test]
    fn unknown_names_are_errors() {
        let err = "chat,admin".parse::<ScopeSet>().unwrap_err();
        assert_eq!(err, UnknownScope("admin".to_owned()));
        assert!(err.to_string().contains("image_edit"));
    }
}
