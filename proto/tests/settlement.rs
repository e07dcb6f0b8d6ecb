//! The settlement rules (docs/protocol.md, "Settlement"): one focused test
//! per rule, then the conservation and order-independence property over
//! random allowances, forks, duplicates, orders and batchings.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use meshpay_proto::crypto::KeyBytes;
use meshpay_proto::prelude::*;
use meshpay_proto::settlement::*;
use proptest::prelude::*;

const GRACE: u64 = 7 * 86_400;

/// The service in memory: allowance states and account balances.
struct Service {
    trust: TrustStore,
    config: SettlementConfig,
    credentials: BTreeMap<PublicKey, PayeeCredential>,
    states: BTreeMap<AllowanceId, AllowanceState>,
    balances: BTreeMap<Account, i128>,
    revocations: Vec<(Revoked, RevocationReason)>,
}

impl Service {
    fn new(config: SettlementConfig) -> Self {
        Service {
            trust: trust(),
            config,
            credentials: BTreeMap::new(),
            states: BTreeMap::new(),
            balances: BTreeMap::new(),
            revocations: Vec::new(),
        }
    }

    fn with(allowances: &[Allowance], config: SettlementConfig) -> Self {
        let mut s = Service::new(config);
        for a in allowances {
            s.open(a.clone());
        }
        s
    }

    fn open(&mut self, a: Allowance) {
        // Each wallet starts with what it escrows, so every balance starts
        // at zero after escrowing.
        *self
            .balances
            .entry(Account::Wallet(a.wallet.into()))
            .or_default() += i128::from(a.amount);
        let (state, escrow) = AllowanceState::open(a, &self.trust).expect("trusted allowance");
        self.apply(&[escrow]);
        self.states.insert(state.allowance().id, state);
    }

    fn apply(&mut self, movements: &[Movement]) {
        for m in movements {
            assert!(m.amount > 0 || m.kind == MovementKind::Escrow, "{m:?}");
            *self.balances.entry(m.from).or_default() -= i128::from(m.amount);
            *self.balances.entry(m.to).or_default() += i128::from(m.amount);
        }
    }

    fn ingest(&mut self, receipts: &[Receipt], now: Timestamp) -> BatchReport {
        let ctx = SettlementContext {
            trust: &self.trust,
            config: &self.config,
            credentials: &self.credentials,
        };
        let report = ingest_batch(&mut self.states, receipts, now, &ctx);
        self.apply(&report.movements);
        self.revocations.extend(report.revocations.iter().copied());
        report
    }

    fn close_all(&mut self, now: Timestamp) {
        let config = self.config;
        let refunds: Vec<Movement> = self
            .states
            .values_mut()
            .filter_map(|s| s.close(now, &config))
            .collect();
        self.apply(&refunds);
    }

    fn balance(&self, account: Account) -> i128 {
        self.balances.get(&account).copied().unwrap_or(0)
    }

    fn outcomes(&self) -> BTreeMap<TransferId, Outcome> {
        self.states
            .values()
            .flat_map(|s| {
                s.claims()
                    .map(|(id, c)| (id, c.outcome().expect("resolved")))
            })
            .collect()
    }
}

fn wallet_of(k: &SecretKey) -> Account {
    Account::Wallet(k.public().into())
}

fn escrow_a1() -> Account {
    Account::Escrow(AllowanceId([0xA1; 16]))
}

/// A receipt of the fixture allowance, paid to `to`.
fn receipt_to(to: &SecretKey, seq: u32, cumulative: u64, amount: u64, nonce: u8) -> Receipt {
    let t = transfer_raw(
        &payer(),
        to.public(),
        amount,
        Nonce([nonce; 16]),
        seq,
        cumulative,
    );
    Receipt::acknowledge(t, to)
}

fn receipt(seq: u32, cumulative: u64, amount: u64, nonce: u8) -> Receipt {
    receipt_to(&payee(), seq, cumulative, amount, nonce)
}

fn at(secs: u64) -> Timestamp {
    NOW.plus(secs)
}

/// Two receipts for sequence number 1 to two payees: (the one with the
/// smaller transfer id, the other).
fn fork() -> (Receipt, Receipt) {
    let a = receipt_to(&payee(), 1, 450, 450, 1);
    let b = receipt_to(&key(4), 1, 450, 450, 2);
    if a.transfer.id() < b.transfer.id() {
        (a, b)
    } else {
        (b, a)
    }
}

