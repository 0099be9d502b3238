//! Which upstream serves a model: the first upstream of the endpoint's provider
//! kind whose pattern matches, in configuration order.

use std::sync::Arc;

use crate::endpoint::ProviderKind;
use crate::error::ProxyError;
use crate::text::model_phrase;
use crate::upstream::Upstream;

/// The routing table: upstreams in configuration order.
#[derive(Debug)]
pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
}

impl Router {
    /// A table over `upstreams`, in order.
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> Self {
        Self { upstreams }
    }

    /// The first upstream of `provider` whose patterns match `model`.
    pub fn route(&self, provider: ProviderKind, model: &str) -> Result<&Arc<Upstream>, ProxyError> {
        if let Some(upstream) = self
            .upstreams
            .iter()
            .find(|u| u.kind() == provider && u.serves(model))
        {
            return Ok(upstream);
        }
        let shown = model_phrase(model);
        let message = match self.upstreams.iter().find(|u| u.serves(model)) {
            Some(other) if other.kind() == ProviderKind::Anthropic => {
                format!("{shown} is an Anthropic model: call it through /v1/messages")
            }
            Some(_) => format!("{shown} is served through the OpenAI API, not /v1/messages"),
            None => format!("{shown} does not exist or you do not have access to it"),
        };
        Err(ProxyError::ModelNotFound(message))
    }

    /// Every upstream, in order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }
}
