//! Which endpoint a request is for: its method and path (with or without `/v1`),
//! the scope a key needs for it, the provider API that serves it and how its body
//! carries `model`.

use http::Method;
use keygate_store::Scope;

use crate::error::ProxyError;

/// The provider API an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and compatible APIs: `Authorization: Bearer`.
    OpenAi,
    /// Anthropic's Messages API: `x-api-key`.
    Anthropic,
}

impl ProviderKind {
    /// The name used in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// How an endpoint's request body carries `model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// A JSON object.
    Json,
    /// `multipart/form-data` with a `model` field (file uploads).
    Multipart,
}

/// An endpoint keygate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/images/generations`.
    ImageGenerations,
    /// `POST /v1/images/edits`.
    ImageEdits,
    /// `POST /v1/images/variations`.
    ImageVariations,
    /// `POST /v1/audio/speech`.
    AudioSpeech,
    /// `POST /v1/audio/transcriptions`.
    AudioTranscriptions,
    /// `POST /v1/audio/translations`.
    AudioTranslations,
    /// `GET /v1/models`, answered by keygate.
    ListModels,
    /// `GET /v1/models/{model}`, answered by keygate.
    GetModel,
    /// `GET /v1/key`: the presented key's own settings, answered by keygate.
    KeyInfo,
    /// `GET /v1/usage`: the presented key's usage and its account's balance.
    KeyUsage,
    /// `GET /v1/quota`: the same as `/v1/usage`, under the name seed 003 uses.
    Quota,
}

impl Endpoint {
    const FORWARDED: [Endpoint; 11] = [
        Self::ChatCompletions,
        Self::Completions,
        Self::Responses,
        Self::Messages,
        Self::Embeddings,
        Self::ImageGenerations,
        Self::ImageEdits,
        Self::ImageVariations,
        Self::AudioSpeech,
        Self::AudioTranscriptions,
        Self::AudioTranslations,
    ];

    /// Finds the endpoint for `method` and `path` (with or without the `/v1`
    /// prefix). Returns the model id for `GET /v1/models/{model}`.
    pub fn resolve<'p>(
        method: &Method,
        path: &'p str,
    ) -> Result<(Endpoint, Option<&'p str>), ProxyError> {
        let rest = path
            .strip_prefix("/v1")
            .filter(|r| r.starts_with('/'))
            .unwrap_or(path);
        let rest = rest
            .strip_suffix('/')
            .filter(|r| !r.is_empty())
            .unwrap_or(rest);
        let (endpoint, model) = if let Some(own) = Self::own_view(rest) {
            (own, None)
        } else if rest == "/models" {
            (Self::ListModels, None)
        } else if let Some(id) = rest.strip_prefix("/models/").filter(|id| !id.is_empty()) {
            (Self::GetModel, Some(id))
        } else {
            match Self::FORWARDED.iter().find(|e| e.suffix() == rest) {
                Some(endpoint) => (*endpoint, None),
                None => {
                    return Err(ProxyError::UnknownRoute);
                }
            }
        };
        if method != endpoint.method() {
            return Err(ProxyError::MethodNotAllowed {
                method: method.clone(),
                path: endpoint.route(),
            });
        }
        Ok((endpoint, model))
    }

    fn own_view(rest: &str) -> Option<Endpoint> {
        match rest {
            "/key" => Some(Self::KeyInfo),
            "/usage" => Some(Self::KeyUsage),
            "/quota" => Some(Self::Quota),
            _ => None,
        }
    }

    /// The method the endpoint takes.
    pub fn method(self) -> Method {
        match self {
            Self::ListModels | Self::GetModel | Self::KeyInfo | Self::KeyUsage | Self::Quota => {
                Method::GET
            }
            _ => Method::POST,
        }
    }

    /// The path below the upstream's base URL, such as `/chat/completions`.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Responses => "/responses",
            Self::Messages => "/messages",
            Self::Embeddings => "/embeddings",
            Self::ImageGenerations => "/images/generations",
            Self::ImageEdits => "/images/edits",
            Self::ImageVariations => "/images/variations",
            Self::AudioSpeech => "/audio/speech",
            Self::AudioTranscriptions => "/audio/transcriptions",
            Self::AudioTranslations => "/audio/translations",
            Self::ListModels => "/models",
            Self::GetModel => "/models/{model}",
            Self::KeyInfo => "/key",
            Self::KeyUsage => "/usage",
            Self::Quota => "/quota",
        }
    }

    /// The canonical route, as logged: never the raw path.
    pub fn route(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Responses => "/v1/responses",
            Self::Messages => "/v1/messages",
            Self::Embeddings => "/v1/embeddings",
            Self::ImageGenerations => "/v1/images/generations",
            Self::ImageEdits => "/v1/images/edits",
            Self::ImageVariations => "/v1/images/variations",
            Self::AudioSpeech => "/v1/audio/speech",
            Self::AudioTranscriptions => "/v1/audio/transcriptions",
            Self::AudioTranslations => "/v1/audio/translations",
            Self::ListModels => "/v1/models",
            Self::GetModel => "/v1/models/{model}",
            Self::KeyInfo => "/v1/key",
            Self::KeyUsage => "/v1/usage",
            Self::Quota => "/v1/quota",
        }
    }

    /// The scope a key needs for this endpoint.
    pub fn scope(self) -> Scope {
        match self {
            Self::ChatCompletions | Self::Completions | Self::Responses | Self::Messages => {
                Scope::Chat
            }
            Self::Embeddings => Scope::Embeddings,
            Self::ImageGenerations => Scope::Image,
            Self::ImageEdits | Self::ImageVariations => Scope::ImageEdit,
            Self::AudioSpeech => Scope::Tts,
            Self::AudioTranscriptions | Self::AudioTranslations => Scope::Stt,
            Self::ListModels | Self::GetModel => Scope::Models,
            Self::KeyInfo | Self::KeyUsage | Self::Quota => Scope::Usage,
        }
    }

    /// The provider kind that serves the endpoint.
    pub fn provider(self) -> ProviderKind {
        match self {
            Self::Messages => ProviderKind::Anthropic,
            _ => ProviderKind::OpenAi,
        }
    }

    /// How the request body carries `model`.
    pub fn body_format(self) -> BodyFormat {
        match self {
            Self::ImageEdits
            | Self::ImageVariations
            | Self::AudioTranscriptions
            | Self::AudioTranslations => BodyFormat::Multipart,
            _ => BodyFormat::Json,
        }
    }

    /// Whether a public (browser) key may call the endpoint.
    pub fn allows_public_keys(self) -> bool {
        matches!(
            self,
            Self::ChatCompletions | Self::ListModels | Self::GetModel
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_with_and_without_v1() {
        for path in [
            "/v1/chat/completions",
            "/chat/completions",
            "/v1/chat/completions/",
        ] {
            let (endpoint, _) = Endpoint::resolve(&Method::POST, path).unwrap();
            assert_eq!(endpoint, Endpoint::ChatCompletions, "{path}");
        }
        let (endpoint, id) = Endpoint::resolve(&Method::GET, "/v1/models/gpt-4o").unwrap();
        assert_eq!((endpoint, id), (Endpoint::GetModel, Some("gpt-4o")));
        assert!(matches!(
            Endpoint::resolve(&Method::GET, "/v1/chat/completions"),
            Err(ProxyError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            Endpoint::resolve(&Method::POST, "/v1/nope"),
            Err(ProxyError::UnknownRoute)
        ));
        assert!(matches!(
            Endpoint::resolve(&Method::POST, "/v1v1/chat/completions"),
            Err(ProxyError::UnknownRoute)
        ));
    }
}
