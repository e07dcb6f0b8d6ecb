//! The settlement rules as pure functions: what the settlement service does
//! with the receipts that reach it, with no storage, network or clock.
//!
//! The service keeps one [`AllowanceState`] per allowance it issued and one
//! balance per [`Account`]. For each batch of receipts it loads the states
//! of the allowances the batch names, calls [`ingest_batch`], applies the
//! returned [`Movement`]s to its balances and stores the states back, all
//! in one transaction. [`AllowanceState::report_lost`] and
//! [`AllowanceState::close`] handle a lost-device report and the refund
//! after expiry. docs/protocol.md, "Settlement", is the normative text.
//!
//! The key property: the outcome for an allowance is a function of the
//! **set** of valid receipts that reached it before it closed, never of
//! their order. A fork is settled by transfer id, the escrow is spent in
//! sequence order, and an ingestion that changes an earlier outcome (a new
//! fork with a smaller id, say) comes back as a reversal. So any order of
//! the same inputs ends with the same outcomes and the same balances.
//!
//! ```
//! use meshpay_proto::prelude::*;
//! use meshpay_proto::settlement::*;
//! use std::collections::BTreeMap;
//! # use rand::SeedableRng;
//! # let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! # let issuer = SecretKey::generate(&mut rng);
//! # let payer = SecretKey::generate(&mut rng);
//! # let payee = SecretKey::generate(&mut rng);
//! # let now = Timestamp(1_800_000_000);
//! # let allowance = Allowance::sign(AllowanceTerms {
//! #     id: AllowanceId([1; 16]), wallet: payer.public(), amount: 10_000,
//! #     currency: Currency::new("EUR").unwrap(), issued_at: now,
//! #     expires_at: now.plus(86_400),
//! #     caps: Caps { max_per_payment: 5_000, max_payments: 50 },
//! #     tier: 1, restriction: None, issuer: issuer.public() }, &issuer);
//! let trust = TrustStore::new(issuer.public());
//! let config = SettlementConfig::default();
//! let ctx = SettlementContext { trust: &trust, config: &config, credentials: &() };
//!
//! // Issuing the allowance escrowed its amount.
//! let (state, escrowed) = AllowanceState::open(allowance, &trust).unwrap();
//! assert_eq!(escrowed.kind, MovementKind::Escrow);
//! let mut states = BTreeMap::from([(state.allowance().id, state)]);
//!
//! // A receipt arrives (made offline earlier); a backend would load the
//! // states of `allowances_named(&batch)` here.
//! let body = TransferBody { payee: payee.public().into(), nonce: Nonce([9; 16]), payer_time: now };
//! let transfer = Transfer::sign(AllowanceId([1; 16]), 1, 450, 450, body, &payer);
//! let receipt = Receipt::acknowledge(transfer, &payee);
//! assert!(allowances_named(&[receipt.clone()]).contains(&AllowanceId([1; 16])));
//! let report = ingest_batch(&mut states, &[receipt.clone()], now.plus(60), &ctx);
//! assert_eq!(report.receipts[0].outcome, Outcome::Settled);
//! assert_eq!(report.movements[0].amount, 450);
//!
//! // Sent again: nothing moves.
//! let again = ingest_batch(&mut states, &[receipt], now.plus(90), &ctx);
//! assert!(again.receipts[0].duplicate && again.movements.is_empty());
//! ```

mod state;
mod verify;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::allowance::{AllowanceId, PayeeCredential, TrustStore};
use crate::conflict::ConflictProof;
use crate::crypto::{KeyBytes, PublicKey};
use crate::revocation::{RevocationReason, Revoked};
use crate::settlement_ack::{Outcome, Refusal};
use crate::time::Timestamp;
use crate::transfer::{Receipt, TransferId};
use crate::validate::{PaymentError, PaymentPolicy, Rule};

pub use state::{AllowanceState, Claim};

/// How a batch's signatures are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureCheck {
    /// One Ed25519 batch equation over every signature of the batch; if it
    /// fails, each receipt is checked alone (strictly) to find the bad
    /// ones. Fast, but see docs/protocol.md, "Settlement", on what the
    /// batch equation accepts that strict verification does not.
    #[default]
    Batch,
    /// Strict verification of every signature, one by one: exactly the
    /// payee's offline check, at about half the throughput.
    Strict,
}

