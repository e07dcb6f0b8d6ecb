//! Property tests: encodings round-trip and are tamper-evident, decoders
//! never panic, and the handshake never signs two transfers for one
//! sequence number, whatever the network and crashes do.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use meshpay_proto::prelude::*;
use proptest::prelude::*;

fn arb_key() -> impl Strategy<Value = SecretKey> {
    any::<[u8; 32]>().prop_map(|s| SecretKey::from_seed(&s))
}

fn arb_pub() -> impl Strategy<Value = PublicKey> {
    arb_key().prop_map(|k| k.public())
}

fn arb_currency() -> impl Strategy<Value = Currency> {
    "[A-Z]{3}".prop_map(|s| Currency::new(&s).expect("A-Z"))
}

fn arb_restriction() -> impl Strategy<Value = Option<Restriction>> {
    prop_oneof![
        Just(None),
        proptest::collection::btree_set(arb_pub(), 0..4).prop_map(|s| Some(Restriction::Payees(s))),
        any::<u32>().prop_map(|c| Some(Restriction::PayeeClass(c))),
    ]
}

fn arb_allowance() -> impl Strategy<Value = Allowance> {
    (
        arb_key(),
        arb_pub(),
        any::<[u8; 16]>(),
        any::<u64>(),
        arb_currency(),
        any::<(u64, u64, u64, u32, u8)>(),
        arb_restriction(),
    )
        .prop_map(
            |(issuer, wallet, id, amount, currency, (iat, exp, cap, n, tier), restriction)| {
                Allowance::sign(
                    AllowanceTerms {
                        id: AllowanceId(id),
                        wallet,
                        amount,
                        currency,
                        issued_at: Timestamp(iat),
                        expires_at: Timestamp(exp),
                        caps: Caps {
                            max_per_payment: cap,
                            max_payments: n,
                        },
                        tier,
                        restriction,
                        issuer: issuer.public(),
                    },
                    &issuer,
                )
            },
        )
}

fn arb_transfer() -> impl Strategy<Value = (Transfer, SecretKey)> {
    (
        arb_key(),
        arb_pub(),
        any::<([u8; 16], [u8; 16], u32, u64, u64, u64)>(),
    )
        .prop_map(|(payer, payee, (id, nonce, seq, cum, amount, time))| {
            let body = TransferBody {
                payee: payee.into(),
                nonce: Nonce(nonce),
                payer_time: Timestamp(time),
            };
            (
                Transfer::sign(AllowanceId(id), seq, cum, amount, body, &payer),
                payer,
            )
        })
}

fn arb_invoice() -> impl Strategy<Value = Invoice> {
    (
        arb_pub(),
        any::<u64>(),
        arb_currency(),
        any::<[u8; 16]>(),
        proptest::option::of(".{0,20}"),
    )
        .prop_map(|(payee, amount, currency, nonce, memo)| Invoice {
            payee,
            amount,
            currency,
            nonce: Nonce(nonce),
            memo,
            credential: None,
        })
}

fn roundtrip<T: Encode + PartialEq + std::fmt::Debug>(v: &T) {
    let bytes = v.encode();
    assert_eq!(bytes[0], meshpay_proto::encoding::FORMAT_VERSION);
    let back = T::decode(&bytes).expect("own encoding decodes");
    assert_eq!(&back, v);
    assert_eq!(back.encode(), bytes);
}