#[test]
fn honest_receipts_settle_and_credit_the_payee() {
    let mut s = Service::with(&[allowance()], SettlementConfig::default());
    let rs = [
        receipt(1, 450, 450, 1),
        receipt(2, 950, 500, 2),
        receipt(3, 1_000, 50, 3),
    ];
    let report = s.ingest(&rs, at(60));
    for r in &report.receipts {
        assert_eq!(r.outcome, Outcome::Settled);
        assert!(!r.duplicate && r.error.is_none());
    }
    assert_eq!(report.changed.len(), 3);
    assert!(report.proofs.is_empty() && report.revocations.is_empty());
    assert_eq!(s.balance(wallet_of(&payee())), 1_000);
    assert_eq!(s.balance(escrow_a1()), 9_000);
    let lines = report.statement_lines();
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l.wallet == KeyBytes::from(payee().public())
                && l.direction == Direction::In
                && l.kind == MovementKind::Credit)
    );
    assert_eq!(lines.iter().map(|l| l.amount).sum::<u64>(), 1_000);
}

#[test]
fn a_receipt_sent_again_settles_once() {
    let mut s = Service::with(&[allowance()], SettlementConfig::default());
    let r = receipt(1, 450, 450, 1);
    // Twice in one batch, then again later.
    let first = s.ingest(&[r.clone(), r.clone()], at(60));
    assert_eq!(first.receipts[0].outcome, Outcome::Settled);
    assert!(!first.receipts[0].duplicate);
    assert_eq!(first.receipts[1].outcome, Outcome::Settled);
    assert!(first.receipts[1].duplicate);
    assert_eq!(first.movements.len(), 1);
    let again = s.ingest(std::slice::from_ref(&r), at(120));
    assert!(again.receipts[0].duplicate);
    assert!(again.movements.is_empty() && again.changed.is_empty());
    assert_eq!(s.balance(wallet_of(&payee())), 450);
}

#[test]
fn a_damaged_copy_does_not_block_the_genuine_receipt() {
    let genuine = receipt(1, 450, 450, 1);
    let mut damaged = genuine.clone();
    damaged.payee_signature.0[10] ^= 1;
    assert_eq!(damaged.transfer.id(), genuine.transfer.id());

    let mut s = Service::with(&[allowance()], SettlementConfig::default());
    let first = s.ingest(&[damaged.clone(), genuine.clone()], at(60));
    assert_eq!(
        first.receipts[0].outcome,
        Outcome::Refused(Refusal::BadSignature)
    );
    assert_eq!(first.receipts[1].outcome, Outcome::Settled);
    assert_eq!(first.outcomes()[&genuine.transfer.id()], Outcome::Settled);
    // Once the genuine one is held, a damaged copy is only a duplicate.
    let later = s.ingest(&[damaged], at(120));
    assert!(later.receipts[0].duplicate);
    assert_eq!(later.receipts[0].outcome, Outcome::Settled);
    assert_eq!(s.balance(wallet_of(&payee())), 450);
}

#[test]
fn a_fork_is_won_by_the_smaller_transfer_id_in_either_order() {
    let (winner, loser) = fork();
    let payee_of = |r: &Receipt| Account::Wallet(r.transfer.body().payee);
    for order in [[&winner, &loser], [&loser, &winner]] {
        let mut s = Service::with(&[allowance()], SettlementConfig::default());
        let first = s.ingest(&[order[0].clone()], at(60));
        assert_eq!(first.receipts[0].outcome, Outcome::Settled);
        let second = s.ingest(&[order[1].clone()], at(120));
        // The fork is proven, and the culprit's wallet revoked, once.
        assert_eq!(second.proofs.len(), 1);
        let proof = &second.proofs[0];
        assert!(matches!(proof, ConflictProof::Fork { .. }));
        proof.verify(&allowance()).expect("valid proof");
        assert_eq!(
            second.revocations,
            vec![(
                Revoked::Wallet(payer().public()),
                RevocationReason::DoubleSpend
            )]
        );
        let outcomes = s.outcomes();
        assert_eq!(outcomes[&winner.transfer.id()], Outcome::Settled);
        assert_eq!(
            outcomes[&loser.transfer.id()],
            Outcome::Refused(Refusal::Conflicted)
        );
        assert_eq!(s.balance(payee_of(&winner)), 450);
        assert_eq!(s.balance(payee_of(&loser)), 0);
        // When the loser came first it was credited, then reversed.
        let reversed = second
            .movements
            .iter()
            .any(|m| m.kind == MovementKind::Reversal);
        assert_eq!(reversed, std::ptr::eq(order[0], &loser));
    }
}

