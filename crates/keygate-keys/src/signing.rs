//! Outbound request signing and its verification, for upstreams that are the
//! operator's own services: the Standard Webhooks scheme (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`), and for receivers written against seed 004 an
//! `X-Request-Nonce` header holding a bcrypt hash of the hook key.
//!
//! The HMAC signature is the one to check: it binds the exact body bytes and a
//! timestamp, so a captured request can neither be altered nor replayed past the
//! tolerance. The nonce is the same for every request of a process (a bcrypt
//! hash per request would cost tens of milliseconds each); it proves only that
//! the sender knows the hook key, and anyone who saw one request can replay it.
//!
//! A receiver verifies with [`verify_standard_webhook`] and
//! [`verify_request_nonce`]:
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use keygate_keys::{standard_webhook_headers, verify_standard_webhook};
//!
//! let secret = b"my hook key";
//! let body = br#"{"model":"worker-1"}"#;
//! let now = std::time::SystemTime::now()
//!     .duration_since(std::time::UNIX_EPOCH)
//!     .unwrap()
//!     .as_secs() as i64;
//! let mut headers = HeaderMap::new();
//! for (name, value) in standard_webhook_headers(secret, "msg_1", now, body).unwrap() {
//!     headers.insert(name, value);
//! }
//! assert!(verify_standard_webhook(secret, &headers, body, Duration::from_secs(300)).is_ok());
//! assert!(verify_standard_webhook(secret, &headers, b"{}", Duration::from_secs(300)).is_err());
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit as _, Mac as _};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use subtle::ConstantTimeEq as _;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// `webhook-id`.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp`: Unix seconds.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature`: space-separated `v1,<base64>` entries.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// `x-request-nonce`: a bcrypt hash of the hook key.
pub const REQUEST_NONCE: HeaderName = HeaderName::from_static("x-request-nonce");

/// The bcrypt cost keygate hashes the hook key at.
pub const NONCE_COST: u32 = 10;
/// The highest bcrypt cost [`verify_request_nonce`] accepts: a forged header
/// with a higher cost would only burn the receiver's CPU.
pub const MAX_NONCE_COST: u32 = 12;

/// Why a signed request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing or not text.
    #[error("the {0} header is missing or not text")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not Unix seconds.
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is further from now than the tolerance.
    #[error("webhook-timestamp is outside the tolerance")]
    Stale,
    /// No `v1` signature matches.
    #[error("no signature matches")]
    Mismatch,
    /// The nonce is not a bcrypt hash, or one with a cost above the limit.
    #[error("x-request-nonce is not a bcrypt hash of an accepted cost")]
    BadNonce,
    /// Hashing failed (the OS random number generator, for a new salt).
    #[error("bcrypt failed: {0}")]
    Hash(String),
}

/// `v1,<base64 HMAC-SHA256 over "id.timestamp.body">` with `secret` as the key.
pub fn sign_standard_webhook(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(mac(secret, id, timestamp, body)))
}

/// The three Standard Webhooks headers for one request.
pub fn standard_webhook_headers(
    secret: &[u8],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<[(HeaderName, HeaderValue); 3], http::header::InvalidHeaderValue> {
    Ok([
        (WEBHOOK_ID, HeaderValue::from_str(id)?),
        (WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp)),
        (
            WEBHOOK_SIGNATURE,
            HeaderValue::from_str(&sign_standard_webhook(secret, id, timestamp, body))?,
        ),
    ])
}

/// Checks a Standard Webhooks request against `secret`, with the clock now:
/// the timestamp within `tolerance` either way, and one `v1` signature equal
/// (compared in constant time) to the HMAC over these exact body bytes.
pub fn verify_standard_webhook(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    verify_standard_webhook_at(secret, headers, body, tolerance, now)
}

