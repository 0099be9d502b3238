//! The request path, top to bottom: resolve → authenticate (failed attempts
//! throttled per client address) → policy → read and probe the body (a public
//! key's parameters restricted) → limits → route (the candidates) → admit →
//! forward (with retries and failover, before the client sees a byte) →
//! respond. Each stage lives in its
//! own module; this one only names them in order and hands them the request's
//! [`RequestContext`].

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, request};
use hyper::body::Incoming;
use keygate_store::ApiKey;

use crate::auth::Authenticated;
use crate::billing::Admission;
use crate::body::GatewayBody;
use crate::client_addr::client_addr;
use crate::conn;
use crate::context::{PeerAddr, RequestContext};
use crate::endpoint::{BodyFormat, Endpoint};
use crate::error::ProxyError;
use crate::failover::{Attempts, Served};
use crate::gateway::{Exchange, Gateway};
use crate::local::Models;
use crate::metrics::GatewayMetrics;
use crate::own_view;
use crate::policy;
use crate::probe::{self, Probed};
use crate::public;
use crate::routing::{Candidates, sticky_hash};
use crate::text::shown_model;
use crate::traces;
use crate::upstream::Upstream;
use crate::upstream_pool::StreamSlot;

impl Gateway {
    /// Answers one request. Never fails: errors become OpenAI-shaped responses.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<GatewayBody> {
        // Boxed: an HTTP/1.1 connection keeps the space of the future it serves
        // requests with for as long as it is open, streams included, so the
        // request path's large future (several KB) lives on the heap only while
        // the request is decided, and an open stream keeps a few bytes.
        Box::pin(self.answer(request)).await
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<GatewayBody> {
        if let Some(response) = self.local.answer(&request).await {
            return response;
        }
        let mut ctx = RequestContext::new(request.method().clone());
        ctx.log.meter = self.metrics.as_ref().map(GatewayMetrics::in_flight);
        let (mut parts, mut body) = request.into_parts();
        if let Some(tracing) = &self.tracing {
            // Started on arrival; the upstream gets its `traceparent`.
            ctx.log.span = Some(tracing.start(&parts.method, &mut parts.headers));
        }
        let mut response = match self.serve(&parts, &mut body, &mut ctx).await {
            Ok(mut response) => {
                ctx.add_cors(response.headers_mut());
                ctx.log.log_answer(response.status());
                response
            }
            Err(error) => ctx.fail(error),
        };
        // An answer decided before the body was read whole (a 401, a 413):
        // drained, or the connection closed once the client has read it.
        conn::finish_body(&parts, body, response.headers_mut()).await;
        response
    }