#[test]
fn the_escrow_is_never_exceeded_and_later_receipts_still_fit() {
    let a = allowance_with(|t| t.caps.max_per_payment = 6_000);
    let mut s = Service::with(std::slice::from_ref(&a), SettlementConfig::default());
    // seq 2 rewinds the counter (6,000 + 5,000 needs a cumulative of at
    // least 11,000): it would take the escrow past 10,000.
    let rs = [
        receipt(1, 6_000, 6_000, 1),
        receipt(2, 6_000, 5_000, 2),
        receipt(3, 10_000, 4_000, 3),
    ];
    let report = s.ingest(&rs, at(60));
    let outcomes: Vec<Outcome> = report.receipts.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Settled,
            Outcome::Refused(Refusal::OverEscrow),
            Outcome::Settled
        ]
    );
    assert!(matches!(report.proofs[..], [ConflictProof::Rewind { .. }]));
    report.proofs[0].verify(&a).expect("valid proof");
    assert_eq!(
        s.states.values().next().expect("one").settled_total(),
        10_000
    );
    assert_eq!(s.balance(escrow_a1()), 0);
    assert_eq!(s.balance(wallet_of(&payee())), 10_000);
}

#[test]
fn the_loss_policy_decides_who_bears_a_lost_fork() {
    let (winner, loser) = fork();
    let loser_account = Account::Wallet(loser.transfer.body().payee);

    // The payee bears it: nothing for the loser.
    let mut s = Service::with(&[allowance()], SettlementConfig::default());
    s.ingest(std::slice::from_ref(&loser), at(60));
    s.ingest(std::slice::from_ref(&winner), at(120));
    assert_eq!(s.balance(loser_account), 0);
    assert_eq!(s.balance(Account::RiskFund), 0);

    // The fund pays up to its cap, in either order, and the outcome says so.
    let fund = SettlementConfig {
        loss_policy: LossPolicy::IssuerRiskFund {
            cap_per_receipt: 300,
        },
        ..SettlementConfig::default()
    };
    for order in [[&winner, &loser], [&loser, &winner]] {
        let mut s = Service::with(&[allowance()], fund);
        s.ingest(&[order[0].clone()], at(60));
        let report = s.ingest(&[order[1].clone()], at(120));
        let covered = Outcome::Covered {
            refusal: Refusal::Conflicted,
            by_fund: 300,
        };
        assert!(report.changed.contains(&(loser.transfer.id(), covered)));
        assert_eq!(s.outcomes()[&loser.transfer.id()], covered);
        assert_eq!(s.balance(loser_account), 300);
        assert_eq!(s.balance(Account::RiskFund), -300);
        assert_eq!(s.balance(escrow_a1()), 10_000 - 450);
    }
}

#[test]
fn unspent_escrow_is_refunded_after_expiry_and_grace() {
    let mut s = Service::with(&[allowance()], SettlementConfig::default());
    let expires = terms().expires_at;
    let r1 = receipt(1, 450, 450, 1);
    s.ingest(std::slice::from_ref(&r1), at(60));
    // A receipt made before expiry may still arrive during the grace period.
    let last_instant = expires.plus(GRACE);
    let r2 = receipt(2, 950, 500, 2);
    let report = s.ingest(std::slice::from_ref(&r2), last_instant);
    assert_eq!(report.receipts[0].outcome, Outcome::Settled);

    let state = s.states.get_mut(&AllowanceId([0xA1; 16])).expect("held");
    assert_eq!(state.close(last_instant, &s.config), None, "not due yet");
    let refund = state
        .close(last_instant.plus(1), &s.config)
        .expect("refund");
    assert_eq!(refund.kind, MovementKind::Refund);
    assert_eq!(refund.amount, 10_000 - 950);
    assert_eq!(state.close(last_instant.plus(2), &s.config), None, "once");
    let lines: Vec<StatementLine> = refund.statement_lines().collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].wallet, KeyBytes::from(payer().public()));
    assert_eq!(lines[0].direction, Direction::In);
    assert_eq!(lines[0].amount, 10_000 - 950);
    s.apply(&[refund]);
    assert_eq!(s.balance(escrow_a1()), 0);
    assert_eq!(s.balance(wallet_of(&payer())), 10_000 - 950);

    // Afterwards: a new receipt is late, a settled one stays settled.
    let late = s.ingest(&[receipt(3, 1_000, 50, 3), r1], last_instant.plus(10));
    assert_eq!(late.receipts[0].outcome, Outcome::Refused(Refusal::Late));
    assert!(matches!(
        late.receipts[0].error,
        Some(SettlementError::Late { .. })
    ));
    assert_eq!(late.receipts[1].outcome, Outcome::Settled);
    assert!(late.receipts[1].duplicate && late.movements.is_empty());
}