/// Flips one bit; the result must not be a valid object signed by the same
/// key: decoding fails, or the signature check does.
fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let i = bit % (b.len() * 8);
    b[i / 8] ^= 1 << (i % 8);
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn allowances_roundtrip_and_flips_are_caught(a in arb_allowance(), bit in any::<usize>()) {
        roundtrip(&a);
        let issuer = a.issuer;
        match Allowance::decode(&flip(&a.encode(), bit)) {
            Err(_) => {}
            Ok(b) => prop_assert!(!b.verify_by(&issuer)),
        }
    }

    #[test]
    fn transfers_and_receipts_roundtrip_and_flips_are_caught(
        (t, payer) in arb_transfer(), payee in arb_key(), bit in any::<usize>()
    ) {
        roundtrip(&t);
        roundtrip(t.header());
        roundtrip(t.body());
        roundtrip(&t.signed_header());
        match Transfer::decode(&flip(&t.encode(), bit)) {
            Err(_) => {}
            Ok(b) => prop_assert!(!b.verify_payer(&payer.public())),
        }
        match SignedHeader::decode(&flip(&t.signed_header().encode(), bit)) {
            Err(_) => {}
            Ok(b) => prop_assert!(!b.verify_by(&payer.public())),
        }
        // A receipt needs its body to name the acknowledging payee.
        let body = TransferBody { payee: payee.public().into(), ..t.body().clone() };
        let h = t.header();
        let t = Transfer::sign(h.allowance, h.seq, h.cumulative, h.amount, body, &payer);
        let r = Receipt::acknowledge(t, &payee);
        roundtrip(&r);
        prop_assert!(r.verify(&payer.public()));
        match Receipt::decode(&flip(&r.encode(), bit)) {
            Err(_) => {}
            Ok(b) => prop_assert!(!b.verify(&payer.public())),
        }
    }

    #[test]
    fn invoices_and_messages_roundtrip(inv in arb_invoice(), (t, _) in arb_transfer(), a in arb_allowance(), sig in any::<[u8; 32]>()) {
        roundtrip(&inv);
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&sig);
        for m in [
            PaymentMessage::Invoice(inv),
            PaymentMessage::Transfer { allowance: Some(Box::new(a)), transfer: t.clone() },
            PaymentMessage::Transfer { allowance: None, transfer: t.clone() },
            PaymentMessage::Ack { transfer: t.id(), signature: Signature(s) },
            PaymentMessage::Reject { transfer: t.id(), rule: Rule::InvoiceNonce },
        ] {
            roundtrip(&m);
        }
    }

    #[test]
    fn lists_and_acks_roundtrip_and_flips_are_caught(
        issuer in arb_key(),
        revoked in proptest::collection::btree_set(any::<[u8; 16]>(), 0..5),
        wallets in proptest::collection::btree_set(arb_pub(), 0..3),
        outcomes in proptest::collection::btree_map(any::<[u8; 32]>(), any::<bool>(), 0..5),
        bit in any::<usize>(),
    ) {
        let mut entries = BTreeMap::new();
        for id in revoked { entries.insert(Revoked::Allowance(AllowanceId(id)), RevocationReason::DoubleSpend); }
        for w in wallets { entries.insert(Revoked::Wallet(w), RevocationReason::LostDevice); }
        let list = RevocationList::sign(RevocationListTerms { version: 1, issued_at: NOW, issuer: issuer.public(), entries }, &issuer);
        roundtrip(&list);
        match RevocationList::decode(&flip(&list.encode(), bit)) {
            Err(_) => {}
            Ok(b) => prop_assert!(!b.verify_by(&issuer.public())),
        }
        let outcomes = outcomes.into_iter().map(|(id, ok)| (TransferId(id), if ok { Outcome::Settled } else { Outcome::Refused(Refusal::OverEscrow) })).collect();
        let ack = SettlementAck::sign(SettlementAckTerms { serial: 1, issued_at: NOW, issuer: issuer.public(), outcomes }, &issuer);
        roundtrip(&ack);
        match SettlementAck::decode(&flip(&ack.encode(), bit)) {
            Err(_) => {}
            Ok(b) => prop_assert!(!b.verify_by(&issuer.public())),
        }
    }

    #[test]
    fn conflict_proofs_roundtrip(a in 1u32..20, b in 1u32..20, ca in 1u64..10_000, cb in 1u64..10_000, na in any::<u8>(), nb in any::<u8>()) {
        let ta = transfer_raw(&payer(), payee().public(), 1, Nonce([na; 16]), a, ca);
        let tb = transfer_raw(&payer(), payee().public(), 1, Nonce([nb; 16]), b, cb);
        if let Some(p) = meshpay_proto::conflict::detect(&ta.signed_header(), &tb.signed_header()) {
            roundtrip(&p);
            prop_assert!(p.verify(&allowance()).is_ok());
        } else {
            // No proof means the two are honest together.
            prop_assert!(ta.header() == tb.header() || (a != b && (a < b) == (ca < cb)));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..400), version_ok in any::<bool>()) {
        let mut bytes = bytes;
        if version_ok && !bytes.is_empty() { bytes[0] = 1; }
        let _ = Allowance::decode(&bytes);
        let _ = IssuerCertificate::decode(&bytes);
        let _ = PayeeCredential::decode(&bytes);
        let _ = Invoice::decode(&bytes);
        let _ = TransferBody::decode(&bytes);
        let _ = TransferHeader::decode(&bytes);
        let _ = SignedHeader::decode(&bytes);
        let _ = Transfer::decode(&bytes);
        let _ = Receipt::decode(&bytes);
        let _ = ConflictProof::decode(&bytes);
        let _ = RevocationList::decode(&bytes);
        let _ = SettlementAck::decode(&bytes);
        let _ = PaymentMessage::decode(&bytes);
    }

    #[test]
    fn truncations_of_valid_objects_are_errors(cut in any::<usize>()) {
        let r = Receipt::acknowledge(transfer_for(&invoice(450, 1), 1, 450), &payee()).encode();
        let m = PaymentMessage::Transfer { allowance: Some(Box::new(allowance())), transfer: transfer_for(&invoice(450, 1), 1, 450) }.encode();
        prop_assert!(Receipt::decode(&r[..cut % r.len()]).is_err());
        prop_assert!(PaymentMessage::decode(&m[..cut % m.len()]).is_err());
    }
}

