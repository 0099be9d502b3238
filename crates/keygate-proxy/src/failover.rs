//! Retries and failover, only before the client has seen a byte: an attempt
//! whose connection is refused or reset, that times out before the answer's
//! head, or that is answered 429 or 5xx goes again to the next candidate the
//! router picks (as `[routing] retry_on` allows, at most `max_attempts` in all).
//! A 401 or 403 to a provider key takes that key out and tries another. The
//! answer handed back is the first good one, or the last upstream's own answer,
//! or keygate's 502/504 when the last attempt got none. Once an answer is
//! handed back nothing here runs again: its body streams to the client as is.
//!
//! The request body is the probe's buffered `Bytes`, so every attempt sends
//! the same bytes (signed again per attempt).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, request};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::forward::Forwarder;
use crate::routing::{Candidates, Failure, Outcome, Router, Target, Tried};
use crate::signing::MessageId;

/// The longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// An answer to stream to the client.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) answer: Response<Incoming>,
    /// Index of the upstream that answered.
    pub(crate) upstream: usize,
    /// Attempts made, this one included.
    pub(crate) attempts: u32,
}

/// No answer: keygate's error for the last attempt.
#[derive(Debug)]
pub(crate) struct Unserved {
    pub(crate) error: ProxyError,
    /// The upstream last tried, if any.
    pub(crate) upstream: Option<usize>,
    pub(crate) attempts: u32,
}

/// One request's way through its candidates.
pub(crate) struct Attempts<'a> {
    pub(crate) router: &'a Router,
    pub(crate) forwarder: &'a Forwarder,
    /// The path below the upstream's base URL.
    pub(crate) path: &'a str,
    pub(crate) parts: &'a request::Parts,
    /// A hash of the keygate key, for affinity.
    pub(crate) sticky: u64,
}

/// What to do after one attempt.
enum Next {
    /// Hand it to the client.
    Serve(Response<Incoming>),
    /// Keep it as the answer if nothing better comes, and try again.
    Retry(Option<Response<Incoming>>, ProxyError),
}

impl Attempts<'_> {
    /// Sends `body` to the candidates until one answers well or the attempts
    /// run out.
    pub(crate) async fn run(
        &self,
        candidates: &Candidates,
        body: &Bytes,
    ) -> Result<Served, Unserved> {
        let settings = self.router.settings();
        let max = settings.max_attempts.max(1);
        let id = MessageId::default();
        let mut tried = Tried::default();
        let mut attempts = 0_u32;
        let mut last: Option<(Target, Option<Response<Incoming>>, ProxyError)> = None;
        while attempts < max {
            let Some(target) = self.router.pick(candidates, &tried, self.sticky) else {
                break;
            };
            attempts += 1;
            let upstream = self.router.upstream(target.upstream);
            let result = self
                .forwarder
                .send(
                    upstream,
                    target.key,
                    self.path,
                    self.parts,
                    body.clone(),
                    &id,
                )
                .await;
            let (outcome, next) = self.judge(result, &mut tried, target);
            if let Some(outcome) = outcome {
                self.router.report(target, outcome, attempts > 1);
            }
            match next {
                Ok(Next::Serve(answer)) => {
                    return Ok(Served {
                        answer,
                        upstream: target.upstream,
                        attempts,
                    });
                }
                Ok(Next::Retry(answer, error)) => {
                    tracing::info!(
                        upstream = upstream.name(),
                        attempt = attempts,
                        status = answer.as_ref().map_or(0, |a| a.status().as_u16()),
                        "upstream attempt failed; the request may go to the next candidate"
                    );
                    last = Some((target, answer, error));
                }
                Err(error) => {
                    return Err(Unserved {
                        error,
                        upstream: Some(target.upstream),
                        attempts,
                    });
                }
            }
        }
        match last {
            Some((target, Some(answer), _)) => Ok(Served {
                answer,
                upstream: target.upstream,
                attempts,
            }),
            Some((target, None, error)) => Err(Unserved {
                error,
                upstream: Some(target.upstream),
                attempts,
            }),
            // Every provider key of every candidate was refused earlier.
            None => Err(Unserved {
                error: ProxyError::UpstreamUnavailable("no usable provider key".into()),
                upstream: None,
                attempts,
            }),
        }
    }

    /// How an attempt went (`None`: nothing about the upstream, which was
    /// never reached), and whether it is served or retried (`Err`: served as
    /// keygate's own error, no retry).
    fn judge(
        &self,
        result: Result<Response<Incoming>, ProxyError>,
        tried: &mut Tried,
        target: Target,
    ) -> (Option<Outcome>, Result<Next, ProxyError>) {
        let retry_on = self.router.settings().retry_on;
        let upstream = self.router.upstream(target.upstream);
        let answer = match result {
            Ok(answer) => answer,
            Err(error) => {
                let (failure, retry) = match &error {
                    ProxyError::UpstreamTimeout(_) => (Failure::Timeout, retry_on.timeout),
                    ProxyError::UpstreamUnavailable(_) => {
                        (Failure::Connection, retry_on.connection)
                    }
                    // Not the upstream's doing (a query that makes no URI).
                    _ => return (None, Err(error)),
                };
                tried.upstream(target);
                let next = if retry {
                    Ok(Next::Retry(None, error))
                } else {
                    Err(error)
                };
                return (Some(Outcome::UpstreamFailed(failure, None)), next);
            }
        };
        let status = answer.status();
        let wait = retry_after(answer.headers());
        let gave_up = |answer| {
            let error = ProxyError::UpstreamUnavailable(upstream.name().to_owned());
            Ok(Next::Retry(Some(answer), error))
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            tried.key(target);
            let next = if retry_on.rate_limited {
                gave_up(answer)
            } else {
                Ok(Next::Serve(answer))
            };
            return (Some(Outcome::RateLimited(wait)), next);
        }
        if status.is_server_error() {
            tried.upstream(target);
            let next = if retry_on.server_error {
                gave_up(answer)
            } else {
                Ok(Next::Serve(answer))
            };
            return (
                Some(Outcome::UpstreamFailed(Failure::ServerError, wait)),
                next,
            );
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) && upstream.has_keys()
        {
            // The operator's provider key, not the client's request: another
            // key (or upstream) may serve it.
            tried.key(target);
            return (Some(Outcome::KeyRefused), gave_up(answer));
        }
        (Some(Outcome::Answered), Ok(Next::Serve(answer)))
    }
}

/// What the upstream asked to wait: OpenAI's `retry-after-ms` (milliseconds,
/// possibly fractional), else `Retry-After` in seconds (an HTTP date is not
/// read), at most [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let wait = if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        Duration::try_from_secs_f64(ms / 1000.0).ok()?
    } else {
        Duration::from_secs(text("retry-after")?.trim().parse::<u64>().ok()?)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn retry_after_reads_milliseconds_first_and_is_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_micros(1_500_500)));
        h.insert("retry-after-ms", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h), None);
        h.remove("retry-after-ms");
        h.insert("retry-after", HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
