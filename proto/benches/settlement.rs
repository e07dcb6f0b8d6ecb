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
//! the budget is left for storage. Rounds interleave ceiling and subject.

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
const ROUNDS: usize = 7;

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

fn ceiling(w: &Workload) -> Duration {
    let start = Instant::now();
    for items in &w.items {
        assert!(black_box(verify_batch(items)), "ceiling batch verifies");
    }
    start.elapsed()
}

fn ingest(w: &Workload, mode: SignatureCheck) -> Duration {
    let trust = trust();
    let config = SettlementConfig {
        signature_check: mode,
        ..SettlementConfig::default()
    };
    let ctx = SettlementContext {
        trust: &trust,
        config: &config,
        credentials: &(),
    };
    let mut states = w.states.clone();
    let start = Instant::now();
    let mut settled = 0usize;
    for batch in &w.batches {
        let report = ingest_batch(&mut states, batch, NOW.plus(60), &ctx);
        settled += report
            .receipts
            .iter()
            .filter(|r| r.outcome == Outcome::Settled)
            .count();
        black_box(&report);
    }
    let elapsed = start.elapsed();
    assert_eq!(settled, (ALLOWANCES * PER_ALLOWANCE) as usize, "all settle");
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_sec(d: Duration) -> f64 {
    f64::from(ALLOWANCES * PER_ALLOWANCE) / d.as_secs_f64()
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let w = workload();
    let (mut ceil, mut batch, mut strict) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ceil.push(ceiling(&w));
        batch.push(ingest(&w, SignatureCheck::Batch));
        strict.push(ingest(&w, SignatureCheck::Strict));
    }
    let (ceil, batch, strict) = (median(ceil), median(batch), median(strict));
    let rows = [
        (
            "ceiling: verify_batch alone (2 signatures per receipt)",
            ceil,
        ),
        ("ingest_batch, SignatureCheck::Batch", batch),
        ("ingest_batch, SignatureCheck::Strict", strict),
    ];
    let n = ALLOWANCES * PER_ALLOWANCE;
    if json {
        for (name, d) in rows {
            println!(
                "{{\"bench\":\"settlement\",\"figure\":\"{name}\",\"receipts\":{n},\"batch\":{BATCH},\"receipts_per_sec\":{:.0},\"of_ceiling\":{:.3}}}",
                per_sec(d),
                ceil.as_secs_f64() / d.as_secs_f64()
            );
        }
        return;
    }
    println!(
        "{n} receipts, {ALLOWANCES} allowances, batches of {BATCH}, median of {ROUNDS} rounds"
    );
    println!("{:<58} {:>12} {:>10}", "", "receipts/s", "of ceiling");
    for (name, d) in rows {
        println!(
            "{name:<58} {:>12.0} {:>9.0} %",
            per_sec(d),
            100.0 * ceil.as_secs_f64() / d.as_secs_f64()
        );
    }
}
