//! Protocol-core figures: encoded sizes, the CPU cost of one handshake and
//! of batch verification, each beside its lower bound measured in the same
//! run.
//!
//! `cargo bench -p meshpay-proto --bench handshake` (add `-- --json` for a
//! machine-readable line per figure). Results are recorded in
//! docs/results.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use ed25519_dalek::{Signer, SigningKey};
use meshpay_proto::conflict::detect;
use meshpay_proto::prelude::*;
use meshpay_proto::transfer::verify_transfers_batch;

/// Runs `f` `iters` times and returns the time per call.
fn per_call(iters: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

/// Interleaves rounds of `subject` and `baseline` so that both see the same
/// machine state; returns the median time per call of each.
fn compare(
    rounds: usize,
    iters: u32,
    mut subject: impl FnMut(),
    mut baseline: impl FnMut(),
) -> (Duration, Duration) {
    // Warm up caches and frequency scaling.
    per_call(iters, &mut subject);
    per_call(iters, &mut baseline);
    let mut s = Vec::with_capacity(rounds);
    let mut b = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        s.push(per_call(iters, &mut subject));
        b.push(per_call(iters, &mut baseline));
    }
    s.sort();
    b.sort();
    (s[rounds / 2], b[rounds / 2])
}

struct Report {
    json: bool,
}