    async fn serve(
        &self,
        parts: &request::Parts,
        body: &mut Incoming,
        ctx: &mut RequestContext,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        probe::check_headers(&parts.headers)?;
        let (endpoint, model_id) = Endpoint::resolve(&parts.method, parts.uri.path())?;
        ctx.log.route = endpoint.route();
        if let Some(span) = &mut ctx.log.span {
            span.operation = traces::operation(endpoint);
            span.provider = Some(endpoint.provider().name());
        }
        let authed = self.authenticate(parts, ctx).await?;
        let key = &authed.key.key;
        ctx.log.key_id = Some(key.id.as_str().to_owned());
        if self.metrics.as_ref().is_some_and(|m| m.per_key()) {
            ctx.log.account_id = Some(key.account_id.as_str().to_owned());
        }
        policy::admit_key(&authed.key, endpoint, &parts.headers, ctx)?;
        if own_view::serves(endpoint) {
            policy::admit_limits(&self.limiter, &authed.key, None, ctx).await?;
            let ledger = self.billing().map(|b| b.ledger().as_ref());
            let mut response = own_view::answer(
                endpoint,
                key,
                parts.uri.query(),
                &*self.local.store,
                ledger,
                ctx.now,
            )
            .await?;
            ctx.rate_headers(response.headers_mut());
            return Ok(response);
        }
        if Models::serves(endpoint) {
            policy::admit_limits(&self.limiter, &authed.key, None, ctx).await?;
            let mut response = self.models.answer(&self.router, model_id, key)?;
            ctx.rate_headers(response.headers_mut());
            return Ok(response);
        }
        if endpoint.body_format() == BodyFormat::Opaque {
            policy::admit_limits(&self.limiter, &authed.key, None, ctx).await?;
            return self
                .serve_object(ctx, endpoint, model_id, parts, body, key)
                .await;
        }

        let probed = probe::read(
            endpoint,
            &parts.headers,
            body,
            self.max_body_bytes,
            self.body_read_timeout,
        )
        .await?;
        ctx.log.model = shown_model(&probed.model).map(str::to_owned);
        policy::allow_model(key, &probed.model)?;
        let probed = if key.kind == keygate_keys::KeyKind::Public {
            let max_output = self.limiter.settings().public_keys.max_output_tokens;
            public::restrict(probed, max_output)?
        } else {
            probed
        };
        policy::admit_limits(
            &self.limiter,
            &authed.key,
            Some((endpoint, &probed.demand)),
            ctx,
        )
        .await?;
        let candidates = self.router.candidates(endpoint.provider(), &probed.model)?;
        let first = Arc::clone(self.router.upstream(candidates.first()));
        ctx.log.upstream = Some(first.name().to_owned());
        // Token counting is never billed.
        let probed = if endpoint.billed() {
            self.admit(ctx, endpoint, &first, key, parts, probed)
                .await?
        } else {
            probed
        };
        let Probed {
            body,
            model,
            stream,
            ..
        } = probed;
        let path = endpoint.upstream_path(None);
        let served = self
            .forward(ctx, &path, parts, key, &candidates, &body)
            .await?;
        let upstream = self.router.upstream(served.upstream);
        let exchange = Exchange {
            endpoint,
            key,
            model: &model,
            stream,
            upstream: upstream.name(),
            status: served.answer.status(),
        };
        Ok(self.respond(ctx, &exchange, served.answer))
    }

    /// A stored object's endpoint (files, batches, stored responses): no model
    /// and no charge; the body, if any, read once and forwarded as it came,
    /// to the first healthy upstream of the endpoint's kind.
    async fn serve_object(
        &self,
        ctx: &mut RequestContext,
        endpoint: Endpoint,
        id: Option<&str>,
        parts: &request::Parts,
        body: &mut Incoming,
        key: &ApiKey,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        if endpoint == Endpoint::CreateBatch && self.billing().is_some() {
            return Err(ProxyError::BatchNotBilled);
        }
        let body = probe::read_opaque(
            &parts.headers,
            body,
            self.max_body_bytes,
            self.body_read_timeout,
        )
        .await?;
        let candidates = self.router.objects(endpoint.provider(), endpoint.route())?;
        let path = endpoint.upstream_path(id);
        let served = self
            .forward(ctx, &path, parts, key, &candidates, &body)
            .await?;
        let exchange = Exchange {
            endpoint,
            key,
            model: "",
            stream: false,
            upstream: self.router.upstream(served.upstream).name(),
            status: served.answer.status(),
        };
        Ok(self.respond(ctx, &exchange, served.answer))
    }

    /// Sends the request to its candidates (retries and failover included),
    /// and notes in the log and the charge which upstream served it and after
    /// how many attempts.
    async fn forward(
        &self,
        ctx: &mut RequestContext,
        path: &str,
        parts: &request::Parts,
        key: &ApiKey,
        candidates: &Candidates,
        body: &Bytes,
    ) -> Result<Served, ProxyError> {
        let attempts = Attempts {
            router: &self.router,
            forwarder: &self.forwarder,
            path,
            parts,
            sticky: sticky_hash(key.id.as_str()),
        };
        let result = attempts.run(candidates, body).await;
        let (upstream, attempts) = match &result {
            Ok(served) => (Some(served.upstream), served.attempts),
            Err(unserved) => (unserved.upstream, unserved.attempts),
        };
        ctx.log.attempts = attempts;
        if let Some(index) = upstream {
            let upstream = self.router.upstream(index);
            let name = upstream.name();
            ctx.log.upstream = Some(name.to_owned());
            if let Some(span) = &mut ctx.log.span {
                span.provider = Some(upstream.kind().name());
            }
            if let Some(charge) = &mut ctx.charge {
                charge.served_by(name, attempts);
            }
        }
        result.map_err(|unserved| unserved.error)
    }

