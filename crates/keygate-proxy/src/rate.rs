//! What a client is told about its limits: which limit refused
//! ([`LimitKind`]), and the `x-ratelimit-*` headers OpenAI sends, for the
//! tightest request limit and the tightest token limit of the request
//! ([`RateHeaders`]).

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use keygate_limits::RateState;

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// The key's requests per minute (its own, or its tier's).
    Requests,
    /// The key's tokens per minute.
    Tokens,
    /// The key's requests in flight.
    Parallel,
    /// A public key's requests per minute from one client address.
    AddressRequests,
    /// A public key's tokens per minute from one client address.
    AddressTokens,
    /// Failed authentications from one client address.
    AuthFailures,
}

impl LimitKind {
    /// The label on `keygate_rate_limited_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Parallel => "parallel",
            Self::AddressRequests => "address_requests",
            Self::AddressTokens => "address_tokens",
            Self::AuthFailures => "auth_failures",
        }
    }

    /// Every kind, for `/metrics`.
    pub const ALL: [LimitKind; 6] = [
        Self::Requests,
        Self::Tokens,
        Self::Parallel,
        Self::AddressRequests,
        Self::AddressTokens,
        Self::AuthFailures,
    ];

    /// Whether the limit counts tokens (else requests).
    pub(crate) fn counts_tokens(self) -> bool {
        matches!(self, Self::Tokens | Self::AddressTokens)
    }
}

/// The tightest request and token limits of a request, as its answer shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// The request limit with the fewest left.
    pub requests: Option<RateState>,
    /// The token limit with the fewest left.
    pub tokens: Option<RateState>,
}

impl RateHeaders {
    /// Keeps `state` when it is tighter than what is there.
    pub(crate) fn add(&mut self, kind: LimitKind, state: RateState) {
        let slot = if kind.counts_tokens() {
            &mut self.tokens
        } else {
            &mut self.requests
        };
        if slot.is_none_or(|old| state.remaining < old.remaining) {
            *slot = Some(state);
        }
    }

    /// Whether there is nothing to show.
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// Writes the headers, replacing the provider's (which describe the
    /// operator's account, not this key). Nothing when the key has no limit.
    pub(crate) fn write(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        for (suffix, state) in [("requests", self.requests), ("tokens", self.tokens)] {
            let names = [
                format!("x-ratelimit-limit-{suffix}"),
                format!("x-ratelimit-remaining-{suffix}"),
                format!("x-ratelimit-reset-{suffix}"),
            ];
            match state {
                Some(state) => {
                    let values = [
                        HeaderValue::from(state.limit),
                        HeaderValue::from(state.remaining),
                        HeaderValue::from_str(&reset_text(state.reset))
                            .unwrap_or(HeaderValue::from_static("0s")),
                    ];
                    for (name, value) in names.iter().zip(values) {
                        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                            headers.insert(name, value);
                        }
                    }
                }
                None => {
                    for name in &names {
                        headers.remove(name.as_str());
                    }
                }
            }
        }
    }
}

/// A reset time the way OpenAI writes it: `20ms`, `1.5s`, `6m0s`.
pub(crate) fn reset_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let rest = ms % 60_000;
    let seconds = if rest % 1000 == 0 {
        format!("{}", rest / 1000)
    } else {
        let text = format!("{}.{:03}", rest / 1000, rest % 1000);
        text.trim_end_matches('0').to_owned()
    };
    if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_reads_like_openai() {
        assert_eq!(reset_text(Duration::from_millis(20)), "20ms");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(12)), "12s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset_text(Duration::from_millis(61_250)), "1m1.25s");
    }

    #[test]
    fn the_tightest_limit_is_shown() {
        let mut headers = RateHeaders::default();
        let state = |limit, remaining| RateState {
            limit,
            remaining,
            reset: Duration::from_secs(1),
        };
        headers.add(LimitKind::Requests, state(60, 10));
        headers.add(LimitKind::AddressRequests, state(5, 2));
        headers.add(LimitKind::Requests, state(100, 50));
        headers.add(LimitKind::Tokens, state(1000, 900));
        assert_eq!(headers.requests, Some(state(5, 2)));
        let mut map = HeaderMap::new();
        map.insert("x-ratelimit-limit-tokens", HeaderValue::from(7_u32));
        headers.write(&mut map);
        assert_eq!(map["x-ratelimit-limit-requests"], "5");
        assert_eq!(map["x-ratelimit-remaining-requests"], "2");
        assert_eq!(map["x-ratelimit-reset-requests"], "1s");
        assert_eq!(map["x-ratelimit-limit-tokens"], "1000");
    }
}
