//! `UsageSource`: where a request's token counts came from. Billing sets it when
//! it reads a response; the store keeps its name in `usage_records.usage_source`.

/// Where a usage figure came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UsageSource {
    /// The upstream's own `usage`.
    Reported,
    /// Estimated by keygate (for example, a stream the client cut short).
    Estimated,
    /// No usage seen and none estimated.
    #[default]
    Unknown,
}

impl UsageSource {
    /// Every source, in the order of the schema's CHECK list.
    pub const ALL: [UsageSource; 3] = [Self::Reported, Self::Estimated, Self::Unknown];

    /// The name stored in usage records: `reported`, `estimated` or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reported => "reported",
            Self::Estimated => "estimated",
            Self::Unknown => "unknown",
        }
    }

    /// Parses a stored name; `None` for any other text.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|source| source.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for source in UsageSource::ALL {
            assert_eq!(UsageSource::parse(source.name()), Some(source));
        }
        assert_eq!(UsageSource::parse("Reported"), None);
        assert_eq!(UsageSource::default(), UsageSource::Unknown);
    }
}
