//! Envelope benchmarks: encode, decode, sign, verify, batch verify, seal and open.
//!
//! `cargo bench -p weft-fabric --bench envelope` runs the criterion measurements (per-event
//! time and events/s via throughput), then prints a summary table with the batch-vs-single
//! verification ratio measured side by side in the same process.

#![allow(missing_docs)]
// Benchmarks measure wall time by definition; the core's ban on clocks is for library code.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use weft_fabric::*;

const PAYLOAD_LEN: usize = 256;
const BATCH: usize = 64;

fn draft(seq: u64) -> EventDraft {
    EventDraft {
        stream: StreamName::new("orders.eu.created").unwrap(),
        key: Some(format!("order/{seq}").into_bytes()),
        seq,
        hlc: Hlc::new(1_764_331_200_000, 0).unwrap(),
        security: SecurityContext {
            tenant: "acme".into(),
            principal: "orders-service".into(),
            classification: "personal".into(),
            residency: Residency::only(["EU"]).unwrap(),
            scopes: BTreeSet::new(),
            policy_epoch: 7,
        },
        content_type: "application/json".into(),
        payload: Payload::Clear(vec![b'x'; PAYLOAD_LEN]),
        trace: None,
    }
}

fn signers(n: usize) -> Vec<Signer> {
    (0..n)
        .map(|i| Signer::from_secret(&[i as u8 + 1; 32]))
        .collect()
}

fn encoded(n: usize) -> Vec<Vec<u8>> {
    signers(n)
        .iter()
        .enumerate()
        .map(|(i, s)| s.sign(draft(i as u64 + 1)).unwrap().encode())
        .collect()
}

fn benches(c: &mut Criterion) {
    let signer = Signer::from_secret(&[1; 32]);
    let event = signer.sign(draft(1)).unwrap();
    let bytes = event.encode();
    let ring = KeyRing::new(KeyId::new("k1").unwrap(), [9; 32]);
    let mut rng = ChaCha20Rng::seed_from_u64(1);

    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign (encode + ed25519 sign + sha256 id)", |b| {
        b.iter_batched(
            || draft(1),
            |d| signer.sign(black_box(d)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("encode (signed event to bytes)", |b| {
        b.iter(|| black_box(&event).encode())
    });
    g.bench_function("decode (strict, canonical check, id)", |b| {
        b.iter(|| decode(black_box(&bytes)).unwrap())
    });
    g.bench_function("verify (strict, single)", |b| {
        b.iter_batched(
            || decode(&bytes).unwrap(),
            |u| u.verify().unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("seal and sign", |b| {
        b.iter_batched(
            || draft(1),
            |d| signer.seal_and_sign(d, &ring, &mut rng).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let sealed = signer.seal_and_sign(draft(1), &ring, &mut rng).unwrap();
    g.bench_function("open", |b| {
        b.iter(|| sealed.open(black_box(&ring)).unwrap())
    });
    g.finish();

    let many = encoded(BATCH);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(format!("verify {BATCH} one by one"), |b| {
        b.iter_batched(
            || many.iter().map(|e| decode(e).unwrap()).collect::<Vec<_>>(),
            |v| v.into_iter().filter_map(|u| u.verify().ok()).count(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function(format!("verify {BATCH} as a batch"), |b| {
        b.iter_batched(
            || many.iter().map(|e| decode(e).unwrap()).collect::<Vec<_>>(),
            |v| verify_batch(v).into_iter().filter(Result::is_ok).count(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Median per-event time of `f` over `rounds` rounds of `n` events each.
fn per_event(rounds: usize, n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut samples: Vec<Duration> = (0..rounds).map(|_| f() / n as u32).collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn summary() {
    const ROUNDS: usize = 30;
    let many = encoded(BATCH);
    let signer = Signer::from_secret(&[1; 32]);
    let decoded = || many.iter().map(|e| decode(e).unwrap()).collect::<Vec<_>>();

    let sign = per_event(ROUNDS, BATCH, || {
        let drafts: Vec<_> = (1..=BATCH as u64).map(draft).collect();
        let t = Instant::now();
        for d in drafts {
            black_box(signer.sign(d).unwrap());
        }
        t.elapsed()
    });
    let decode_t = per_event(ROUNDS, BATCH, || {
        let t = Instant::now();
        for e in &many {
            black_box(decode(e).unwrap());
        }
        t.elapsed()
    });
    let single = per_event(ROUNDS, BATCH, || {
        let v = decoded();
        let t = Instant::now();
        for u in v {
            black_box(u.verify().unwrap());
        }
        t.elapsed()
    });
    let batch = per_event(ROUNDS, BATCH, || {
        let v = decoded();
        let t = Instant::now();
        let ok = verify_batch(v).into_iter().filter(Result::is_ok).count();
        assert_eq!(ok, BATCH);
        t.elapsed()
    });
    let rate = |d: Duration| 1.0 / d.as_secs_f64();
    println!();
    println!(
        "summary ({PAYLOAD_LEN} B payload, median of {ROUNDS} rounds of {BATCH} events, one core)"
    );
    println!("{:<28} {:>12} {:>14}", "operation", "per event", "events/s");
    for (name, d) in [
        ("sign", sign),
        ("decode", decode_t),
        ("verify, single (strict)", single),
        ("verify, batch of 64", batch),
    ] {
        println!(
            "{:<28} {:>9.2} us {:>14.0}",
            name,
            d.as_secs_f64() * 1e6,
            rate(d)
        );
    }
    println!(
        "batch vs single verification: {:.2}x the throughput ({:.2} us vs {:.2} us per event)",
        single.as_secs_f64() / batch.as_secs_f64(),
        batch.as_secs_f64() * 1e6,
        single.as_secs_f64() * 1e6
    );
}

criterion_group!(envelope, benches);

fn main() {
    envelope();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