// ---------------------------------------------------------------------------
// The handshake under a hostile network and crashes.

#[derive(Debug, Clone)]
enum Op {
    /// Deliver the in-flight message at this index (any order: reordering).
    Deliver(usize),
    /// Lose it.
    Drop(usize),
    /// Deliver a copy and keep the original in flight.
    Duplicate(usize),
    /// Commit the payer's pending durable writes.
    CommitPayer,
    /// Commit the payee's pending durable writes.
    CommitPayee,
    /// Time passes; timers fire.
    Advance(u64),
    /// The payer process dies; uncommitted writes are lost; it restarts.
    CrashPayer,
    /// The payee process dies; uncommitted writes are lost; it restarts.
    CrashPayee,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Drop),
        2 => any::<usize>().prop_map(Op::Duplicate),
        3 => Just(Op::CommitPayer),
        3 => Just(Op::CommitPayee),
        2 => (1u64..600).prop_map(Op::Advance),
        1 => Just(Op::CrashPayer),
        1 => Just(Op::CrashPayee),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum To {
    Payer,
    Payee,
}

/// What the payer has on disk.
#[derive(Default)]
struct PayerDisk {
    spend: Option<SpendState>,
    pending: Option<Transfer>,
    receipts: Vec<Receipt>,
}

/// What the payee has on disk.
#[derive(Default)]
struct PayeeDisk {
    receipts: Vec<Receipt>,
}

struct World {
    now: Millis,
    net: Vec<(To, PaymentMessage)>,
    payer: PayerSession,
    payer_disk: PayerDisk,
    payer_uncommitted: Vec<PayerEffect>,
    payee: PayeeSession,
    payee_disk: PayeeDisk,
    payee_uncommitted: Vec<PayeeEffect>,
    invoice_counter: u8,
    mesh: KnownHeaders,
    /// Every transfer that ever left the payer, by sequence number.
    released: BTreeMap<u32, BTreeSet<TransferId>>,
    payments_done: u32,
}

fn payer_config() -> PayerConfig {
    PayerConfig {
        retry_interval_ms: 200,
        max_attempts: 4,
        send_allowance: false,
        ..PayerConfig::default()
    }
}

impl World {
    fn new() -> World {
        let mut w = World {
            now: Millis(0),
            net: Vec::new(),
            payer: PayerSession::new(allowance(), payer(), SpendState::FRESH, NOW, payer_config()),
            payer_disk: PayerDisk::default(),
            payer_uncommitted: Vec::new(),
            payee: PayeeSession::with_invoice(payee(), invoice(300, 0), Millis(0)),
            payee_disk: PayeeDisk::default(),
            payee_uncommitted: Vec::new(),
            invoice_counter: 0,
            mesh: mesh(),
            released: BTreeMap::new(),
            payments_done: 0,
        };
        w.pump();
        w
    }

