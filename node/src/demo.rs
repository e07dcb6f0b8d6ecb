//! `meshpay demo`: the whole offline story on one machine.
//!
//! An issuer escrows allowances for two wallets; four devices pay each
//! other with no network beyond their local links; the ship's LAN splits
//! in two; a cloned wallet spends the same money on both sides; when the
//! halves meet again the mesh proves the double spend, every node learns
//! it, and the culprit is refused everywhere. Each node keeps a real redb
//! database; the links between them run in memory (the libp2p and BLE
//! transports carry the same messages).

use std::path::Path;
use std::time::Instant;

use meshpay_proto::prelude::*;
use serde::Serialize;

use crate::local::{PaymentOutcome, pay, sync};
use crate::node::{Node, NodeError};
use crate::store::Role;

/// What the demo did, step by step; printed as text or JSON.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    /// The steps in order.
    pub steps: Vec<Step>,
    /// Each node at the end.
    pub nodes: Vec<NodeSummary>,
    /// Whether every node holds the conflict proof against the culprit.
    pub proof_everywhere: bool,
    /// Whether every payee refused the culprit's next payment.
    pub culprit_refused_everywhere: bool,
    /// Wall time of the whole demo, in milliseconds.
    pub elapsed_ms: u64,
}

/// One step of the story.
#[derive(Debug, Serialize)]
pub struct Step {
    /// What happened.
    pub what: String,
    /// The outcome, in words.
    pub outcome: String,
}

/// One node at the end.
#[derive(Debug, Serialize)]
pub struct NodeSummary {
    /// Its name.
    pub name: String,
    /// Receipts it paid.
    pub paid: usize,
    /// Receipts it received.
    pub received: usize,
    /// Entries in its partial ledger.
    pub ledger_entries: usize,
    /// Conflict proofs it holds.
    pub proofs: usize,
    /// Its ledger digest (hex).
    pub digest: String,
}

fn outcome_text(o: &PaymentOutcome) -> String {
    match o {
        PaymentOutcome::Paid(r) => format!(
            "accepted offline: receipt for transfer {}… (seq {}, cumulative {})",
            &r.transfer.id().to_string()[..12],
            r.transfer.header().seq,
            r.transfer.header().cumulative
        ),
        PaymentOutcome::Refused(rule) => format!("refused by the payee: rule {}", rule.name()),
        PaymentOutcome::PayerRefused(e) => format!("refused by the payer: {e}"),
        PaymentOutcome::Uncertain => "no answer".into(),
    }
}