#[test]
fn a_lost_device_revokes_the_allowance_and_refunds_the_rest_early() {
    let mut s = Service::with(&[allowance()], SettlementConfig::default());
    let id = AllowanceId([0xA1; 16]);
    let reported = at(3_600);
    let state = s.states.get_mut(&id).expect("held");
    assert_eq!(
        state.report_lost(reported),
        Some((Revoked::Allowance(id), RevocationReason::LostDevice))
    );
    assert_eq!(state.report_lost(reported.plus(5)), None, "reported once");
    let deadline = reported.plus(s.config.revocation_propagation_secs + GRACE);
    assert_eq!(state.closes_at(&s.config), deadline);
    assert!(deadline < terms().expires_at.plus(GRACE));

    // Spent before the revocation could reach the mesh: settles.
    let report = s.ingest(&[receipt(1, 450, 450, 1)], deadline);
    assert_eq!(report.receipts[0].outcome, Outcome::Settled);
    let state = s.states.get_mut(&id).expect("held");
    let refund = state.close(deadline.plus(1), &s.config).expect("refund");
    assert_eq!(refund.amount, 10_000 - 450);
    s.apply(&[refund]);
    // Anything after the deadline is refused: the rest went back.
    let late = s.ingest(&[receipt(2, 950, 500, 2)], deadline.plus(2));
    assert_eq!(late.receipts[0].outcome, Outcome::Refused(Refusal::Late));
    assert_eq!(s.balance(wallet_of(&payer())), 10_000 - 450);
    assert_eq!(s.balance(wallet_of(&payee())), 450);
}

#[test]
fn bad_signatures_in_a_batch_are_pinpointed() {
    let mut rs: Vec<Receipt> = (1..=6)
        .map(|i| receipt(i, u64::from(i) * 100, 100, i as u8))
        .collect();
    // Receipt 2: the payer's signature is damaged. Receipt 4: the payee's.
    let mut t = rs[1].transfer.clone().encode();
    let last = t.len() - 1;
    t[last] ^= 1;
    rs[1].transfer = Transfer::decode(&t).expect("still decodes");
    rs[3].payee_signature.0[0] ^= 1;
    // Receipt 7 names a payee whose bytes are no valid key (y >= p).
    let body = TransferBody {
        payee: KeyBytes([0xff; 32]),
        nonce: Nonce([7; 16]),
        payer_time: NOW,
    };
    rs.push(Receipt {
        transfer: Transfer::sign(AllowanceId([0xA1; 16]), 7, 700, 100, body, &payer()),
        payee_signature: Signature([0; 64]),
    });
    for mode in [SignatureCheck::Batch, SignatureCheck::Strict] {
        let config = SettlementConfig {
            signature_check: mode,
            ..SettlementConfig::default()
        };
        let mut s = Service::with(&[allowance()], config);
        let report = s.ingest(&rs, at(60));
        for (i, r) in report.receipts.iter().enumerate() {
            match i {
                1 => {
                    assert_eq!(r.outcome, Outcome::Refused(Refusal::BadSignature));
                    assert_eq!(
                        r.error,
                        Some(SettlementError::Check(PaymentError::BadPayerSignature))
                    );
                }
                3 | 6 => {
                    assert_eq!(r.outcome, Outcome::Refused(Refusal::BadSignature));
                    assert_eq!(r.error, Some(SettlementError::BadPayeeSignature));
                }
                _ => assert_eq!(r.outcome, Outcome::Settled, "receipt {i} ({mode:?})"),
            }
        }
        assert!(report.proofs.is_empty(), "a forged header proves nothing");
        // The acknowledgement names the settled ones, and not the ids of
        // the bad copies: a genuine copy of them may still come.
        let ack = report.outcomes();
        assert_eq!(ack.len(), 4);
        assert!(ack.values().all(|o| *o == Outcome::Settled));
        assert!(!ack.contains_key(&rs[1].transfer.id()));
        assert_eq!(s.balance(wallet_of(&payee())), 400);
    }
}