/// Who bears a conflict loss: a receipt the payee accepted in good faith
/// that settlement refuses because the payer double-spent
/// ([`Refusal::is_conflict_loss`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossPolicy {
    /// The payee: a lost receipt pays nothing (and a credit already made
    /// for it is reversed).
    PayeeBears,
    /// The issuer's risk fund pays the payee up to `cap_per_receipt` of
    /// each lost receipt; the payee bears the rest.
    IssuerRiskFund {
        /// Most the fund pays for one receipt, in minor units.
        cap_per_receipt: u64,
    },
}

impl LossPolicy {
    /// What the risk fund pays for a lost receipt of `amount`.
    pub fn cover(&self, amount: u64) -> u64 {
        match self {
            LossPolicy::PayeeBears => 0,
            LossPolicy::IssuerRiskFund { cap_per_receipt } => amount.min(*cap_per_receipt),
        }
    }

    /// The outcome of a receipt refused for `refusal` under this policy.
    pub fn outcome(&self, refusal: Refusal, amount: u64) -> Outcome {
        let by_fund = self.cover(amount);
        if refusal.is_conflict_loss() && by_fund > 0 {
            Outcome::Covered { refusal, by_fund }
        } else {
            Outcome::Refused(refusal)
        }
    }
}

/// The tunables of the settlement rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettlementConfig {
    /// How long after an allowance's expiry receipts are still taken, so
    /// that payments made just before it can travel through the mesh. The
    /// unspent escrow is refunded when it ends. Default 7 days.
    pub grace_secs: u64,
    /// How long a lost-device report takes to reach the mesh: the
    /// allowance is treated as expiring this long after the report (if it
    /// does not expire sooner). Default 1 day.
    pub revocation_propagation_secs: u64,
    /// Who bears conflict losses. Default [`LossPolicy::PayeeBears`].
    pub loss_policy: LossPolicy,
    /// How signatures are checked. Default [`SignatureCheck::Batch`].
    pub signature_check: SignatureCheck,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            grace_secs: 7 * 86_400,
            revocation_propagation_secs: 86_400,
            loss_policy: LossPolicy::PayeeBears,
            signature_check: SignatureCheck::Batch,
        }
    }
}

impl SettlementConfig {
    /// The tolerance the offline time rules are repeated with: settlement
    /// knows only when a receipt arrived, which bounds when it was made
    /// from above, so it allows the grace period where a payee allows the
    /// clock skew.
    fn time_policy(&self) -> PaymentPolicy {
        PaymentPolicy {
            clock_skew_secs: self.grace_secs,
        }
    }
}

/// The payee credentials the issuer knows of, for allowances restricted
/// to a class of payees (a receipt does not carry the invoice's
/// credential).
pub trait PayeeCredentials {
    /// The credential of `payee`, if any.
    fn credential(&self, payee: &PublicKey) -> Option<&PayeeCredential>;
}

/// No credentials: class-restricted allowances admit nobody.
impl PayeeCredentials for () {
    fn credential(&self, _: &PublicKey) -> Option<&PayeeCredential> {
        None
    }
}

impl PayeeCredentials for BTreeMap<PublicKey, PayeeCredential> {
    fn credential(&self, payee: &PublicKey) -> Option<&PayeeCredential> {
        self.get(payee)
    }
}

/// Everything the rules need besides the receipts and the states.
#[derive(Clone, Copy)]
pub struct SettlementContext<'a> {
    /// The pinned root and known issuer certificates.
    pub trust: &'a TrustStore,
    /// The tunables.
    pub config: &'a SettlementConfig,
    /// The issuer's payee credentials.
    pub credentials: &'a dyn PayeeCredentials,
}

/// A balance the service keeps. Every [`Movement`] goes from one to
/// another, so their sum never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Account {
    /// A wallet's online account (payers and payees alike).
    Wallet(KeyBytes),
    /// The escrow of one allowance.
    Escrow(AllowanceId),
    /// The issuer's risk fund, which pays conflict losses under
    /// [`LossPolicy::IssuerRiskFund`]. It may go negative: the issuer
    /// tops it up.
    RiskFund,
}

/// Why money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovementKind {
    /// Wallet to escrow: the allowance was issued.
    Escrow,
    /// Escrow to payee: a receipt settled.
    Credit,
    /// Payee to escrow: a settled receipt lost after all (to a fork with a
    /// smaller id, or to an escrow used up by earlier sequence numbers).
    Reversal,
    /// Risk fund to payee: the fund's share of a conflict loss.
    Cover,
    /// Payee to risk fund: a covered receipt settled after all.
    CoverReversal,
    /// Escrow to wallet: the unspent escrow after the allowance closed.
    Refund,
}

