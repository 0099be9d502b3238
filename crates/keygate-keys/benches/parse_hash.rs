//! Criterion bench: parse + checksum + hash of a presented key, the work done
//! for every request before the auth cache is consulted.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate_keys::{KeyHash, KeyKind, KeyPrefix, ParsedKey, SecretKey};

fn parse_and_hash(c: &mut Criterion) {
    let prefix = KeyPrefix::default();
    let key = SecretKey::from_secret_bytes(&prefix, KeyKind::Private, &[0x5a; 32]);
    let text = key.expose().to_owned();

    let mut group = c.benchmark_group("key");
    group.bench_function("parse", |b| {
        b.iter(|| ParsedKey::parse(black_box(&text), &prefix).map(|k| k.kind()))
    });
    group.bench_function("sha256", |b| b.iter(|| KeyHash::of(black_box(&text))));
    group.bench_function("parse_and_hash", |b| {
        b.iter(|| ParsedKey::parse(black_box(&text), &prefix).map(|k| k.hash()))
    });
    group.finish();
}

criterion_group!(benches, parse_and_hash);
criterion_main!(benches);