#[test]
fn caps_and_the_payee_restriction_are_checked_again() {
    let mut s = Service::with(&[allowance()], SettlementConfig::default());
    // Over the per-payment cap: refused, and the signed header is proof.
    let report = s.ingest(&[receipt(1, 6_000, 6_000, 1)], at(60));
    assert_eq!(
        report.receipts[0].outcome,
        Outcome::Refused(Refusal::OutsideCaps)
    );
    assert!(matches!(
        report.proofs[..],
        [ConflictProof::OverLimit { .. }]
    ));
    assert_eq!(report.revocations.len(), 1);

    // Restricted to another payee: refused, but no evidence of double
    // spending.
    let only_other = allowance_with(|t| {
        t.restriction = Some(Restriction::Payees(BTreeSet::from([key(4).public()])))
    });
    let mut s = Service::with(&[only_other], SettlementConfig::default());
    let report = s.ingest(
        &[receipt(1, 450, 450, 1), receipt_to(&key(4), 2, 900, 450, 2)],
        at(60),
    );
    assert_eq!(
        report.receipts[0].outcome,
        Outcome::Refused(Refusal::OutsideCaps)
    );
    assert_eq!(report.receipts[1].outcome, Outcome::Settled);
    assert!(report.proofs.is_empty());

    // Restricted to a class: the issuer's credential record admits the payee.
    let by_class = allowance_with(|t| t.restriction = Some(Restriction::PayeeClass(7)));
    let mut s = Service::with(&[by_class], SettlementConfig::default());
    let r = receipt(1, 450, 450, 1);
    let refused = s.ingest(std::slice::from_ref(&r), at(60));
    assert_eq!(
        refused.receipts[0].outcome,
        Outcome::Refused(Refusal::OutsideCaps)
    );
    let credential = payee_credential(7);
    s.credentials.insert(payee().public(), credential);
    let settled = s.ingest(&[r], at(120));
    assert_eq!(settled.receipts[0].outcome, Outcome::Settled);
}

#[test]
fn unknown_and_untrusted_allowances_are_refused() {
    let mut s = Service::new(SettlementConfig::default());
    let report = s.ingest(&[receipt(1, 450, 450, 1)], at(60));
    assert_eq!(
        report.receipts[0].outcome,
        Outcome::Refused(Refusal::UnknownAllowance)
    );
    let untrusted = allowance_with(|t| t.issuer = key(9).public());
    assert_eq!(
        AllowanceState::open(untrusted, &trust()).err(),
        Some(PaymentError::UntrustedIssuer)
    );
    let forged = Allowance::sign(terms(), &key(9));
    assert_eq!(
        AllowanceState::open(forged, &trust()).err(),
        Some(PaymentError::BadIssuerSignature)
    );
}

#[test]
fn the_state_survives_storage() {
    let mut s = Service::with(&[allowance()], SettlementConfig::default());
    s.ingest(
        &[receipt(1, 450, 450, 1), receipt_to(&key(4), 1, 450, 450, 2)],
        at(60),
    );
    let state = &s.states[&AllowanceId([0xA1; 16])];
    let bytes = state.encode();
    assert_eq!(&AllowanceState::decode(&bytes).expect("decodes"), state);
}

// ---- the property ---------------------------------------------------------

/// One receipt to make: allowance index, sequence number, amount,
/// cumulative above the least it may be (`None`: the honest chain's
/// amount and cumulative for that sequence number, if it stays within the
/// allowance), payee, nonce, and whether to damage its payee signature.
type Spec = (usize, u32, u64, Option<u64>, usize, u8, bool);