fn money(minor: u64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// Runs the demo with its databases under `dir`.
pub fn run(dir: &Path) -> Result<DemoReport, NodeError> {
    let started = Instant::now();
    let mut rng = crate::os_rng()?;
    let issuer = SecretKey::generate(&mut rng);
    let trust = TrustStore::new(issuer.public());
    let eur = Currency::new("EUR").unwrap_or_else(|| unreachable!("a valid code"));
    // The demo's wall clock: 2027-01-15 08:00 UTC.
    let now = Timestamp(1_800_000_000);
    let mut steps = Vec::new();
    let mut step = |what: String, outcome: String| {
        tracing::info!(%what, %outcome);
        steps.push(Step { what, outcome });
    };

    let open = |name: &str, key: SecretKey| {
        Node::open(name, &dir.join(format!("{name}.redb")), key, trust.clone())
    };
    let alice_key = SecretKey::generate(&mut rng);
    let mut alice = open("alice", alice_key.clone())?;
    let mut bob = open("bob-bar", SecretKey::generate(&mut rng))?;
    let mut carol = open("carol-shop", SecretKey::generate(&mut rng))?;
    let mut dave = open("dave", SecretKey::generate(&mut rng))?;

    // Online, before sailing: the issuer escrows two allowances.
    let mut allowance = |id: u8, wallet: PublicKey, amount: u64| {
        let mut raw = [0u8; 16];
        rand::Rng::fill_bytes(&mut rng, &mut raw);
        raw[0] = id;
        Allowance::sign(
            AllowanceTerms {
                id: AllowanceId(raw),
                wallet,
                amount,
                currency: eur,
                issued_at: now.minus(3_600),
                expires_at: now.plus(7 * 86_400),
                caps: Caps {
                    max_per_payment: 5_000,
                    max_payments: 50,
                },
                tier: 1,
                restriction: None,
                issuer: issuer.public(),
            },
            &issuer,
        )
    };
    let alice_allowance = allowance(1, alice.public_key(), 10_000);
    alice.add_allowance(alice_allowance.clone())?;
    dave.add_allowance(allowance(2, dave.public_key(), 5_000))?;
    step(
        "online: the issuer escrows 100.00 EUR for alice and 50.00 EUR for dave".into(),
        "two issuer-signed allowances, caps 50.00 per payment and 50 payments".into(),
    );

    // At sea, the whole ship LAN up.
    let o = pay(&mut alice, &mut bob, 450, eur, Some("coffee"), now)?;
    step(
        format!("alice pays bob-bar {} EUR", money(450)),
        outcome_text(&o),
    );
    let o = pay(&mut dave, &mut carol, 1_200, eur, Some("sunscreen"), now)?;
    step(
        format!("dave pays carol-shop {} EUR", money(1_200)),
        outcome_text(&o),
    );
    // Along the chain and back, so that everything reaches everyone.
    for (a, b) in [(0, 1), (1, 2), (2, 3), (1, 2), (0, 1)] {
        let mut nodes = [&mut alice, &mut bob, &mut carol, &mut dave];
        let (left, right) = nodes.split_at_mut(b);
        sync(left[a], right[0]).map_err(sync_error)?;
    }
    step(
        "the LAN gossips: every node syncs its partial ledger with its neighbour".into(),
        format!(
            "all ledgers equal: {}",
            alice.ledger().digest() == dave.ledger().digest()
        ),
    );

    // The LAN splits: {alice, bob-bar} | {carol-shop, dave, mallory}.
    // Mallory holds a clone of alice's phone, restored from a backup taken
    // after the coffee: same key, same counter.
    let mut mallory = open("mallory (alice's clone)", alice_key)?;
    mallory.add_allowance(alice_allowance.clone())?;
    let culprit = alice_allowance.id;
    let (spend, _) = alice.store().spend(&culprit)?;
    mallory.store().commit_spend(&culprit, spend, None)?;
    step(
        "the ship LAN splits in two; a clone of alice's wallet appears on the other side".into(),
        "{alice, bob-bar} | {carol-shop, dave, mallory}".into(),
    );
    let o = pay(&mut alice, &mut bob, 4_000, eur, Some("dinner"), now)?;
    step(
        format!("alice pays bob-bar {} EUR", money(4_000)),
        outcome_text(&o),
    );
    let o = pay(&mut mallory, &mut carol, 4_000, eur, Some("watch"), now)?;
    step(
        format!(
            "mallory (the clone) pays carol-shop {} EUR with the same money",
            money(4_000)
        ),
        outcome_text(&o),
    );

    // The halves meet again.
    let (s1, s2) = sync(&mut bob, &mut carol).map_err(sync_error)?;
    let mut found = s1.new_proofs;
    found.extend(s2.new_proofs);
    found.dedup();
    let kinds: Vec<&str> = found
        .iter()
        .map(|p| match p {
            ConflictProof::Fork { .. } => "fork",
            ConflictProof::Rewind { .. } => "rewind",
            ConflictProof::OverLimit { .. } => "over-limit",
        })
        .collect();
    step(
        "the LAN heals: bob-bar and carol-shop sync".into(),
        format!(
            "double spend caught: conflict proof ({}) for alice's allowance, {} bytes exchanged",
            kinds.join(", "),
            s1.bytes_sent + s2.bytes_sent
        ),
    );
    {
        let mut nodes = [&mut alice, &mut bob, &mut carol, &mut dave, &mut mallory];
        for (a, b) in [(0, 1), (1, 2), (2, 3), (3, 4)] {
            let (left, right) = nodes.split_at_mut(b);
            sync(left[a], right[0]).map_err(sync_error)?;
        }
    }
    let everyone = [&alice, &bob, &carol, &dave, &mallory];
    let proof_everywhere = everyone.iter().all(|n| n.ledger().has_conflict(&culprit));
    step(
        "the proof spreads ahead of everything else".into(),
        format!("every node holds it: {proof_everywhere}"),
    );

    // The culprit tries again, anywhere.
    let mut refusals = Vec::new();
    for payee in [&mut bob, &mut carol, &mut dave] {
        let o = pay(&mut alice, payee, 100, eur, Some("snack"), now)?;
        refusals.push(matches!(o, PaymentOutcome::Refused(Rule::NoKnownConflict)));
        step(
            format!("alice tries to pay {} 1.00 EUR", payee.name()),
            outcome_text(&o),
        );
    }
    let culprit_refused_everywhere = refusals.iter().all(|r| *r);

    let mut nodes = Vec::new();
    for n in [&alice, &bob, &carol, &dave, &mallory] {
        let receipts = n.receipts()?;
        nodes.push(NodeSummary {
            name: n.name().to_string(),
            paid: receipts.iter().filter(|(_, r)| *r == Role::Paid).count(),
            received: receipts
                .iter()
                .filter(|(_, r)| *r == Role::Received)
                .count(),
            ledger_entries: n.ledger().len(),
            proofs: n.ledger().proofs().len(),
            digest: n.ledger().digest().to_string()[..16].to_string(),
        });
    }
    Ok(DemoReport {
        steps,
        nodes,
        proof_everywhere,
        culprit_refused_everywhere,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

fn sync_error(e: crate::local::SyncFailure) -> NodeError {
    match e {
        crate::local::SyncFailure::Node(n) => n,
        crate::local::SyncFailure::Session(s) => NodeError::Sync(s),
    }
}

/// The report for people.
pub fn render(report: &DemoReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "meshpay demo: offline payments, a double spend, and the mesh catching it\n"
    );
    for (i, s) in report.steps.iter().enumerate() {
        let _ = writeln!(out, "{:>2}. {}\n    -> {}", i + 1, s.what, s.outcome);
    }
    let _ = writeln!(
        out,
        "\n{:<26} {:>5} {:>9} {:>8} {:>7}  ledger digest",
        "node", "paid", "received", "ledger", "proofs"
    );
    for n in &report.nodes {
        let _ = writeln!(
            out,
            "{:<26} {:>5} {:>9} {:>8} {:>7}  {}",
            n.name, n.paid, n.received, n.ledger_entries, n.proofs, n.digest
        );
    }
    let _ = writeln!(
        out,
        "\nconflict proof at every node: {}; culprit refused by every payee: {}; {} ms",
        yes(report.proof_everywhere),
        yes(report.culprit_refused_everywhere),
        report.elapsed_ms
    );
    let _ = writeln!(
        out,
        "settlement (escrow, refunds, final receipts) arrives with the settlement service (issue #5)."
    );
    out
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}