    fn spend_on_disk(&self) -> SpendState {
        self.payer_disk.spend.unwrap_or(SpendState::FRESH)
    }

    /// Moves messages and effects out of both machines.
    fn pump(&mut self) {
        while let Some(m) = self.payer.poll_transmit() {
            if let PaymentMessage::Transfer { transfer, .. } = &m {
                let h = transfer.header();
                // Durability: the spend is on disk before the signature leaves.
                assert!(
                    self.spend_on_disk().next_seq > h.seq,
                    "transfer released before its spend was durable"
                );
                assert!(self.spend_on_disk().cumulative >= h.cumulative);
                self.released
                    .entry(h.seq)
                    .or_default()
                    .insert(transfer.id());
            }
            self.net.push((To::Payee, m));
        }
        while let Some(m) = self.payee.poll_transmit() {
            if let PaymentMessage::Ack { transfer, .. } = &m {
                assert!(
                    self.payee_disk
                        .receipts
                        .iter()
                        .any(|r| r.transfer.id() == *transfer),
                    "ack released before the receipt was durable"
                );
            }
            self.net.push((To::Payer, m));
        }
        while let Some(e) = self.payer.poll_effect() {
            match e {
                PayerEffect::Confirm(_) => self.payer.confirm().expect("confirm"),
                e => self.payer_uncommitted.push(e),
            }
        }
        while let Some(e) = self.payee.poll_effect() {
            self.payee_uncommitted.push(e);
        }
        if self.payer.state().is_final() && self.payer_uncommitted.is_empty() {
            self.next_payment();
        }
    }

    fn next_payment(&mut self) {
        self.payments_done += 1;
        self.payer_disk.pending = None;
        self.invoice_counter = self.invoice_counter.wrapping_add(1);
        self.payer = PayerSession::new(
            allowance(),
            payer(),
            self.spend_on_disk(),
            NOW,
            payer_config(),
        );
        self.payee =
            PayeeSession::with_invoice(payee(), invoice(300, self.invoice_counter), self.now);
        self.payee_uncommitted.clear();
    }