fn make_world(allowance_specs: &[AllowanceSpec], specs: &[Spec]) -> (Vec<Allowance>, Vec<Receipt>) {
    let allowances: Vec<(SecretKey, Allowance)> = allowance_specs
        .iter()
        .enumerate()
        .map(|(i, &(amount, cap, _))| {
            // Two allowances may share a wallet key.
            let k = key(0x40 + (i as u8 % 2));
            let a = allowance_with(|t| {
                t.id = AllowanceId([0x50 + i as u8; 16]);
                t.wallet = k.public();
                t.amount = amount;
                t.caps.max_per_payment = cap;
                t.caps.max_payments = 6;
            });
            (k, a)
        })
        .collect();
    let payees = [payee(), key(4), key(5)];
    let receipts = specs
        .iter()
        .map(|&(ai, seq, amount, extra, pi, nonce, damaged)| {
            let (k, a) = &allowances[ai % allowances.len()];
            // The honest chain pays `step` per payment, unless
            // that leaves the allowance, when the header is made up.
            let step = 1 + (a.amount / 8).min(a.caps.max_per_payment - 1);
            let honest = u64::from(seq) * step;
            let cheater = allowance_specs[ai % allowances.len()].2 == 1;
            let (amount, cumulative, pi, nonce) = match extra {
                // An honest payer's duplicates are copies, not forks.
                _ if !cheater && honest <= a.amount => (step, honest, seq as usize, seq as u8),
                None if honest <= a.amount => (step, honest, pi, nonce),
                _ => {
                    let amount = 1 + amount % a.caps.max_per_payment;
                    let cumulative = amount + u64::from(seq - 1) + extra.unwrap_or(0);
                    (amount, cumulative, pi, nonce)
                }
            };
            let to = &payees[pi % payees.len()];
            let body = TransferBody {
                payee: to.public().into(),
                nonce: Nonce([nonce; 16]),
                payer_time: NOW,
            };
            let t = Transfer::sign(a.id, seq, cumulative, amount, body, k);
            let mut r = Receipt::acknowledge(t, to);
            if damaged {
                r.payee_signature.0[5] ^= 0x40;
            }
            r
        })
        .collect();
    (allowances.into_iter().map(|(_, a)| a).collect(), receipts)
}

/// Runs one service over `order` (indices into `receipts`), cut into
/// batches of the given sizes, with a lost-device report for the first
/// allowance after batch `lost_after`; checks the invariants after every
/// step and returns the service after every allowance has closed.
fn run(
    allowances: &[Allowance],
    receipts: &[Receipt],
    order: &[usize],
    sizes: &[usize],
    lost_after: usize,
    config: SettlementConfig,
) -> Service {
    let mut s = Service::with(allowances, config);
    let total: i128 = s.balances.values().sum();
    let check = |s: &Service| {
        assert_eq!(s.balances.values().sum::<i128>(), total, "conservation");
        for (id, state) in &s.states {
            let amount = state.allowance().amount;
            let settled = state.settled_total();
            assert!(settled <= amount, "escrow exceeded");
            let escrow = s.balance(Account::Escrow(*id));
            let refunded = state.closed().map_or(0, |c| c.refund);
            assert_eq!(
                escrow,
                i128::from(amount - settled - refunded),
                "escrow balance"
            );
        }
    };
    let report_lost = |s: &mut Service| {
        let first = allowances[0].id;
        if let Some(rev) = s
            .states
            .get_mut(&first)
            .and_then(|st| st.report_lost(at(50)))
        {
            s.revocations.push(rev);
        }
    };
    let mut rest = order;
    let mut batch = 0;
    while !rest.is_empty() {
        if batch == lost_after {
            report_lost(&mut s);
        }
        let n = sizes[batch % sizes.len()].min(rest.len());
        let chunk: Vec<Receipt> = rest[..n].iter().map(|&i| receipts[i].clone()).collect();
        rest = &rest[n..];
        let report = s.ingest(&chunk, at(100 + batch as u64));
        for (r, sent) in report.receipts.iter().zip(&chunk) {
            let h = sent.transfer.header();
            if r.error.is_none() {
                // What the report says is what the state holds.
                assert_eq!(
                    Some(r.outcome),
                    s.states[&h.allowance].outcome(h.seq, &r.transfer)
                );
            }
        }
        check(&s);
        batch += 1;
    }
    if lost_after != usize::MAX && lost_after >= batch {
        report_lost(&mut s);
    }
    s.close_all(at(30 * 86_400));
    check(&s);
    s
}

fn arb_config() -> impl Strategy<Value = SettlementConfig> {
    prop_oneof![Just(None), (0u64..600).prop_map(Some)].prop_map(|cap| SettlementConfig {
        loss_policy: match cap {
            None => LossPolicy::PayeeBears,
            Some(cap_per_receipt) => LossPolicy::IssuerRiskFund { cap_per_receipt },
        },
        ..SettlementConfig::default()
    })
}

