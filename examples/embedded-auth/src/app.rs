//! The example service: its routes, each protected by its own [`KeyAuthLayer`],
//! and `serve`, a plain hyper-util accept loop with graceful shutdown.
//!
//! | route | key | answer |
//! |---|---|---|
//! | `GET /reports` | scope `usage` | 200, the account's (empty) list of reports |
//! | `POST /jobs` | scope `chat` | 202, the job accepted |
//! | `GET /healthz` | none | 200 |
//! | anything else | none | 404 |

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use keygate_store::Scope;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::auth::{AuthenticatedKey, KeyAuth, json_error};
use crate::layer::KeyAuthLayer;

/// The response body of every route.
pub type Body = Full<Bytes>;

/// How long open connections get to finish once shutdown begins.
const GRACE: Duration = Duration::from_secs(10);

/// Serves the example's routes on `listener` until `shutdown` resolves, then stops
/// accepting and gives open connections [`GRACE`] to finish.
pub async fn serve(listener: TcpListener, auth: KeyAuth, shutdown: impl Future<Output = ()>) {
    let app = routes(&auth);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(
            builder
                .serve_connection(TokioIo::new(tcp), service)
                .into_owned(),
        );
        // Watched by `graceful`, which the shutdown below waits for; a connection
        // still open after the grace period ends with the runtime.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
}

/// Every route; the protected ones each behind a layer naming their scope.
fn routes(
    auth: &KeyAuth,
) -> impl Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let reports = ServiceBuilder::new()
        .layer(KeyAuthLayer::new(auth.clone(), Scope::Usage))
        .service_fn(reports);
    let jobs = ServiceBuilder::new()
        .layer(KeyAuthLayer::new(auth.clone(), Scope::Chat))
        .service_fn(jobs);
    tower::service_fn(move |request: Request<Incoming>| {
        let (reports, jobs) = (reports.clone(), jobs.clone());
        async move {
            match (request.method(), request.uri().path()) {
                (&Method::GET, "/reports") => reports.oneshot(request).await,
                (&Method::POST, "/jobs") => jobs.oneshot(request).await,
                (&Method::GET, "/healthz") => {
                    Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ok" })))
                }
                _ => Ok(json_error(
                    StatusCode::NOT_FOUND,
                    "unknown_route",
                    "no such route; try GET /reports or POST /jobs",
                )),
            }
        }
    })
}

/// `GET /reports`: what the key's account may read.
async fn reports(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let Some(key) = request.extensions().get::<AuthenticatedKey>() else {
        return Ok(unguarded());
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "key_id": key.id.as_str(),
            "account_id": key.account_id.as_str(),
            "reports": [],
        }),
    ))
}

/// `POST /jobs`: accepts a job on behalf of the key's account.
async fn jobs(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let Some(key) = request.extensions().get::<AuthenticatedKey>() else {
        return Ok(unguarded());
    };
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({
            "key_id": key.id.as_str(),
            "account_id": key.account_id.as_str(),
            "status": "queued",
        }),
    ))
}

/// A protected handler reached without the layer: a wiring mistake, never a pass.
fn unguarded() -> Response<Body> {
    tracing::error!("a protected route was served without its KeyAuthLayer");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal error",
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
