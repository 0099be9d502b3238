//! Which endpoint a request is for: its method and path (with or without `/v1`,
//! with an object id where the path has one), the scope a key needs for it, the
//! provider API that serves it, how its body carries `model`, and whether it is
//! billed.

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
    /// No `model`: a stored object's endpoint (files, batches, stored
    /// responses), its body (if any) forwarded as it came.
    Opaque,
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
    /// `POST /v1/messages/count_tokens` (Anthropic), never billed.
    CountTokens,
    /// `GET /v1/responses/{id}`.
    GetResponse,
    /// `DELETE /v1/responses/{id}`.
    DeleteResponse,
    /// `GET /v1/responses/{id}/input_items`.
    ResponseInputItems,
    /// `GET /v1/files`.
    ListFiles,
    /// `POST /v1/files`.
    UploadFile,
    /// `GET /v1/files/{id}`.
    GetFile,
    /// `DELETE /v1/files/{id}`.
    DeleteFile,
    /// `GET /v1/files/{id}/content`.
    FileContent,
    /// `GET /v1/batches`.
    ListBatches,
    /// `POST /v1/batches`.
    CreateBatch,
    /// `GET /v1/batches/{id}`.
    GetBatch,
    /// `POST /v1/batches/{id}/cancel`.
    CancelBatch,
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

/// The longest object id keygate forwards in a path.
const MAX_OBJECT_ID_LEN: usize = 128;

impl Endpoint {
    const FORWARDED: [Endpoint; 24] = [
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
        Self::CountTokens,
        Self::GetResponse,
        Self::DeleteResponse,
        Self::ResponseInputItems,
        Self::ListFiles,
        Self::UploadFile,
        Self::GetFile,
        Self::DeleteFile,
        Self::FileContent,
        Self::ListBatches,
        Self::CreateBatch,
        Self::GetBatch,
        Self::CancelBatch,
    ];

    /// Finds the endpoint for `method` and `path` (with or without the `/v1`
    /// prefix). Returns the model id for `GET /v1/models/{model}` and the
    /// object id for the stored objects' paths.
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
        let (endpoint, id) = if let Some(own) = Self::own_view(rest) {
            Self::for_method(method, [(own, None)])?
        } else if rest == "/models" {
            Self::for_method(method, [(Self::ListModels, None)])?
        } else if let Some(id) = rest.strip_prefix("/models/").filter(|id| !id.is_empty()) {
            Self::for_method(method, [(Self::GetModel, Some(id))])?
        } else {
            Self::for_method(
                method,
                Self::FORWARDED
                    .iter()
                    .filter_map(|e| e.matches(rest).map(|id| (*e, id))),
            )?
        };
        if let Some(id) = id.filter(|_| endpoint != Self::GetModel) {
            if !valid_object_id(id) {
                return Err(ProxyError::InvalidRequest(format!(
                    "the id in the path must be 1 to {MAX_OBJECT_ID_LEN} letters, digits, '-', '_' or '.'"
                )));
            }
        }
        Ok((endpoint, id))
    }

    /// The first of the endpoints whose shape the path has that takes
    /// `method`; an unknown route when none has the shape, and a method not
    /// allowed (naming the first one's route) when none takes the method.
    fn for_method<'p>(
        method: &Method,
        found: impl IntoIterator<Item = (Endpoint, Option<&'p str>)>,
    ) -> Result<(Endpoint, Option<&'p str>), ProxyError> {
        let mut first = None;
        for (endpoint, id) in found {
            if endpoint.method() == method {
                return Ok((endpoint, id));
            }
            first.get_or_insert(endpoint);
        }
        match first {
            None => Err(ProxyError::UnknownRoute),
            Some(first) => Err(ProxyError::MethodNotAllowed {
                method: method.clone(),
                path: first.route(),
            }),
        }
    }

    /// Whether `rest` has this endpoint's shape, and the id segment if any.
    /// (`{id}` is a template's only brace, so a `char` split finds it without
    /// building a substring searcher per endpoint and request.)
    fn matches(self, rest: &str) -> Option<Option<&str>> {
        let template = self.suffix();
        let Some((before, after)) = template.split_once('{') else {
            return (template == rest).then_some(None);
        };
        let after = after.strip_prefix("id}")?;
        let id = rest.strip_prefix(before)?.strip_suffix(after)?;
        (!id.is_empty() && !id.contains('/')).then_some(Some(id))
    }

    /// The path below the upstream's base URL for this request: the suffix,
    /// with `id` in place of `{id}`.
    pub fn upstream_path(self, id: Option<&str>) -> String {
        match id {
            Some(id) if self != Self::GetModel => self.suffix().replace("{id}", id),
            _ => self.suffix().to_owned(),
        }
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
            Self::ListModels
            | Self::GetModel
            | Self::KeyInfo
            | Self::KeyUsage
            | Self::Quota
            | Self::GetResponse
            | Self::ResponseInputItems
            | Self::ListFiles
            | Self::GetFile
            | Self::FileContent
            | Self::ListBatches
            | Self::GetBatch => Method::GET,
            Self::DeleteResponse | Self::DeleteFile => Method::DELETE,
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
            Self::CountTokens => "/messages/count_tokens",
            Self::GetResponse | Self::DeleteResponse => "/responses/{id}",
            Self::ResponseInputItems => "/responses/{id}/input_items",
            Self::ListFiles | Self::UploadFile => "/files",
            Self::GetFile | Self::DeleteFile => "/files/{id}",
            Self::FileContent => "/files/{id}/content",
            Self::ListBatches | Self::CreateBatch => "/batches",
            Self::GetBatch => "/batches/{id}",
            Self::CancelBatch => "/batches/{id}/cancel",
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
            Self::CountTokens => "/v1/messages/count_tokens",
            Self::GetResponse | Self::DeleteResponse => "/v1/responses/{id}",
            Self::ResponseInputItems => "/v1/responses/{id}/input_items",
            Self::ListFiles | Self::UploadFile => "/v1/files",
            Self::GetFile | Self::DeleteFile => "/v1/files/{id}",
            Self::FileContent => "/v1/files/{id}/content",
            Self::ListBatches | Self::CreateBatch => "/v1/batches",
            Self::GetBatch => "/v1/batches/{id}",
            Self::CancelBatch => "/v1/batches/{id}/cancel",
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
            Self::ChatCompletions
            | Self::Completions
            | Self::Responses
            | Self::Messages
            | Self::CountTokens => Scope::Chat,
            Self::GetResponse
            | Self::ResponseInputItems
            | Self::ListFiles
            | Self::GetFile
            | Self::FileContent
            | Self::ListBatches
            | Self::GetBatch => Scope::Stored,
            Self::UploadFile | Self::CreateBatch => Scope::Upload,
            Self::DeleteResponse | Self::DeleteFile | Self::CancelBatch => Scope::Delete,
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
            Self::Messages | Self::CountTokens => ProviderKind::Anthropic,
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
            Self::GetResponse
            | Self::DeleteResponse
            | Self::ResponseInputItems
            | Self::ListFiles
            | Self::UploadFile
            | Self::GetFile
            | Self::DeleteFile
            | Self::FileContent
            | Self::ListBatches
            | Self::CreateBatch
            | Self::GetBatch
            | Self::CancelBatch => BodyFormat::Opaque,
            _ => BodyFormat::Json,
        }
    }

    /// Whether keygate bills it: not token counting, and not the stored
    /// objects' endpoints (no generation happens in them).
    pub fn billed(self) -> bool {
        self != Self::CountTokens && self.body_format() != BodyFormat::Opaque
    }

    /// Whether a public (browser) key may call the endpoint.
    pub fn allows_public_keys(self) -> bool {
        matches!(
            self,
            Self::ChatCompletions | Self::ListModels | Self::GetModel
        )
    }
}

