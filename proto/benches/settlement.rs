//! Settlement ingestion (issue #5), the pure rules in memory, beside its
//! ceiling measured in the same run: Ed25519 `verify_batch` alone over the
//! same receipts' two signatures each.
//!
//! ```sh
//! cargo bench -p meshpay-proto --bench settlement            # table
//! cargo bench -p meshpay-proto --bench settlement -- --json  # one JSON line per figure
//! ```
//!
//! 10,000 receipts of 100 allowances (100 payments each, to 50 payees)
//! arrive in 10 batches of 1,000; every batch touches every allowance. The
//! subject is `ingest_batch` from empty states: duplicate and time checks,
//! payee key decoding, signatures (one batch equation per batch, or strict
//! one by one), caps, conflict detection, resolution and movements. The
//! ceiling is the batch equation alone over prebuilt messages, so the ratio
//! says what the rules cost on top of the cryptography, and so how much of
//! the budget is left for storage. Ceiling and subjects run back to back
//! on each batch, 5 rounds of the 10 batches, and the ratio is the median
//! of the per-batch ratios. Also measured: the same batches sent a second time (relays upload their
//! whole outbox, so duplicates are common), and the encoded size of the
//! per-allowance state a backend stores.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use meshpay_proto::crypto::{BatchItem, domain, verify_batch};
use meshpay_proto::prelude::*;
use meshpay_proto::settlement::*;

const ALLOWANCES: u32 = 100;
const PER_ALLOWANCE: u32 = 100;
const BATCH: usize = 1_000;
const ROUNDS: usize = 5;

struct Workload {
    states: BTreeMap<AllowanceId, AllowanceState>,
    batches: Vec<Vec<Receipt>>,
    items: Vec<Vec<BatchItem>>,
}

fn workload() -> Workload {
    let wallets: Vec<(SecretKey, Allowance)> = (0..ALLOWANCES).map(wallet).collect();
    let payees: Vec<SecretKey> = (0..50u8).map(|i| key(0x80 + i)).collect();
    let trust = trust();
    let states = wallets
        .iter()
        .map(|(_, a)| {
            let (s, _) = AllowanceState::open(a.clone(), &trust).expect("fixture allowance");
            (a.id, s)
        })
        .collect();
    // Payment i is sequence number i / ALLOWANCES + 1 of allowance
    // i % ALLOWANCES, so each batch holds ten payments of every allowance.
    let receipts: Vec<Receipt> = (0..ALLOWANCES * PER_ALLOWANCE)
        .map(|i| {
            let (k, a) = &wallets[(i % ALLOWANCES) as usize];
            let seq = i / ALLOWANCES + 1;
            let to = &payees[(i % 50) as usize];
            let mut nonce = [0u8; 16];
            nonce[..4].copy_from_slice(&i.to_le_bytes());
            let body = TransferBody {
                payee: to.public().into(),
                nonce: Nonce(nonce),
                payer_time: NOW,
            };
            let t = Transfer::sign(a.id, seq, u64::from(seq) * 100, 100, body, k);
            Receipt::acknowledge(t, to)
        })
        .collect();
    let batches: Vec<Vec<Receipt>> = receipts.chunks(BATCH).map(<[_]>::to_vec).collect();
    let items = batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .flat_map(|r| {
                    let t = &r.transfer;
                    let wallet = wallets[0..]
                        .iter()
                        .find(|(_, a)| a.id == t.header().allowance)
                        .map(|(_, a)| a.wallet)
                        .expect("its allowance");
                    let payee = t.body().payee.to_public_key().expect("valid payee");
                    [
                        BatchItem {
                            message: t.signed_header().signing_message(),
                            signature: *t.payer_signature(),
                            key: wallet,
                        },
                        BatchItem {
                            message: [domain::RECEIPT_ACK, &[0], t.id().as_bytes()].concat(),
                            signature: r.payee_signature,
                            key: payee,
                        },
                    ]
                })
                .collect()
        })
        .collect();
    Workload {
        states,
        batches,
        items,
    }
}

/// Times one call.
fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = black_box(f());
    (start.elapsed(), out)
}