    fn deliver(&mut self, to: To, m: PaymentMessage) {
        match to {
            To::Payer => {
                let _ = self.payer.handle(m, self.now);
            }
            To::Payee => {
                let trust = trust();
                let policy = PaymentPolicy::default();
                let ctx = CheckContext {
                    trust: &trust,
                    policy: &policy,
                    now: NOW,
                    mesh: &self.mesh,
                };
                let _ = self.payee.handle(m, &ctx);
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Deliver(i) | Op::Drop(i) | Op::Duplicate(i) if !self.net.is_empty() => {
                let i = i % self.net.len();
                match op {
                    Op::Deliver(_) => {
                        let (to, m) = self.net.remove(i);
                        self.deliver(to, m);
                    }
                    Op::Drop(_) => {
                        self.net.remove(i);
                    }
                    _ => {
                        let (to, m) = self.net[i].clone();
                        self.deliver(to, m);
                    }
                }
            }
            Op::Deliver(_) | Op::Drop(_) | Op::Duplicate(_) => {}
            Op::CommitPayer => {
                for e in std::mem::take(&mut self.payer_uncommitted) {
                    match e {
                        PayerEffect::PersistSpend { transfer, spend } => {
                            self.payer_disk.spend = Some(spend);
                            self.payer_disk.pending = Some(transfer);
                            self.payer.spend_persisted(self.now).expect("persisted");
                        }
                        PayerEffect::StoreReceipt(r) => self.payer_disk.receipts.push(r),
                        PayerEffect::Confirm(_) => unreachable!("handled in pump"),
                    }
                }
            }
            Op::CommitPayee => {
                for e in std::mem::take(&mut self.payee_uncommitted) {
                    match e {
                        PayeeEffect::PersistReceipt { receipt, .. } => {
                            self.mesh
                                .add_header(receipt.transfer.signed_header())
                                .expect("own receipt's header");
                            self.payee_disk.receipts.push(receipt);
                            self.payee.receipt_persisted().expect("persisted");
                        }
                        PayeeEffect::RecordConflict(p) => self.mesh.add_conflict(p),
                        PayeeEffect::Refused(_) => {}
                    }
                }
            }
            Op::Advance(ms) => {
                self.now = self.now.plus(ms);
                self.payer.handle_timeout(self.now);
                self.payee.handle_timeout(self.now);
            }
            Op::CrashPayer => {
                self.payer_uncommitted.clear();
                self.payer = match self.payer_disk.pending.clone() {
                    Some(t) => {
                        PayerSession::resume(allowance(), payer(), t, self.now, payer_config())
                    }
                    None => PayerSession::new(
                        allowance(),
                        payer(),
                        self.spend_on_disk(),
                        NOW,
                        payer_config(),
                    ),
                };
            }
            Op::CrashPayee => {
                self.payee_uncommitted.clear();
                let inv = self.payee.invoice().clone();
                let stored = self
                    .payee_disk
                    .receipts
                    .iter()
                    .find(|r| r.transfer.body().nonce == inv.nonce)
                    .cloned();
                self.payee = match stored {
                    Some(r) => PayeeSession::resume_acknowledged(payee(), inv, r),
                    None => PayeeSession::with_invoice(payee(), inv, self.now),
                };
            }
        }
        self.pump();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Loss, duplication, reordering and crashes at any point: never two
    /// different transfers for one sequence number, never an ack before
    /// the receipt is durable, never a release before the spend is durable
    /// (the last two are asserted inside `pump`), and the payee's ledger
    /// never sees a conflict from an honest payer.
    #[test]
    fn handshake_never_signs_two_transfers_for_one_sequence(ops in proptest::collection::vec(arb_op(), 1..300)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op);
        }
        for (seq, ids) in &w.released {
            prop_assert_eq!(ids.len(), 1, "sequence {} released with {} different transfers", seq, ids.len());
        }
        prop_assert!(w.mesh.conflict(&AllowanceId([0xA1; 16])).is_none());
        // Everything the payer holds as paid, the payee holds as received.
        for r in &w.payer_disk.receipts {
            prop_assert!(w.payee_disk.receipts.contains(r));
        }
    }
}

/// With a perfect network and prompt commits, payments complete until the
/// allowance's count cap (20) stops them; after that the payer refuses
/// every invoice without signing anything.
#[test]
fn handshake_completes_on_a_clean_network_until_the_cap() {
    let mut w = World::new();
    for _ in 0..200 {
        w.step(&Op::Deliver(0));
        w.step(&Op::CommitPayer);
        w.step(&Op::CommitPayee);
    }
    assert_eq!(w.payer_disk.receipts.len(), 20);
    assert_eq!(w.payee_disk.receipts.len(), 20);
    assert_eq!(
        w.spend_on_disk(),
        SpendState {
            next_seq: 21,
            cumulative: 6_000
        }
    );
    assert_eq!(w.released.len(), 20, "nothing signed past the cap");
    assert!(
        w.payments_done > 20,
        "later invoices were answered (refused)"
    );
}

proptest! {
    /// Whatever the amounts, sequence numbers and times, a dual-signed
    /// receipt fits one BLE packet with data length extension (244 bytes of
    /// ATT payload), and so does the transfer message that carries it.
    #[test]
    fn receipt_always_fits_one_ble_packet((t, payer) in arb_transfer(), payee in arb_key()) {
        let h = t.header();
        let body = TransferBody { payee: payee.public().into(), ..t.body().clone() };
        let t = Transfer::sign(h.allowance, h.seq, h.cumulative, h.amount, body, &payer);
        let message = PaymentMessage::Transfer { allowance: None, transfer: t.clone() }.encode();
        let receipt = Receipt::acknowledge(t, &payee).encode();
        prop_assert!(receipt.len() <= 244, "receipt of {} bytes", receipt.len());
        prop_assert!(message.len() <= 244, "transfer message of {} bytes", message.len());
    }
}