/// [`verify_standard_webhook`] at a given time (Unix seconds).
pub fn verify_standard_webhook_at(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
    now: i64,
) -> Result<(), SignatureError> {
    let text = |name: &HeaderName, shown: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(SignatureError::MissingHeader(shown))
    };
    let id = text(&WEBHOOK_ID, "webhook-id")?;
    let timestamp: i64 = text(&WEBHOOK_TIMESTAMP, "webhook-timestamp")?
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let signatures = text(&WEBHOOK_SIGNATURE, "webhook-signature")?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, id, timestamp, body);
    let mut matched = subtle::Choice::from(0);
    for entry in signatures.split(' ') {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        if let Ok(given) = STANDARD.decode(encoded) {
            matched |= given.as_slice().ct_eq(expected.as_slice());
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// A bcrypt hash of `hook_key` at [`NONCE_COST`], with a fresh salt.
pub fn request_nonce(hook_key: &[u8]) -> Result<String, SignatureError> {
    bcrypt::hash(hook_key, NONCE_COST).map_err(|e| SignatureError::Hash(e.to_string()))
}

/// Checks an `X-Request-Nonce` value against `hook_key`. A hash whose cost is
/// above [`MAX_NONCE_COST`] is refused before any hashing.
pub fn verify_request_nonce(hook_key: &[u8], header: &str) -> Result<(), SignatureError> {
    let parts: bcrypt::HashParts = header.parse().map_err(|_| SignatureError::BadNonce)?;
    if parts.get_cost() > MAX_NONCE_COST {
        return Err(SignatureError::BadNonce);
    }
    match bcrypt::verify(hook_key, header) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SignatureError::Mismatch),
        Err(_) => Err(SignatureError::BadNonce),
    }
}

fn mac(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_590_000;

    fn signed(secret: &[u8], body: &[u8], at: i64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in standard_webhook_headers(secret, "msg_abc", at, body).unwrap() {
            headers.insert(name, value);
        }
        headers
    }

    #[test]
    fn a_signature_verifies_and_fails_when_anything_changes() {
        let tolerance = Duration::from_secs(300);
        let headers = signed(b"hook", b"{\"a\":1}", NOW);
        assert_eq!(
            verify_standard_webhook_at(b"hook", &headers, b"{\"a\":1}", tolerance, NOW),
            Ok(())
        );
        assert_eq!(
            verify_standard_webhook_at(b"hook", &headers, b"{\"a\":2}", tolerance, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_standard_webhook_at(b"other", &headers, b"{\"a\":1}", tolerance, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_standard_webhook_at(b"hook", &headers, b"{\"a\":1}", tolerance, NOW + 301),
            Err(SignatureError::Stale)
        );
        let mut moved = headers.clone();
        moved.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(NOW + 1));
        assert_eq!(
            verify_standard_webhook_at(b"hook", &moved, b"{\"a\":1}", tolerance, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_reference_vector_matches() {
        // The Standard Webhooks specification's example: secret
        // "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" (base64 of the key bytes).
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign_standard_webhook(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_signatures_and_garbage_are_handled() {
        let mut headers = signed(b"hook", b"x", NOW);
        let good = headers.get(WEBHOOK_SIGNATURE).unwrap().to_str().unwrap();
        let both = format!("v1,AAAA v2,zz {good}");
        headers.insert(WEBHOOK_SIGNATURE, HeaderValue::from_str(&both).unwrap());
        let tolerance = Duration::from_secs(5);
        assert!(verify_standard_webhook_at(b"hook", &headers, b"x", tolerance, NOW).is_ok());
        headers.remove(WEBHOOK_ID);
        assert_eq!(
            verify_standard_webhook_at(b"hook", &headers, b"x", tolerance, NOW),
            Err(SignatureError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn the_nonce_verifies_and_a_costly_one_is_refused_unhashed() {
        let nonce = request_nonce(b"hook").unwrap();
        assert_eq!(verify_request_nonce(b"hook", &nonce), Ok(()));
        assert_eq!(
            verify_request_nonce(b"wrong", &nonce),
            Err(SignatureError::Mismatch)
        );
        // Cost 31 would take days; it is refused from the header alone.
        let costly = format!("$2b$31${}", &nonce[7..]);
        assert_eq!(
            verify_request_nonce(b"hook", &costly),
            Err(SignatureError::BadNonce)
        );
        assert_eq!(
            verify_request_nonce(b"hook", "not a hash"),
            Err(SignatureError::BadNonce)
        );
    }
}