/// Escrow, per-payment cap, and whether the payer cheats (1), per allowance.
type AllowanceSpec = (u64, u64, u8);

fn arb_case() -> impl Strategy<Value = (Vec<AllowanceSpec>, Vec<Spec>, Vec<usize>)> {
    let allowances = proptest::collection::vec((1u64..3_000, 1u64..1_500, 0u8..2), 1..=3);
    let specs = proptest::collection::vec(
        (
            0usize..3,
            1u32..=6,
            any::<u64>(),
            prop_oneof![3 => Just(None), 2 => (0u64..4).prop_map(Some), 1 => (0u64..3_000).prop_map(Some)],
            0usize..3,
            0u8..3,
            proptest::bool::weighted(0.05),
        ),
        1..20,
    );
    // How often each receipt is submitted.
    let copies = proptest::collection::vec(1usize..=3, 20);
    (allowances, specs, copies)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// For random allowances and receipts (forks, rewinds, over-limit
    /// headers, bad signatures and duplicates included), submitted in two
    /// random orders, batchings and signature modes: the escrow is never
    /// exceeded, money is conserved after every batch, and both runs end
    /// with the same outcomes, balances, conflicts and revocations.
    #[test]
    fn settlement_conserves_money_and_ignores_order(
        (allowance_specs, specs, copies) in arb_case(),
        config in arb_config(),
        seed_a in any::<u64>(),
        seed_b in any::<u64>(),
        sizes_a in proptest::collection::vec(1usize..=8, 1..4),
        sizes_b in proptest::collection::vec(1usize..=8, 1..4),
        lost in proptest::option::of((0usize..6, 0usize..6)),
    ) {
        let (allowances, receipts) = make_world(&allowance_specs, &specs);
        let submissions: Vec<usize> = (0..receipts.len())
            .flat_map(|i| std::iter::repeat_n(i, copies[i]))
            .collect();
        let shuffled = |seed: u64| {
            use rand::{SeedableRng, seq::SliceRandom};
            let mut v = submissions.clone();
            v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            v
        };
        let (lost_a, lost_b) = lost.map_or((usize::MAX, usize::MAX), |(a, b)| (a, b));
        let batch_config = SettlementConfig { signature_check: SignatureCheck::Batch, ..config };
        let strict_config = SettlementConfig { signature_check: SignatureCheck::Strict, ..config };
        let a = run(&allowances, &receipts, &shuffled(seed_a), &sizes_a, lost_a, batch_config);
        let b = run(&allowances, &receipts, &shuffled(seed_b), &sizes_b, lost_b, strict_config);

        prop_assert_eq!(a.outcomes(), b.outcomes());
        let nonzero = |s: &Service| -> BTreeMap<Account, i128> {
            s.balances.iter().filter(|(_, b)| **b != 0).map(|(a, b)| (*a, *b)).collect()
        };
        prop_assert_eq!(nonzero(&a), nonzero(&b));
        let conflicted = |s: &Service| -> Vec<bool> {
            s.states.values().map(|st| st.conflict().is_some()).collect()
        };
        prop_assert_eq!(conflicted(&a), conflicted(&b));
        let revoked = |s: &Service| -> BTreeSet<Revoked> {
            s.revocations.iter().map(|(r, _)| *r).collect()
        };
        prop_assert_eq!(revoked(&a), revoked(&b));

        // The rule itself, against the final set: per sequence number only
        // the smallest transfer id can settle; a refusal for a conflict
        // loss needs a proven conflict; and the fund pays only those.
        for state in a.states.values() {
            let mut seen = BTreeSet::new();
            for (id, claim) in state.claims() {
                let seq = claim.header().seq;
                let first = seen.insert(seq);
                let outcome = claim.outcome().expect("resolved");
                if !first {
                    prop_assert_ne!(outcome, Outcome::Settled, "{:?}", id);
                }
                let lost = matches!(
                    outcome,
                    Outcome::Refused(r) | Outcome::Covered { refusal: r, .. } if r.is_conflict_loss()
                );
                if lost {
                    prop_assert!(state.conflict().is_some());
                }
                if let Outcome::Covered { by_fund, .. } = outcome {
                    prop_assert_eq!(by_fund, config.loss_policy.cover(claim.header().amount));
                }
            }
            prop_assert!(state.closed().is_some());
        }
    }
}