/// One balance movement, to be applied by the service in the same
/// transaction as the states it came with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    /// Debited account.
    pub from: Account,
    /// Credited account.
    pub to: Account,
    /// Minor units; never zero, except the escrow of an allowance of zero.
    pub amount: u64,
    /// Why.
    pub kind: MovementKind,
    /// The allowance it concerns.
    pub allowance: AllowanceId,
    /// The receipt it concerns, if any (none for escrow and refund).
    pub transfer: Option<TransferId>,
}

/// In or out of a wallet's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Credited to the wallet.
    In,
    /// Debited from the wallet.
    Out,
}

/// One line of a wallet's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    /// The wallet whose statement it is.
    pub wallet: KeyBytes,
    /// In or out.
    pub direction: Direction,
    /// Minor units.
    pub amount: u64,
    /// Why.
    pub kind: MovementKind,
    /// The allowance it concerns.
    pub allowance: AllowanceId,
    /// The receipt it concerns, if any.
    pub transfer: Option<TransferId>,
}

impl Movement {
    /// The statement lines it makes: one for each wallet account it
    /// touches.
    pub fn statement_lines(&self) -> impl Iterator<Item = StatementLine> + '_ {
        let line = |account: &Account, direction| match account {
            Account::Wallet(wallet) => Some(StatementLine {
                wallet: *wallet,
                direction,
                amount: self.amount,
                kind: self.kind,
                allowance: self.allowance,
                transfer: self.transfer,
            }),
            _ => None,
        };
        line(&self.from, Direction::Out)
            .into_iter()
            .chain(line(&self.to, Direction::In))
    }
}

/// Why a receipt was refused before it could join its allowance's set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettlementError {
    /// No allowance with this id is held.
    #[error("no allowance {0} is held")]
    UnknownAllowance(AllowanceId),
    /// The allowance closed before the receipt arrived.
    #[error("the allowance closed at {closed_at}, the receipt arrived at {now}")]
    Late {
        /// When the allowance closed (expiry or lost-device deadline, plus
        /// grace).
        closed_at: Timestamp,
        /// Arrival.
        now: Timestamp,
    },
    /// The payee's acknowledgement does not verify (or the body's payee is
    /// not a valid key).
    #[error("the payee's acknowledgement does not verify")]
    BadPayeeSignature,
    /// An offline rule, repeated at settlement, failed.
    #[error(transparent)]
    Check(PaymentError),
}

impl SettlementError {
    /// The refusal an acknowledgement reports for it.
    pub fn refusal(&self) -> Refusal {
        match self {
            SettlementError::UnknownAllowance(_) => Refusal::UnknownAllowance,
            SettlementError::Late { .. } => Refusal::Late,
            SettlementError::BadPayeeSignature => Refusal::BadSignature,
            SettlementError::Check(e) => match e.rule() {
                Rule::PayerSignature | Rule::SameAllowance => Refusal::BadSignature,
                Rule::SequenceInRange
                | Rule::AmountPositive
                | Rule::PaymentCap
                | Rule::WithinAllowance
                | Rule::CumulativeCoversAmount
                | Rule::PayeeAllowed => Refusal::OutsideCaps,
                _ => Refusal::NotValid,
            },
        }
    }
}

/// What became of one submitted receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptReport {
    /// Its transfer id.
    pub transfer: TransferId,
    /// The allowance it names.
    pub allowance: AllowanceId,
    /// Its outcome after the whole batch.
    pub outcome: Outcome,
    /// It was already held (from this or an earlier batch): nothing
    /// changed because of it.
    pub duplicate: bool,
    /// Why it was refused before joining the set, if it was.
    pub error: Option<SettlementError>,
}

/// Everything a batch changed, for the service to store, pay out, sign and
/// publish.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// One report per submitted receipt, in submission order.
    pub receipts: Vec<ReceiptReport>,
    /// Balance movements to apply.
    pub movements: Vec<Movement>,
    /// Every held receipt whose outcome changed, including receipts of
    /// earlier batches (a reversal): what the next settlement
    /// acknowledgement must say.
    pub changed: Vec<(TransferId, Outcome)>,
    /// Conflict proofs found against allowances not known to conflict
    /// before.
    pub proofs: Vec<ConflictProof>,
    /// Revocations the service must sign and publish: the wallet of each
    /// newly proven double spender.
    pub revocations: Vec<(Revoked, RevocationReason)>,
}

