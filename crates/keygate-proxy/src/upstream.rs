//! Upstream providers: their base URL, provider keys (one, or a pool used in
//! rotation), model patterns, priority and weight, optional request signing, and
//! a pooled hyper client over rustls (ring) per upstream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use keygate_store::limits::MAX_UPSTREAM_NAME_LEN;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::endpoint::ProviderKind;
use crate::error::ConfigError;
use crate::models::ModelPattern;
pub use crate::signing::{HookSecret, SigningConfig};
use crate::signing::{MessageId, Signer};
use crate::upstream_pool::{Connector, UpstreamPool};

/// Default of [`UpstreamConfig::streams_per_connection`]: the
/// `SETTINGS_MAX_CONCURRENT_STREAMS` most providers' HTTP/2 servers allow.
pub const DEFAULT_STREAMS_PER_CONNECTION: u32 = 100;

/// A provider's API key. `Debug` never shows it; the header value built from it is
/// marked sensitive so HTTP/2 never indexes it.
#[derive(Clone)]
pub struct ProviderKey(String);

impl ProviderKey {
    /// Wraps a key read from the environment.
    pub fn new(key: String) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderKey(<redacted>)")
    }
}

/// One `[[upstreams]]` entry, as the gateway is given it.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Name, for logs and the models list.
    pub name: String,
    /// Base URL including the API version, such as `https://api.openai.com/v1`.
    pub base_url: String,
    /// Provider API.
    pub kind: ProviderKind,
    /// The provider keys sent upstream, used in rotation; empty when the
    /// upstream needs none.
    pub provider_keys: Vec<ProviderKey>,
    /// Exact names and trailing-`*` patterns.
    pub models: Vec<String>,
    /// Extra PEM CA certificates trusted for this upstream, besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Lower first: a higher tier is used only when every candidate of the
    /// lower ones is unavailable (default 0).
    pub priority: i32,
    /// Share of requests within its tier (default 1, at least 1).
    pub weight: u32,
    /// Requests signed for the operator's own services.
    pub signing: Option<SigningConfig>,
    /// Most requests sent at once on one connection (an HTTP/2 connection's
    /// streams; default [`DEFAULT_STREAMS_PER_CONNECTION`], at least 1): past
    /// it another connection is opened, rather than the request waiting for a
    /// stream of the first to end. Set it at or below the provider's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub streams_per_connection: u32,
}

impl UpstreamConfig {
    /// An upstream with no provider key, no CA file, priority 0, weight 1 and
    /// no signing.
    pub fn new(name: &str, base_url: &str, kind: ProviderKind, models: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            base_url: base_url.to_owned(),
            kind,
            provider_keys: Vec::new(),
            models,
            ca_file: None,
            priority: 0,
            weight: 1,
            signing: None,
            streams_per_connection: DEFAULT_STREAMS_PER_CONNECTION,
        }
    }
}

/// Connection settings for every upstream.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTimeouts {
    /// TCP connect timeout.
    pub connect: Duration,
    /// Time from sending the request to the response headers.
    pub first_byte: Duration,
    /// Longest silence between two frames of a response body.
    pub idle: Duration,
}

/// A configured upstream, ready to send to.
pub struct Upstream {
    name: String,
    kind: ProviderKind,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    /// One credential header per provider key, in pool order.
    auth: Vec<(HeaderName, HeaderValue)>,
    models: Vec<ModelPattern>,
    priority: i32,
    weight: u32,
    signer: Option<Signer>,
    pool: UpstreamPool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("authority", &self.authority)
            .field("models", &self.models)
            .field("priority", &self.priority)
            .field("weight", &self.weight)
            .field("provider_keys", &self.auth.len())
            .finish_non_exhaustive()
    }
}

/// An [`UpstreamConfig`] once checked: everything [`Upstream::new`] builds from.
struct Checked {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    auth: Vec<(HeaderName, HeaderValue)>,
    models: Vec<ModelPattern>,
    roots: rustls::RootCertStore,
}

impl UpstreamConfig {
    /// Checks the name, the base URL, the model patterns, the provider key and the CA
    /// file, without building a client; `field` names the entry in errors.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        Upstream::check(self, field).map(|_| ())
    }

    /// Whether the provider key would travel unencrypted: `http://` to a host
    /// that is not loopback. Allowed, but worth a warning at start and in
    /// `keygate --check`.
    pub fn sends_key_in_clear(&self) -> bool {
        let Ok(uri) = self.base_url.parse::<Uri>() else {
            return false;
        };
        let host = uri.host().unwrap_or_default();
        let loopback =
            matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") || host.starts_with("127.");
        uri.scheme() == Some(&Scheme::HTTP) && !self.provider_keys.is_empty() && !loopback
    }
}

