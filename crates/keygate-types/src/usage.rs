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
    /// Charged less than the upstream's figures would cost: a count was not a
    /// non-negative integer or was past billing's bound and was clamped, or the
    /// cost was past what the request's reservation held and was cut to it. The
    /// record's tokens are the clamped counts and its cost is what was charged.
    Capped,
}

impl UsageSource {
    /// Every source, in the order of the schema's CHECK list.
    pub const ALL: [UsageSource; 4] =
        [Self::Reported, Self::Estimated, Self::Unknown, Self::Capped];

    /// The name stored in usage records: `reported`, `estimated`, `unknown` or
    /// `capped`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reported => "reported",
            Self::Estimated => "estimated",
            Self::Unknown => "unknown",
            Self::Capped => "capped",
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
