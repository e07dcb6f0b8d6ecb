//! One payment over a modelled link: the real payer and payee machines,
//! each message encoded, framed for the link, timed and decoded on the
//! other side, with the durable effects carried out on the devices.

use meshpay_proto::ledger::{Entry, Inserted};
use meshpay_proto::prelude::*;
use meshpay_proto::sync::frame;

use crate::devices::{Cost, LedgerDevice, Wallet};
use crate::link::LinkModel;
use crate::world::SimTime;

/// How a payment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEnd {
    /// Both sides hold the receipt.
    Paid(Box<Transfer>),
    /// The payee refused, naming the rule; a proof it made, if any.
    Refused(Rule, Option<Box<ConflictProof>>, Box<Transfer>),
    /// The payer refused before signing.
    PayerRefused,
    /// No answer (does not happen on the modelled reliable links).
    Uncertain,
}

/// A payment's result.
#[derive(Debug, Clone)]
pub struct PaymentResult {
    /// How it ended.
    pub end: PaymentEnd,
    /// Protocol time from the invoice leaving to the payer holding the
    /// acknowledgement (or the refusal), microseconds; excludes connection
    /// set-up.
    pub protocol_us: f64,
    /// A proof the payee refused the payment with, and when (microseconds
    /// into the payment): what the node publishes to its LAN at once.
    pub publish: Option<(ConflictProof, f64)>,
    /// The receipt the payee stored, when it accepted: what reaches
    /// settlement.
    pub receipt: Option<Box<Receipt>>,
}

/// Carries one message across: returns its bytes after decoding on the
/// far side, charging airtime and bytes.
fn carry<R: rand::Rng + ?Sized>(
    message: &PaymentMessage,
    link: &LinkModel,
    rng: &mut R,
    elapsed: &mut f64,
    from: &mut Cost,
    to: &mut Cost,
) -> Option<PaymentMessage> {
    let bytes = message.encode();
    for f in frame::split(&bytes, link.max_frame) {
        let (dt, sent) = link.frame(f.len(), rng);
        *elapsed += dt;
        from.bytes_sent += sent;
        to.bytes_received += sent;
    }
    PaymentMessage::decode(&bytes).ok()
}

/// Runs a payment of `amount` from `wallet` (whose counter is `spend`) to
/// `payee` at simulated time `t` (ms); `wall` is both sides' clock.
#[allow(clippy::too_many_arguments)]
pub fn run<R: rand::CryptoRng + ?Sized>(
    wallet: &mut Wallet,
    spend: SpendState,
    payee: &mut LedgerDevice,
    amount: u64,
    link: &LinkModel,
    t: SimTime,
    wall: Timestamp,
    rng: &mut R,
) -> PaymentResult {
    let currency = wallet.allowance.currency;
    let mut payee_s = PayeeSession::new(
        payee.key.clone(),
        amount,
        currency,
        None,
        payee.credential.clone(),
        rng,
        Millis(t),
    );
    let mut payer_s = PayerSession::new(
        wallet.allowance.clone(),
        wallet.key.clone(),
        spend,
        wall,
        PayerConfig::default(),
    );
    let policy = PaymentPolicy::default();
    let mut elapsed = 0.0;
    let mut end = PaymentEnd::Uncertain;
    let mut proof = None;
    let mut sent = None;
    let mut publish = None;
    let mut stored = None;
    let now = |us: f64| Millis(t + (us / 1000.0) as u64);
    for _ in 0..8 {
        // Payee to payer.
        elapsed += link.turn_us();
        while let Some(m) = payee_s.poll_transmit() {
            if let Some(m) = carry(
                &m,
                link,
                rng,
                &mut elapsed,
                &mut payee.cost,
                &mut wallet.cost,
            ) {
                let _ = payer_s.handle(m, now(elapsed));
            }
        }
        while let Some(effect) = payer_s.poll_effect() {
            match effect {
                PayerEffect::Confirm(_) => {
                    let _ = payer_s.confirm();
                }
                PayerEffect::PersistSpend { spend, transfer } => {
                    wallet.before_last = spend_before(&transfer);
                    wallet.spend = wallet.spend.max_by_seq(spend);
                    sent = Some(Box::new(transfer));
                    let _ = payer_s.spend_persisted(now(elapsed));
                }
                PayerEffect::StoreReceipt(_) => {}
            }
        }
        match payer_s.state() {
            PayerState::Paid(r) => {
                end = PaymentEnd::Paid(Box::new(r.transfer.clone()));
                break;
            }
            PayerState::Rejected { rule, transfer } => {
                end = PaymentEnd::Refused(*rule, proof.take(), Box::new(transfer.clone()));
                break;
            }
            PayerState::Refused(_) | PayerState::Declined => {
                end = PaymentEnd::PayerRefused;
                break;
            }
            _ => {}
        }
        // Payer to payee.
        elapsed += link.turn_us();
        while let Some(m) = payer_s.poll_transmit() {
            let Some(m) = carry(
                &m,
                link,
                rng,
                &mut elapsed,
                &mut wallet.cost,
                &mut payee.cost,
            ) else {
                continue;
            };
            let ctx = CheckContext {
                trust: payee.ledger.trust(),
                policy: &policy,
                now: wall,
                mesh: &payee.ledger,
            };
            let _ = payee_s.handle(m, &ctx);
        }
        while let Some(effect) = payee_s.poll_effect() {
            match effect {
                PayeeEffect::PersistReceipt { receipt, allowance } => {
                    let header = receipt.transfer.signed_header();
                    if let Ok(Inserted::Conflict(p)) =
                        payee.ledger.insert_payment(*allowance, header)
                    {
                        payee.hold_proof(p.allowance(), now(elapsed).0);
                    }
                    payee.receipts += 1;
                    payee.touch();
                    stored = Some(Box::new(receipt));
                    let _ = payee_s.receipt_persisted();
                }
                PayeeEffect::RecordConflict(p) => {
                    let _ = payee.ledger.insert(Entry::Proof(p.clone()));
                    payee.hold_proof(p.allowance(), now(elapsed).0);
                    payee.touch();
                    proof = Some(Box::new(p));
                }
                PayeeEffect::Refused(PaymentError::Conflict(p)) => {
                    publish = Some((*p, elapsed));
                }
                PayeeEffect::Refused(_) => {}
            }
        }
    }
    if matches!(end, PaymentEnd::Uncertain) && sent.is_none() {
        end = PaymentEnd::PayerRefused;
    }
    let radio = (elapsed + link.setup_us()) as u64;
    wallet.cost.radio_on_us += radio;
    payee.cost.radio_on_us += radio;
    PaymentResult {
        end,
        protocol_us: elapsed,
        publish,
        receipt: stored,
    }
}

/// The counter as it stood before `transfer` was signed.
fn spend_before(transfer: &Transfer) -> SpendState {
    let h = transfer.header();
    SpendState {
        next_seq: h.seq,
        cumulative: h.cumulative - h.amount,
    }
}

trait MaxBySeq {
    fn max_by_seq(self, other: SpendState) -> SpendState;
}

impl MaxBySeq for SpendState {
    /// A rewound wallet's counter must still move forward afterwards,
    /// past both the rewound and the true one.
    fn max_by_seq(self, other: SpendState) -> SpendState {
        if other.next_seq >= self.next_seq {
            other
        } else {
            self
        }
    }
}