impl BatchReport {
    /// What the next settlement acknowledgement says about this batch: the
    /// outcome of every submitted receipt (duplicates included, since the
    /// payee may have missed the earlier acknowledgement) and of every
    /// held receipt whose outcome changed, where the held claim's outcome
    /// wins.
    ///
    /// A [`Refusal::BadSignature`] is left out: the transfer id does not
    /// cover the signatures, so it says nothing about another copy of the
    /// same transfer, and an acknowledgement naming the id would make
    /// nodes drop the genuine receipt.
    pub fn outcomes(&self) -> BTreeMap<TransferId, Outcome> {
        let mut outcomes: BTreeMap<TransferId, Outcome> = self
            .receipts
            .iter()
            .filter(|r| r.outcome != Outcome::Refused(Refusal::BadSignature))
            .map(|r| (r.transfer, r.outcome))
            .collect();
        outcomes.extend(self.changed.iter().copied());
        outcomes
    }

    /// The statement lines of every movement.
    pub fn statement_lines(&self) -> Vec<StatementLine> {
        self.movements
            .iter()
            .flat_map(Movement::statement_lines)
            .collect()
    }
}

/// The allowances a batch of receipts names: the states a backend loads
/// before [`ingest_batch`] and stores back after it.
pub fn allowances_named(receipts: &[Receipt]) -> BTreeSet<AllowanceId> {
    receipts
        .iter()
        .map(|r| r.transfer.header().allowance)
        .collect()
}

/// Settles a batch of receipts that arrived at `now`.
///
/// `states` must hold the state of every allowance the batch names that
/// the service holds (a receipt for an allowance missing from it is
/// refused as [`Refusal::UnknownAllowance`]). The states are updated in
/// place; the report says what to store, pay and publish.
pub fn ingest_batch(
    states: &mut BTreeMap<AllowanceId, AllowanceState>,
    receipts: &[Receipt],
    now: Timestamp,
    ctx: &SettlementContext<'_>,
) -> BatchReport {
    let mut report = BatchReport::default();
    // Cheap checks first: a duplicate or a late receipt costs no signature.
    let mut errors: Vec<Option<SettlementError>> = vec![None; receipts.len()];
    let mut duplicate = vec![false; receipts.len()];
    for (i, r) in receipts.iter().enumerate() {
        let h = r.transfer.header();
        match states.get(&h.allowance) {
            None => errors[i] = Some(SettlementError::UnknownAllowance(h.allowance)),
            Some(s) if s.holds(h.seq, &r.transfer.id()) => duplicate[i] = true,
            Some(s) => errors[i] = s.admits_at(now, ctx.config).err(),
        }
    }
    let candidates: Vec<usize> = (0..receipts.len())
        .filter(|&i| errors[i].is_none() && !duplicate[i])
        .collect();
    let checked = verify::signatures(states, receipts, &candidates, ctx.config.signature_check);
    let mut touched = BTreeSet::new();
    for (i, payee) in candidates.into_iter().zip(checked) {
        let r = &receipts[i];
        let allowance = r.transfer.header().allowance;
        let Some(state) = states.get_mut(&allowance) else {
            continue;
        };
        // A second copy in the same batch finds the first one held.
        let result = payee.and_then(|payee| state.admit(r, &payee, now, ctx, &mut report));
        match result {
            Ok(true) => {
                touched.insert(allowance);
            }
            Ok(false) => duplicate[i] = true,
            Err(e) => errors[i] = Some(e),
        }
    }
    for id in touched {
        if let Some(state) = states.get_mut(&id) {
            state.resolve(&ctx.config.loss_policy, &mut report);
        }
    }
    report.receipts = receipts
        .iter()
        .zip(errors)
        .zip(duplicate)
        .map(|((r, error), duplicate)| {
            let h = r.transfer.header();
            let transfer = r.transfer.id();
            let outcome = match &error {
                Some(e) => Outcome::Refused(e.refusal()),
                None => states
                    .get(&h.allowance)
                    .and_then(|s| s.outcome(h.seq, &transfer))
                    .unwrap_or(Outcome::Refused(Refusal::UnknownAllowance)),
            };
            ReceiptReport {
                transfer,
                allowance: h.allowance,
                outcome,
                duplicate,
                error,
            }
        })
        .collect();
    report
}
