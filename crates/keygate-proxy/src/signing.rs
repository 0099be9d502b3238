//! Requests signed for upstreams that are the operator's own services: the
//! Standard Webhooks headers over the exact bytes sent, and seed 004's
//! `X-Request-Nonce` (a bcrypt hash of the hook key, computed once at start).
//! The schemes themselves live in `keygate-keys`, with their verifiers.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::HeaderValue;
use keygate_keys::{REQUEST_NONCE, request_nonce, standard_webhook_headers};
use zeroize::Zeroizing;

/// The hook key. `Debug` never shows it; it is zeroed on drop.
#[derive(Clone)]
pub struct HookSecret(Zeroizing<String>);

impl HookSecret {
    /// Wraps a key read from the environment. Its UTF-8 bytes are the HMAC key.
    pub fn new(secret: String) -> Self {
        Self(Zeroizing::new(secret))
    }
}

impl std::fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSecret(<redacted>)")
    }
}

/// An upstream's `[upstreams.signing]`.
#[derive(Clone, Debug)]
pub struct SigningConfig {
    /// The hook key.
    pub secret: HookSecret,
    /// Send `webhook-id`, `webhook-timestamp` and `webhook-signature`.
    pub standard_webhooks: bool,
    /// Send `X-Request-Nonce`.
    pub request_nonce: bool,
}

impl SigningConfig {
    /// What is wrong with it, if anything.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if self.secret.0.is_empty() {
            return Err("the hook key is empty");
        }
        if !self.standard_webhooks && !self.request_nonce {
            return Err(
                "turns on neither standard_webhooks nor request_nonce; remove it or set one",
            );
        }
        Ok(())
    }
}

/// An upstream's signer, ready.
pub(crate) struct Signer {
    secret: HookSecret,
    standard_webhooks: bool,
    nonce: Option<HeaderValue>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("standard_webhooks", &self.standard_webhooks)
            .field("request_nonce", &self.nonce.is_some())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Builds the signer; the nonce is hashed here, once.
    pub(crate) fn new(config: &SigningConfig) -> Result<Self, String> {
        config.validate()?;
        let nonce = if config.request_nonce {
            let hash = request_nonce(config.secret.0.as_bytes()).map_err(|e| e.to_string())?;
            let mut value = HeaderValue::from_str(&hash).map_err(|e| e.to_string())?;
            value.set_sensitive(true);
            Some(value)
        } else {
            None
        };
        Ok(Self {
            secret: config.secret.clone(),
            standard_webhooks: config.standard_webhooks,
            nonce,
        })
    }

    /// Adds the signature headers for a request with message `id` and `body`.
    pub(crate) fn sign(&self, headers: &mut HeaderMap, id: &str, body: &[u8]) {
        if self.standard_webhooks {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            // The id is keygate's own ASCII, so the headers are valid.
            if let Ok(signed) = standard_webhook_headers(self.secret.0.as_bytes(), id, now, body) {
                for (name, value) in signed {
                    headers.insert(name, value);
                }
            }
        }
        if let Some(nonce) = &self.nonce {
            headers.insert(REQUEST_NONCE, nonce.clone());
        }
    }
}

/// A fresh message id: `msg_` and 24 hex digits from the thread-local RNG.
pub(crate) fn message_id() -> String {
    format!("msg_{:024x}", rand::random::<u128>() >> 32)
}

/// A request's message id, the same for each of its attempts, drawn the first
/// time a signing upstream asks for it (most upstreams sign nothing).
#[derive(Debug, Default)]
pub(crate) struct MessageId(std::sync::OnceLock<String>);

impl MessageId {
    /// The id, drawn on first use.
    pub(crate) fn get(&self) -> &str {
        self.0.get_or_init(message_id)
    }
}
