//! Durable ingestion by the settlement service, redb and PostgreSQL, against
//! the ceiling measured in the same run: Ed25519 `verify_batch` alone over
//! the same receipts (two signatures each).
//!
//! `cargo bench -p meshpay-node --bench settlement [-- --json]`; PostgreSQL
//! is measured when MESHPAY_TEST_POSTGRES holds a URL (`bash
//! .ci/postgres.sh` prints one).
//!
//! Workload: 100 allowances of 100 receipts each, 10,000 receipts in
//! batches of 1,000 (ten receipts of every allowance per batch), each batch
//! committed before the next, as the HTTP handler does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use meshpay_node::settlement::{Kv, PgKv, RedbKv, Service};
use meshpay_proto::crypto::{BatchItem, domain, verify_batch};
use meshpay_proto::prelude::*;
use meshpay_proto::settlement::SettlementConfig;
use meshpay_proto::wallet_request::{WalletAction, WalletRequest, WalletRequestTerms};

const ALLOWANCES: u32 = 100;
const PER_ALLOWANCE: u32 = 100;
const BATCH: usize = 1_000;
const T0: Timestamp = Timestamp(1_800_000_000);

fn key(i: u32, salt: u8) -> SecretKey {
    let mut seed = [salt; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SecretKey::from_seed(&seed)
}

fn issuer() -> SecretKey {
    SecretKey::from_seed(&[1; 32])
}

/// Opens a service over `kv` and loads one allowance per wallet.
fn service(kv: Box<dyn Kv>) -> Service<Box<dyn Kv>> {
    let mut s = Service::open(kv, issuer(), SettlementConfig::default())
        .expect("open")
        .with_policy(meshpay_node::settlement::IssuePolicy {
            max_amount: 1_000_000,
            max_payments: 1_000,
            ..Default::default()
        });
    for i in 0..ALLOWANCES {
        let wallet = key(i, 2);
        s.deposit(wallet.public().into(), 1_000_000, &format!("bench-{i}"))
            .expect("deposit");
        let mut nonce = [0u8; 16];
        nonce[..4].copy_from_slice(&i.to_le_bytes());
        let request = WalletRequest::sign(
            WalletRequestTerms {
                wallet: wallet.public(),
                issuer: issuer().public(),
                nonce: Nonce(nonce),
                at: T0,
                action: WalletAction::Issue {
                    amount: 1_000_000,
                    currency: Currency::new("EUR").expect("code"),
                    valid_secs: 30 * 86_400,
                    caps: Caps {
                        max_per_payment: 10_000,
                        max_payments: 1_000,
                    },
                },
            },
            &wallet,
        );
        s.issue(&request, allowance_id(i), T0).expect("issue");
    }
    s
}

fn allowance_id(i: u32) -> AllowanceId {
    let mut id = [7u8; 16];
    id[..4].copy_from_slice(&i.to_le_bytes());
    AllowanceId(id)
}

/// The receipts, in batches, and the ceiling's items for each batch.
fn workload() -> (Vec<Vec<Receipt>>, Vec<Vec<BatchItem>>) {
    let payees: Vec<SecretKey> = (0..50).map(|i| key(i, 3)).collect();
    let receipts: Vec<Receipt> = (0..ALLOWANCES * PER_ALLOWANCE)
        .map(|i| {
            let a = i % ALLOWANCES;
            let seq = i / ALLOWANCES + 1;
            let to = &payees[(i % 50) as usize];
            let mut nonce = [0u8; 16];
            nonce[..4].copy_from_slice(&i.to_le_bytes());
            let body = TransferBody {
                payee: to.public().into(),
                nonce: Nonce(nonce),
                payer_time: T0,
            };
            let t = Transfer::sign(
                allowance_id(a),
                seq,
                u64::from(seq) * 100,
                100,
                body,
                &key(a, 2),
            );
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
                    let i = u32::from_le_bytes(
                        t.header().allowance.as_bytes()[..4]
                            .try_into()
                            .expect("4 bytes"),
                    );
                    [
                        BatchItem {
                            message: t.signed_header().signing_message(),
                            signature: *t.payer_signature(),
                            key: key(i, 2).public(),
                        },
                        BatchItem {
                            message: [domain::RECEIPT_ACK, &[0], t.id().as_bytes()].concat(),
                            signature: r.payee_signature,
                            key: t.body().payee.to_public_key().expect("payee"),
                        },
                    ]
                })
                .collect()
        })
        .collect();
    (batches, items)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let (batches, items) = workload();
    let dir = tempfile::tempdir().expect("dir");
    let mut subjects: Vec<(&str, Service<Box<dyn Kv>>)> = vec![(
        "redb",
        service(Box::new(
            RedbKv::open(&dir.path().join("bench.redb")).expect("redb"),
        )),
    )];
    match std::env::var("MESHPAY_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            c.batch_execute("DROP SCHEMA IF EXISTS bench_settlement CASCADE")
                .expect("drop");
            let kv = PgKv::connect_schema(&url, "bench_settlement").expect("pg");
            subjects.push(("postgres", service(Box::new(kv))));
        }
        _ => eprintln!("PostgreSQL skipped: set MESHPAY_TEST_POSTGRES"),
    }
    // Per batch, back to back: the ceiling, then each backend on the same
    // batch, so that a slow spell of the shared machine hits them alike.
    let mut ceiling = Vec::new();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); subjects.len()];
    for (batch, items) in batches.iter().zip(&items) {
        let start = Instant::now();
        assert!(black_box(verify_batch(items)));
        ceiling.push(start.elapsed());
        for ((_, s), t) in subjects.iter_mut().zip(&mut times) {
            let start = Instant::now();
            let done = s.submit(batch, T0.plus(60)).expect("submit");
            t.push(start.elapsed());
            assert!(
                done.receipts.iter().all(|r| r.outcome == Outcome::Settled),
                "every receipt settles"
            );
        }
    }
    let per_sec = |d: Duration| BATCH as f64 / d.as_secs_f64();
    let c = median(ceiling.clone());
    let mut rows = vec![("ceiling: verify_batch alone".to_string(), c, 1.0)];
    for ((name, _), t) in subjects.iter().zip(&times) {
        let ratios: Vec<f64> = ceiling
            .iter()
            .zip(t)
            .map(|(c, t)| c.as_secs_f64() / t.as_secs_f64())
            .collect();
        let mut r = ratios.clone();
        r.sort_by(f64::total_cmp);
        rows.push((
            format!("{name}: durable ingestion"),
            median(t.clone()),
            r[r.len() / 2],
        ));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, d, r)| {
                serde_json::json!({"what": n, "ms_per_batch": d.as_secs_f64() * 1e3,
                    "receipts_per_sec": per_sec(*d), "of_ceiling": r})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!(
            "settlement ingestion, {} receipts in batches of {BATCH} (medians per batch)",
            batches.len() * BATCH
        );
        for (n, d, r) in rows {
            println!(
                "{n:<34} {:>8.1} ms/batch {:>9.0} receipts/s {:>6.0} % of ceiling",
                d.as_secs_f64() * 1e3,
                per_sec(d),
                r * 100.0
            );
        }
    }
}