impl Upstream {
    /// Checks `config` (`field` names it in errors): what building it needs.
    fn check(config: &UpstreamConfig, field: &str) -> Result<Checked, ConfigError> {
        let err = |sub: &str, message: String| ConfigError::new(format!("{field}.{sub}"), message);
        if config.name.is_empty() || config.name.len() > MAX_UPSTREAM_NAME_LEN {
            return Err(err(
                "name",
                format!("must be 1 to {MAX_UPSTREAM_NAME_LEN} characters"),
            ));
        }
        let uri: Uri = config.base_url.parse().map_err(|_| {
            err(
                "base_url",
                "is not a URL; write it like \"https://api.openai.com/v1\"".into(),
            )
        })?;
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS || *s == Scheme::HTTP => s.clone(),
            _ => {
                return Err(err(
                    "base_url",
                    "must start with https:// (or http:// for a local upstream)".into(),
                ));
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            return Err(err("base_url", "has no host".into()));
        };
        if authority.as_str().contains('@') {
            return Err(err(
                "base_url",
                "must not contain credentials; use api_key_env for the provider key".into(),
            ));
        }
        if uri.query().is_some() {
            return Err(err("base_url", "must not have a query string".into()));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        if config.models.is_empty() {
            return Err(err(
                "models",
                "is empty; list the models this upstream serves, such as [\"gpt-4o*\"]".into(),
            ));
        }
        let models = config
            .models
            .iter()
            .map(|m| ModelPattern::parse(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("models", e.to_string()))?;
        if config.weight == 0 {
            return Err(err(
                "weight",
                "must be at least 1; leave the upstream out to send it nothing".into(),
            ));
        }
        if config.streams_per_connection == 0 {
            return Err(err(
                "streams_per_connection",
                format!("must be at least 1 (default {DEFAULT_STREAMS_PER_CONNECTION})"),
            ));
        }
        if let Some(signing) = &config.signing {
            signing
                .validate()
                .map_err(|message| err("signing", message.into()))?;
        }
        let auth = config
            .provider_keys
            .iter()
            .map(|ProviderKey(key)| {
                let (name, value) = match config.kind {
                    ProviderKind::OpenAi => (AUTHORIZATION, format!("Bearer {key}")),
                    ProviderKind::Anthropic => (HeaderName::from_static("x-api-key"), key.clone()),
                };
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    err(
                        "api_key_env",
                        "the provider key contains characters not allowed in a header".into(),
                    )
                })?;
                value.set_sensitive(true);
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let roots =
            load_roots(config.ca_file.as_deref()).map_err(|message| err("ca_file", message))?;
        Ok(Checked {
            scheme,
            authority,
            base_path,
            auth,
            models,
            roots,
        })
    }

    /// Validates `config` (`field` names it in errors) and builds its client.
    pub fn new(
        config: &UpstreamConfig,
        field: &str,
        timeouts: UpstreamTimeouts,
    ) -> Result<Self, ConfigError> {
        let Checked {
            scheme,
            authority,
            base_path,
            auth,
            models,
            roots,
        } = Self::check(config, field)?;
        if config.sends_key_in_clear() {
            tracing::warn!(
                upstream = %config.name,
                "base_url uses http:// to a host that is not loopback: the provider key travels unencrypted"
            );
        }
        let connector = build_connector(&scheme, roots, timeouts)
            .map_err(|message| ConfigError::new(format!("{field}.ca_file"), message))?;
        let streams = usize::try_from(config.streams_per_connection).unwrap_or(usize::MAX);
        let pool = UpstreamPool::new(connector, streams);
        let signer = config
            .signing
            .as_ref()
            .map(Signer::new)
            .transpose()
            .map_err(|message| ConfigError::new(format!("{field}.signing"), message))?;
        Ok(Self {
            name: config.name.clone(),
            kind: config.kind,
            scheme,
            authority,
            base_path,
            auth,
            models,
            priority: config.priority,
            weight: config.weight,
            signer,
            pool,
        })
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Provider kind.
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// Model patterns, in order.
    pub fn models(&self) -> &[ModelPattern] {
        &self.models
    }

    /// Whether a pattern matches `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|p| p.matches(model))
    }

    /// The upstream URI for an endpoint `suffix` and an already stripped query.
    pub(crate) fn uri(&self, suffix: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let path = match query {
            Some(q) if !q.is_empty() => format!("{}{suffix}?{q}", self.base_path),
            _ => format!("{}{suffix}", self.base_path),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(path)?)
            .build()
    }

    /// Priority tier: lower first.
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Weight within its tier.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// How many provider-key slots it has: its pool, or one (keyless) slot.
    pub fn key_slots(&self) -> usize {
        self.auth.len().max(1)
    }

    /// Whether it sends a provider key at all.
    pub(crate) fn has_keys(&self) -> bool {
        !self.auth.is_empty()
    }

    /// Adds the credential header of provider key `slot`.
    pub(crate) fn authorize(&self, headers: &mut HeaderMap, slot: usize) {
        if let Some((name, value)) = self.auth.get(slot) {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Signs the outgoing request, when signing is configured: over `body`,
    /// the exact bytes sent.
    pub(crate) fn sign(&self, headers: &mut HeaderMap, id: &MessageId, body: &[u8]) {
        if let Some(signer) = &self.signer {
            signer.sign(headers, id.get(), body);
        }
    }

    /// Its connections.
    pub(crate) fn pool(&self) -> &UpstreamPool {
        &self.pool
    }
}

/// The webpki roots plus the certificates in `ca_file`.
fn load_roots(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{shown} is not a PEM certificate file: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{shown} holds no PEM certificate"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{shown} holds a certificate rustls rejects: {e}"))?;
        }
    }
    Ok(roots)
}

/// The connector every shard of the upstream's pool connects through: TCP with
/// the connect timeout, then for `https://` TLS (ALPN h2 and http/1.1).
fn build_connector(
    scheme: &Scheme,
    roots: rustls::RootCertStore,
    timeouts: UpstreamTimeouts,
) -> Result<Connector, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts.connect));
    if *scheme == Scheme::HTTP {
        return Ok(Connector::Plain(http));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    http.enforce_http(false);
    // ALPN is set by the builder (h2, http/1.1); the config above must not set it.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Connector::Tls(https))
}