    /// The request's key, checked after its client address passed the
    /// failed-authentication throttle; a failure counts against the address.
    async fn authenticate(
        &self,
        parts: &request::Parts,
        ctx: &mut RequestContext,
    ) -> Result<Authenticated, ProxyError> {
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0);
        ctx.client = client_addr(peer, &parts.headers, &self.trusted_proxies);
        self.limiter.before_auth(ctx.client).await?;
        let authed = self
            .auth
            .authenticate(&parts.headers, parts.uri.query(), ctx.now)
            .await;
        if let Err(error) = &authed {
            let kind = error.kind();
            if let (Some(metrics), StatusCode::UNAUTHORIZED) = (&self.metrics, kind.status) {
                metrics.auth_failed(kind.code);
            }
            self.limiter.auth_failed(ctx.client, error).await;
        }
        authed
    }

    /// Admits the request for billing, when billing is on: the charge goes in
    /// `ctx`, and the body comes back rewritten where the upstream must be asked
    /// for usage.
    async fn admit(
        &self,
        ctx: &mut RequestContext,
        endpoint: Endpoint,
        upstream: &Upstream,
        key: &ApiKey,
        parts: &request::Parts,
        probed: Probed,
    ) -> Result<Probed, ProxyError> {
        let Some(billing) = self.billing() else {
            return Ok(probed);
        };
        let Probed {
            body,
            model,
            stream,
            demand,
        } = probed;
        let admission = Admission {
            endpoint,
            provider: upstream.kind(),
            key,
            model: &model,
            upstream: upstream.name(),
            stream,
            demand,
            client_name: probe::client_name(&parts.headers),
            client_ip: ctx.client,
        };
        let (mut charge, body) = billing
            .admit(admission, body, ctx.now, ctx.started())
            .await?;
        if let Some(metrics) = &self.metrics {
            charge.count_in(Arc::clone(metrics));
        }
        ctx.charge = Some(charge);
        Ok(Probed {
            body,
            model,
            stream,
            demand,
        })
    }

    /// The upstream's answer on its way to the client: the charge attached
    /// first (it reads the upstream's own bytes), then the taps and the request
    /// log, which see what the client gets.
    fn respond(
        &self,
        ctx: &mut RequestContext,
        exchange: &Exchange<'_>,
        answer: Response<Incoming>,
    ) -> Response<GatewayBody> {
        let first_byte = ctx.started().elapsed();
        // The taps are asked first: one that panics leaves the charge
        // unattached, so it is returned uncharged.
        let taps: Vec<_> = self.taps.iter().filter_map(|t| t.tap(exchange)).collect();
        let (mut head, body) = answer.into_parts();
        ctx.rate_headers(&mut head.headers);
        let mut body = GatewayBody::stream(body, Some(self.idle_timeout));
        if let Some(slot) = head.extensions.remove::<StreamSlot>() {
            // Held by the body, not the head, which the server drops first.
            body = body.hold(slot);
        }
        let usage_slot = ctx.log.span.as_ref().and_then(|s| s.usage_slot());
        let limits = ctx.limits.take();
        if let Some(mut charge) = ctx.charge.take() {
            if let Some(slot) = usage_slot {
                // Billing reads the usage; the span takes it at the end.
                charge.report_usage(slot);
            }
            if let Some(limits) = limits {
                // And the limits: one reading of the body for both. The charge
                // holds the request's slot until the body ends.
                charge.carry(Box::new(limits));
            }
            body = charge.attach(&mut head, body, first_byte);
        } else {
            if let Some(limits) = limits {
                // First: it reads usage from the upstream's own bytes, and
                // holds the request's slot until the body ends.
                body = limits.attach(&head, body);
            }
            if let Some(reader) = ctx.log.span.as_ref().and_then(|span| {
                span.usage_reader(
                    crate::billing::shape_of(exchange.endpoint),
                    event_stream(&head),
                )
            }) {
                body = body.observe(reader);
            }
        }
        for observer in taps {
            body = body.observe(observer);
        }
        let log = ctx.log.take().into_observer(head.status, first_byte);
        Response::from_parts(head, body.observe(Box::new(log)))
    }
}

/// Whether an answer is an event stream.
fn event_stream(head: &http::response::Parts) -> bool {
    head.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}
