//! `KeyAuthLayer`: a `tower::Layer` that lets a request through to the wrapped
//! service only with a usable key that has the route's scope, and puts the
//! [`AuthenticatedKey`] into the request's extensions for the handler.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use keygate_store::Scope;
use tower::{Layer, Service};

use crate::auth::{AuthenticatedKey, KeyAuth};

/// Wraps a route's service so that it needs a key with `scope`.
///
/// ```
/// use bytes::Bytes;
/// use embedded_auth::{AuthenticatedKey, KeyAuth, KeyAuthLayer};
/// use http_body_util::Full;
/// use keygate_store::Scope;
/// use tower::ServiceBuilder;
///
/// fn reports(auth: KeyAuth) -> impl tower::Service<http::Request<()>> {
///     ServiceBuilder::new()
///         .layer(KeyAuthLayer::new(auth, Scope::Usage))
///         .service_fn(|request: http::Request<()>| async move {
///             let key = request.extensions().get::<AuthenticatedKey>();
///             let id = key.map(|key| key.id.to_string()).unwrap_or_default();
///             Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(id))))
///         })
/// }
/// ```
#[derive(Clone, Debug)]
pub struct KeyAuthLayer {
    auth: KeyAuth,
    scope: Scope,
}

impl KeyAuthLayer {
    /// A layer that checks keys with `auth` and requires `scope`.
    pub fn new(auth: KeyAuth, scope: Scope) -> Self {
        Self { auth, scope }
    }
}

impl<S> Layer<S> for KeyAuthLayer {
    type Service = KeyAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyAuthService {
            inner,
            auth: self.auth.clone(),
            scope: self.scope,
        }
    }
}

/// The service [`KeyAuthLayer`] makes: refuses with a JSON error (see
/// [`crate::AuthError::into_response`]) or calls the inner service.
#[derive(Clone, Debug)]
pub struct KeyAuthService<S> {
    inner: S,
    auth: KeyAuth,
    scope: Scope,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for KeyAuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future; a clone waits
        // for the next `poll_ready`.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let auth = self.auth.clone();
        let scope = self.scope;
        Box::pin(async move {
            let checked = auth
                .authenticate(request.headers(), scope, chrono::Utc::now())
                .await;
            match checked {
                Ok(key) => {
                    request.extensions_mut().insert::<AuthenticatedKey>(key);
                    inner.call(request).await
                }
                Err(refused) => Ok(refused.into_response()),
            }
        })
    }
}