/// One ingestion of `batch` into `states`, checking what it should do.
fn ingest(
    states: &mut BTreeMap<AllowanceId, AllowanceState>,
    batch: &[Receipt],
    config: &SettlementConfig,
    fresh: bool,
) -> Duration {
    let trust = trust();
    let ctx = SettlementContext {
        trust: &trust,
        config,
        credentials: &(),
    };
    let (t, report) = timed(|| ingest_batch(states, batch, NOW.plus(60), &ctx));
    let settled = report
        .receipts
        .iter()
        .all(|r| r.outcome == Outcome::Settled);
    let duplicates = report.receipts.iter().all(|r| r.duplicate);
    assert!(
        settled && duplicates != fresh,
        "every receipt settles, once"
    );
    t
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per_sec(d: Duration) -> f64 {
    BATCH as f64 / d.as_secs_f64()
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let w = workload();
    let batch_mode = SettlementConfig::default();
    let strict_mode = SettlementConfig {
        signature_check: SignatureCheck::Strict,
        ..SettlementConfig::default()
    };
    // Per batch of 1,000, back to back: the ceiling, then each subject on
    // the same batch, so that a slow spell of the shared machine hits them
    // alike.
    let (mut ceil, mut batch, mut strict, mut dup) = (vec![], vec![], vec![], vec![]);
    let mut states = BTreeMap::new();
    for _ in 0..ROUNDS {
        let (mut in_batch, mut in_strict) = (w.states.clone(), w.states.clone());
        for (receipts, items) in w.batches.iter().zip(&w.items) {
            let (t, ok) = timed(|| verify_batch(items));
            assert!(ok, "the ceiling's batch verifies");
            ceil.push(t);
            batch.push(ingest(&mut in_batch, receipts, &batch_mode, true));
            strict.push(ingest(&mut in_strict, receipts, &strict_mode, true));
        }
        // Relays upload their whole outbox: the same batches again.
        for receipts in &w.batches {
            dup.push(ingest(&mut in_batch, receipts, &batch_mode, false));
        }
        states = in_batch;
    }
    // Each figure: the median time per batch, and the median of the
    // per-batch ratios to the ceiling.
    let row = |name, times: &[Duration]| {
        let ratios: Vec<f64> = ceil
            .iter()
            .zip(times)
            .map(|(c, t)| c.as_secs_f64() / t.as_secs_f64())
            .collect();
        (name, median(times.to_vec()), median_f64(ratios))
    };
    let rows = [
        row(
            "ceiling: verify_batch alone (2 signatures per receipt)",
            &ceil,
        ),
        row("ingest_batch, SignatureCheck::Batch", &batch),
        row("ingest_batch, SignatureCheck::Strict", &strict),
        row("ingest_batch, the same receipts again (duplicates)", &dup),
    ];
    // What a backend stores per allowance: 100 claims each here.
    let state_bytes: usize = states.values().map(|s| s.encode().len()).sum();
    let per_claim = state_bytes as f64 / f64::from(ALLOWANCES * PER_ALLOWANCE);
    let batches = ROUNDS * w.batches.len();
    if json {
        for (name, d, ratio) in rows {
            println!(
                "{{\"bench\":\"settlement\",\"figure\":\"{name}\",\"batch\":{BATCH},\"batches\":{batches},\"receipts_per_sec\":{:.0},\"of_ceiling\":{ratio:.3}}}",
                per_sec(d)
            );
        }
        println!(
            "{{\"bench\":\"settlement\",\"figure\":\"stored state per claim\",\"bytes\":{per_claim:.1}}}"
        );
        return;
    }
    println!(
        "{ALLOWANCES} allowances x {PER_ALLOWANCE} receipts, batches of {BATCH}, median of {batches} batches"
    );
    println!("{:<58} {:>12} {:>10}", "", "receipts/s", "of ceiling");
    for (name, d, ratio) in rows {
        println!("{name:<58} {:>12.0} {:>9.0} %", per_sec(d), 100.0 * ratio);
    }
    println!(
        "stored state: {per_claim:.1} B per claim ({} B per allowance of {PER_ALLOWANCE} claims)",
        state_bytes / ALLOWANCES as usize
    );
}
