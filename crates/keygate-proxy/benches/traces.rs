//! Criterion bench: what tracing adds to one request — the span started from
//! the request's headers (`traceparent` read and replaced), the GenAI and
//! keygate attributes set, the usage handed over, the span ended — with
//! tracing off, with the span sampled out, through the SDK's batch processor
//! into an exporter that discards, and through the batch processor into the
//! real OTLP/HTTP exporter sending to a collector on loopback. `traces/request`:
//! a whole billed chat completion through an in-process gateway on loopback to
//! a mock upstream, with tracing off and on (OTLP/HTTP to the collector).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs,
    reason = "benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use keygate_proxy::{Tracing, TracingConfig};
use keygate_test_utils::OtlpCollector;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};

mod support;

use support::{chat, start_billed};

/// Takes every batch and drops it.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    headers
}

fn bench(c: &mut Criterion, name: &str, tracing: &Tracing) {
    let template = headers();
    c.bench_function(name, |b| {
        b.iter(|| {
            // A fresh client header each time, as each request brings its own.
            let mut headers = template.clone();
            keygate_proxy::bench::request_span(tracing, &mut headers);
            black_box(headers);
        });
    });
}

fn spans(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // Tracing off: what the request path does instead (nothing but the header
    // map it has anyway).
    let template = headers();
    c.bench_function("span/off", |b| {
        b.iter(|| black_box(template.clone()));
    });

    let sampled_out = Tracing::with_provider(
        SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .with_span_processor(BatchSpanProcessor::builder(Discard).build())
            .build(),
    );
    // The client's parent is sampled; ParentBased would honour it, so a plain
    // AlwaysOff stands for "not sampled".
    bench(c, "span/sampled_out", &sampled_out);

    let discard = Tracing::with_provider(
        SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(Discard).build())
            .build(),
    );
    bench(c, "span/batch_discard", &discard);
    runtime.block_on(discard.shutdown(Duration::from_secs(5)));

    let collector = runtime.block_on(OtlpCollector::start());
    let otlp = runtime
        .block_on(async { Tracing::otlp(&TracingConfig::new(collector.endpoint())) })
        .unwrap();
    bench(c, "span/batch_otlp_http", &otlp);
    runtime.block_on(otlp.shutdown(Duration::from_secs(10)));
    let exported = collector.spans().len();
    eprintln!("span/batch_otlp_http: {exported} spans reached the collector");
}

fn request(c: &mut Criterion) {
    let runtime = support::runtime();
    let (collector, tracing, on, off, _mock) = runtime.block_on(async {
        let mock = support::quiet_mock().await;
        let collector = OtlpCollector::start().await;
        let tracing = Arc::new(Tracing::otlp(&TracingConfig::new(collector.endpoint())).unwrap());
        let traced = Arc::clone(&tracing);
        let on = start_billed(&mock, |_| {}, move |g| g.with_tracing(traced)).await;
        let off = start_billed(&mock, |_| {}, |g| g).await;
        (collector, tracing, on, off, mock)
    });
    let mut group = c.benchmark_group("traces/request");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("tracing_off", |b| b.iter(|| runtime.block_on(chat(&off))));
    group.bench_function("tracing_on", |b| b.iter(|| runtime.block_on(chat(&on))));
    group.finish();
    runtime.block_on(tracing.shutdown(Duration::from_secs(10)));
    eprintln!(
        "traces/request: {} spans reached the collector",
        collector.spans().len()
    );
}

criterion_group!(benches, spans, request);
criterion_main!(benches);