/// An id keygate puts in an upstream path: letters, digits, `-`, `_`, `.`,
/// not `.` or `..`, at most [`MAX_OBJECT_ID_LEN`] bytes.
fn valid_object_id(id: &str) -> bool {
    id.len() <= MAX_OBJECT_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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

    #[test]
    fn object_paths_resolve_by_method_with_their_id() {
        let cases = [
            (
                Method::POST,
                "/v1/messages/count_tokens",
                Endpoint::CountTokens,
                None,
            ),
            (
                Method::GET,
                "/v1/responses/resp_1",
                Endpoint::GetResponse,
                Some("resp_1"),
            ),
            (
                Method::DELETE,
                "/v1/responses/resp_1",
                Endpoint::DeleteResponse,
                Some("resp_1"),
            ),
            (
                Method::GET,
                "/v1/responses/resp_1/input_items",
                Endpoint::ResponseInputItems,
                Some("resp_1"),
            ),
            (Method::GET, "/v1/files", Endpoint::ListFiles, None),
            (Method::POST, "/files", Endpoint::UploadFile, None),
            (
                Method::GET,
                "/v1/files/file-abc/content",
                Endpoint::FileContent,
                Some("file-abc"),
            ),
            (
                Method::DELETE,
                "/v1/files/file-abc",
                Endpoint::DeleteFile,
                Some("file-abc"),
            ),
            (Method::POST, "/v1/batches", Endpoint::CreateBatch, None),
            (
                Method::POST,
                "/v1/batches/batch_1/cancel",
                Endpoint::CancelBatch,
                Some("batch_1"),
            ),
            (Method::POST, "/v1/responses", Endpoint::Responses, None),
        ];
        for (method, path, endpoint, id) in cases {
            assert_eq!(
                Endpoint::resolve(&method, path).unwrap(),
                (endpoint, id),
                "{path}"
            );
        }
        assert_eq!(
            Endpoint::GetFile.upstream_path(Some("file-abc")),
            "/files/file-abc"
        );
        assert!(matches!(
            Endpoint::resolve(&Method::PUT, "/v1/files/file-abc"),
            Err(ProxyError::MethodNotAllowed {
                path: "/v1/files/{id}",
                ..
            })
        ));
        for bad in [
            "/v1/files/..",
            "/v1/files/a%2Fb",
            "/v1/responses/.x/input_items",
        ] {
            assert!(
                matches!(
                    Endpoint::resolve(&Method::GET, bad),
                    Err(ProxyError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
        assert!(!Endpoint::CountTokens.billed() && !Endpoint::UploadFile.billed());
        assert!(Endpoint::Messages.billed());
    }
}