impl Report {
    fn size(&self, what: &str, bytes: usize) {
        if self.json {
            println!(r#"{{"figure":"size","object":"{what}","bytes":{bytes}}}"#);
        } else {
            println!("  {what:<44} {bytes:>5} B");
        }
    }

    fn ratio(&self, what: &str, subject: Duration, baseline: Duration, goal: f64) {
        let ratio = subject.as_secs_f64() / baseline.as_secs_f64();
        let verdict = if ratio <= goal { "meets" } else { "MISSES" };
        if self.json {
            println!(
                r#"{{"figure":"{what}","subject_us":{:.2},"baseline_us":{:.2},"ratio":{ratio:.3},"goal":{goal}}}"#,
                subject.as_secs_f64() * 1e6,
                baseline.as_secs_f64() * 1e6
            );
        } else {
            println!(
                "  {what:<44} {:>9.2} us  vs  {:>9.2} us  = {ratio:.3}x  (goal <= {goal}x: {verdict})",
                subject.as_secs_f64() * 1e6,
                baseline.as_secs_f64() * 1e6
            );
        }
    }
}

/// One whole handshake, both sides, with every message encoded and decoded
/// as on a link, the allowance already cached by the payee.
fn one_handshake(
    allowance: &Allowance,
    payer_key: &SecretKey,
    payee_key: &SecretKey,
    invoice: &Invoice,
    mesh: &KnownHeaders,
    trust: &TrustStore,
) -> Receipt {
    let policy = PaymentPolicy::default();
    let ctx = CheckContext {
        trust,
        policy: &policy,
        now: NOW,
        mesh,
    };
    let config = PayerConfig {
        send_allowance: false,
        ..PayerConfig::default()
    };
    let wire = |m: PaymentMessage| PaymentMessage::decode(&m.encode()).expect("decodes");

    let mut payee = PayeeSession::with_invoice(payee_key.clone(), invoice.clone(), Millis(0));
    let mut payer = PayerSession::new(
        allowance.clone(),
        payer_key.clone(),
        SpendState::FRESH,
        NOW,
        config,
    );
    payer
        .handle(wire(payee.poll_transmit().expect("invoice")), Millis(0))
        .expect("invoice");
    payer.confirm().expect("confirm");
    while payer.poll_effect().is_some() {}
    payer.spend_persisted(Millis(0)).expect("persisted");
    payee
        .handle(wire(payer.poll_transmit().expect("transfer")), &ctx)
        .expect("transfer");
    payee.receipt_persisted().expect("accepted");
    payer
        .handle(wire(payee.poll_transmit().expect("ack")), Millis(0))
        .expect("ack");
    match payer.state() {
        PayerState::Paid(r) => r.clone(),
        other => panic!("handshake ended in {other:?}"),
    }
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    // `cargo test --benches` runs this with `--bench`-less args; keep it quick then.
    let quick = std::env::args().any(|a| a == "--quick");
    let report = Report { json };
    let (rounds, iters) = if quick { (3, 20) } else { (21, 400) };

    // ---- sizes --------------------------------------------------------
    let a = allowance();
    let inv = invoice(450, 7);
    let t = transfer_for(&inv, 1, 450);
    let r = Receipt::acknowledge(t.clone(), &payee());
    // The worst case: every varint at its longest.
    let worst = Receipt::acknowledge(
        transfer_raw(
            &payer(),
            payee().public(),
            u64::MAX,
            Nonce([9; 16]),
            u32::MAX,
            u64::MAX,
        ),
        &payee(),
    );
    let other = transfer_raw(&payer(), payee().public(), 450, Nonce([8; 16]), 1, 450);
    let fork = detect(&t.signed_header(), &other.signed_header()).expect("fork");
    let mut long_memo = inv.clone();
    long_memo.memo = Some("m".repeat(64));
    if !json {
        println!("encoded sizes (version byte included):");
    }
    report.size("allowance (no restriction)", a.encode().len());
    report.size("invoice (memo \"coffee\")", inv.encode().len());
    report.size("invoice (64-byte memo)", long_memo.encode().len());
    report.size("transfer header", t.header().encode().len());
    report.size(
        "signed transfer header (gossiped)",
        t.signed_header().encode().len(),
    );
    report.size("transfer body", t.body().encode().len());
    report.size("transfer", t.encode().len());
    report.size("receipt (dual-signed)", r.encode().len());
    report.size(
        "receipt, worst case (all varints maximal)",
        worst.encode().len(),
    );
    report.size(
        "message: transfer without allowance",
        PaymentMessage::Transfer {
            allowance: None,
            transfer: t.clone(),
        }
        .encode()
        .len(),
    );
    report.size(
        "message: transfer with allowance",
        PaymentMessage::Transfer {
            allowance: Some(Box::new(a.clone())),
            transfer: t.clone(),
        }
        .encode()
        .len(),
    );
    report.size(
        "message: ack",
        PaymentMessage::Ack {
            transfer: t.id(),
            signature: r.payee_signature,
        }
        .encode()
        .len(),
    );
    report.size("conflict proof (fork)", fork.encode().len());

    // ---- one handshake vs its four raw ed25519 operations ---------------
    let trust = trust();
    let mesh = mesh();
    let (payer_key, payee_key) = (payer(), payee());
    let raw_payer = SigningKey::from_bytes(&[2; 32]);
    let raw_payee = SigningKey::from_bytes(&[3; 32]);
    let (payer_vk, payee_vk) = (raw_payer.verifying_key(), raw_payee.verifying_key());
    // The same messages the protocol signs: tag || 0 || header, tag || 0 || id.
    let m1 = t.signed_header().signing_message();
    let m2 = [
        b"meshpay/v1/receipt-ack".as_slice(),
        &[0],
        t.id().as_bytes(),
    ]
    .concat();
    let (subject, baseline) = compare(
        rounds,
        iters,
        || {
            black_box(one_handshake(
                &a, &payer_key, &payee_key, &inv, &mesh, &trust,
            ));
        },
        || {
            let s1 = raw_payer.sign(black_box(&m1));
            payer_vk.verify_strict(&m1, &s1).expect("valid");
            let s2 = raw_payee.sign(black_box(&m2));
            payee_vk.verify_strict(&m2, &s2).expect("valid");
        },
    );
    if !json {
        println!("CPU per operation (median of {rounds} interleaved rounds of {iters}):");
    }
    report.ratio(
        "handshake, both sides, vs 2 sign + 2 verify",
        subject,
        baseline,
        1.2,
    );

    // ---- batch verification of 1,000 transfers ----------------------------
    let n = 1_000usize;
    let keys: Vec<SecretKey> = (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            SecretKey::from_seed(&seed)
        })
        .collect();
    let transfers: Vec<Transfer> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let body = TransferBody {
                payee: payee().public().into(),
                nonce: Nonce([i as u8; 16]),
                payer_time: NOW,
            };
            Transfer::sign(
                AllowanceId([i as u8; 16]),
                1,
                100 + i as u64,
                100 + i as u64,
                body,
                k,
            )
        })
        .collect();
    let publics: Vec<PublicKey> = keys.iter().map(SecretKey::public).collect();
    let raw_msgs: Vec<Vec<u8>> = transfers
        .iter()
        .map(|t| t.signed_header().signing_message())
        .collect();
    let raw_slices: Vec<&[u8]> = raw_msgs.iter().map(Vec::as_slice).collect();
    let raw_sigs: Vec<ed25519_dalek::Signature> = transfers
        .iter()
        .map(|t| ed25519_dalek::Signature::from_bytes(t.payer_signature().as_bytes()))
        .collect();
    let raw_keys: Vec<ed25519_dalek::VerifyingKey> = keys
        .iter()
        .map(|k| SigningKey::from_bytes(&k.to_seed()).verifying_key())
        .collect();
    let batch_iters = if quick { 1 } else { 3 };
    let (subject, baseline) = compare(
        rounds.min(11),
        batch_iters,
        || {
            assert!(verify_transfers_batch(transfers.iter().zip(publics.iter())));
        },
        || {
            ed25519_dalek::verify_batch(&raw_slices, &raw_sigs, &raw_keys).expect("valid");
        },
    );
    report.ratio(
        "batch verify 1,000 transfers vs raw verify_batch",
        subject,
        baseline,
        1.2,
    );
    if !json {
        println!(
            "  per signature in the batch: {:.2} us",
            subject.as_secs_f64() * 1e6 / n as f64
        );
    }
}
