//! The settlement state of one allowance: the set of valid receipts that
//! reached it, the outcome of each, and how it ended.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    Account, BatchReport, LossPolicy, Movement, MovementKind, SettlementConfig, SettlementContext,
    SettlementError,
};
use crate::allowance::{Allowance, TrustStore};
use crate::conflict::{ConflictProof, detect};
use crate::crypto::{KeyBytes, PublicKey};
use crate::encoding::Encode;
use crate::revocation::{RevocationReason, Revoked};
use crate::settlement_ack::{Outcome, Refusal};
use crate::time::Timestamp;
use crate::transfer::{Receipt, SignedHeader, TransferId};
use crate::validate::{
    PaymentError, VerifiedAllowance, check_limits, check_payee_admitted, check_validity_window,
};

/// One valid receipt held for an allowance: the payer-signed header (kept
/// as evidence), the payee it pays, and its outcome. The payee's signature
/// was checked on the way in and is not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    header: SignedHeader,
    payee: KeyBytes,
    outcome: Option<Outcome>,
}

impl Claim {
    /// The payer-signed header.
    pub fn header(&self) -> &SignedHeader {
        &self.header
    }

    /// The payee's wallet.
    pub fn payee(&self) -> KeyBytes {
        self.payee
    }

    /// Its outcome as of the last resolution (always set in a state that
    /// [`super::ingest_batch`] returned).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The balance movement an outcome of this claim stands for, if any.
    fn effect(&self, outcome: Outcome, id: TransferId) -> Option<Movement> {
        let payee = Account::Wallet(self.payee);
        let (from, amount, kind) = match outcome {
            Outcome::Settled => (
                Account::Escrow(self.header.allowance),
                self.header.amount,
                MovementKind::Credit,
            ),
            Outcome::Covered { by_fund, .. } => (Account::RiskFund, by_fund, MovementKind::Cover),
            Outcome::Refused(_) => return None,
        };
        Some(Movement {
            from,
            to: payee,
            amount,
            kind,
            allowance: self.header.allowance,
            transfer: Some(id),
        })
    }
}

/// How an allowance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// When it was closed.
    pub at: Timestamp,
    /// What was refunded to the wallet.
    pub refund: u64,
}

/// Everything settlement keeps about one allowance. A backend stores it
/// as a whole (for example with [`Encode`], under the allowance id) and
/// hands it back to the next call; the balances live in the accounts the
/// [`Movement`]s name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceState {
    allowance: Allowance,
    /// Keyed by sequence number, then transfer id: one ordered pass is the
    /// resolution.
    claims: BTreeMap<(u32, TransferId), Claim>,
    lost_at: Option<Timestamp>,
    closed: Option<Closure>,
    conflict: Option<ConflictProof>,
}

impl Encode for AllowanceState {
    const KIND: &'static str = "allowance settlement state";
}

impl AllowanceState {
    /// Takes in an allowance the issuer made, checked with rules
    /// `issuer-trusted` and `issuer-signature`, and the movement that
    /// escrows its amount from the wallet's account.
    pub fn open(
        allowance: Allowance,
        trust: &TrustStore,
    ) -> Result<(Self, Movement), PaymentError> {
        let allowance = VerifiedAllowance::verify(allowance, trust)?.into_inner();
        let escrow = Movement {
            from: Account::Wallet(allowance.wallet.into()),
            to: Account::Escrow(allowance.id),
            amount: allowance.amount,
            kind: MovementKind::Escrow,
            allowance: allowance.id,
            transfer: None,
        };
        let state = AllowanceState {
            allowance,
            claims: BTreeMap::new(),
            lost_at: None,
            closed: None,
            conflict: None,
        };
        Ok((state, escrow))
    }

    /// The allowance.
    pub fn allowance(&self) -> &Allowance {
        &self.allowance
    }

    /// Every held receipt, by sequence number then transfer id.
    pub fn claims(&self) -> impl Iterator<Item = (TransferId, &Claim)> {
        self.claims.iter().map(|((_, id), c)| (*id, c))
    }

    /// Whether the receipt of transfer `id` (with sequence number `seq`) is
    /// held.
    pub fn holds(&self, seq: u32, id: &TransferId) -> bool {
        self.claims.contains_key(&(seq, *id))
    }

    /// The outcome of a held receipt.
    pub fn outcome(&self, seq: u32, id: &TransferId) -> Option<Outcome> {
        self.claims.get(&(seq, *id)).and_then(|c| c.outcome)
    }

    /// The total of the settled receipts: what the escrow has paid out.
    pub fn settled_total(&self) -> u64 {
        self.claims
            .values()
            .filter(|c| c.outcome == Some(Outcome::Settled))
            .fold(0u64, |total, c| total.saturating_add(c.header.amount))
    }

    /// The proof that the wallet double-spent on this allowance, if one was
    /// found (the first one).
    pub fn conflict(&self) -> Option<&ConflictProof> {
        self.conflict.as_ref()
    }

    /// When the device was reported lost (the earliest report).
    pub fn lost_at(&self) -> Option<Timestamp> {
        self.lost_at
    }

    /// How the allowance ended, once it has.
    pub fn closed(&self) -> Option<Closure> {
        self.closed
    }

    /// The last instant a receipt is taken: the allowance's expiry, or the
    /// lost-device report plus the propagation time if sooner, plus the
    /// grace period.
    pub fn closes_at(&self, config: &SettlementConfig) -> Timestamp {
        let expiry = self.lost_at.map_or(self.allowance.expires_at, |lost| {
            self.allowance
                .expires_at
                .min(lost.plus(config.revocation_propagation_secs))
        });
        expiry.plus(config.grace_secs)
    }

    /// Whether a receipt arriving at `now` may still join the set: rules
    /// `not-yet-valid` and `not-expired` with the grace period as the
    /// tolerance, and the lost-device deadline.
    pub(super) fn admits_at(
        &self,
        now: Timestamp,
        config: &SettlementConfig,
    ) -> Result<(), SettlementError> {
        let late = || SettlementError::Late {
            closed_at: self.closes_at(config),
            now,
        };
        if self.closed.is_some() {
            return Err(late());
        }
        match check_validity_window(&self.allowance, now, &config.time_policy()) {
            Err(PaymentError::Expired { .. }) => return Err(late()),
            Err(e) => return Err(SettlementError::Check(e)),
            Ok(()) => {}
        }
        if now > self.closes_at(config) {
            return Err(late());
        }
        Ok(())
    }

    /// Adds a receipt whose signatures verified (`payee` is the body's
    /// payee key): rules `sequence-in-range` to `cumulative-covers-amount`
    /// and `payee-allowed`, then conflict detection against the held
    /// receipts. `Ok(false)` if it was held already.
    pub(super) fn admit(
        &mut self,
        receipt: &Receipt,
        payee: &PublicKey,
        now: Timestamp,
        ctx: &SettlementContext<'_>,
        report: &mut BatchReport,
    ) -> Result<bool, SettlementError> {
        let header = receipt.transfer.signed_header();
        let key = (header.seq, receipt.transfer.id());
        if self.claims.contains_key(&key) {
            return Ok(false);
        }
        if let Err(e) = check_limits(&receipt.transfer, &self.allowance) {
            // The payer signed a header outside its allowance: evidence on
            // its face, whatever became of the payment.
            self.record_conflict(ConflictProof::OverLimit { header }, report);
            return Err(SettlementError::Check(e));
        }
        check_payee_admitted(
            &self.allowance,
            payee,
            ctx.credentials.credential(payee),
            ctx.trust,
            now,
            &ctx.config.time_policy(),
        )
        .map_err(SettlementError::Check)?;
        if self.conflict.is_none()
            && let Some(proof) = self.find_conflict(&header)
        {
            self.record_conflict(proof, report);
        }
        self.claims.insert(
            key,
            Claim {
                header,
                payee: receipt.transfer.body().payee,
                outcome: None,
            },
        );
        Ok(true)
    }

    /// The first conflict between `header` and the held receipts. While no
    /// conflict is known every sequence number holds one receipt, and
    /// comparing with the same sequence number and the nearest ones below
    /// and above is enough: if no neighbouring pair undercounts, no pair
    /// does (docs/protocol.md, 9.5).
    fn find_conflict(&self, header: &SignedHeader) -> Option<ConflictProof> {
        let seq = header.seq;
        let lowest = TransferId([0; 32]);
        let same = self
            .claims
            .range((seq, lowest)..=(seq, TransferId([0xff; 32])));
        let below = self.claims.range(..(seq, lowest)).next_back();
        let above = self
            .claims
            .range((seq.saturating_add(1), lowest)..)
            .next()
            .filter(|_| seq < u32::MAX);
        same.chain(below)
            .chain(above)
            .find_map(|(_, c)| detect(header, &c.header))
    }

    fn record_conflict(&mut self, proof: ConflictProof, report: &mut BatchReport) {
        if self.conflict.is_some() {
            return;
        }
        report.proofs.push(proof.clone());
        report.revocations.push((
            Revoked::Wallet(self.allowance.wallet),
            RevocationReason::DoubleSpend,
        ));
        self.conflict = Some(proof);
    }

    /// Decides every held receipt's outcome from the set alone, and reports
    /// the movements that take the balances from the previous outcomes to
    /// the new ones:
    ///
    /// 1. per sequence number, the receipt with the smallest transfer id
    ///    is the candidate; the others are refused as conflicted;
    /// 2. candidates settle in ascending sequence order while the running
    ///    total of their amounts stays within the allowance amount; a
    ///    candidate that does not fit is refused as over escrow, and later
    ///    ones are still tried;
    /// 3. a conflict loss is covered as `policy` says.
    pub(super) fn resolve(&mut self, policy: &LossPolicy, report: &mut BatchReport) {
        let escrow = self.allowance.amount;
        let mut spent: u64 = 0;
        let mut previous_seq = None;
        for (&(seq, id), claim) in &mut self.claims {
            let amount = claim.header.amount;
            let outcome = if previous_seq == Some(seq) {
                policy.outcome(Refusal::Conflicted, amount)
            } else {
                previous_seq = Some(seq);
                match spent.checked_add(amount).filter(|&s| s <= escrow) {
                    Some(total) => {
                        spent = total;
                        Outcome::Settled
                    }
                    None => policy.outcome(Refusal::OverEscrow, amount),
                }
            };
            if claim.outcome == Some(outcome) {
                continue;
            }
            if let Some(undo) = claim.outcome.and_then(|old| claim.effect(old, id)) {
                report.movements.push(Movement {
                    from: undo.to,
                    to: undo.from,
                    kind: match undo.kind {
                        MovementKind::Cover => MovementKind::CoverReversal,
                        _ => MovementKind::Reversal,
                    },
                    ..undo
                });
            }
            report.movements.extend(claim.effect(outcome, id));
            report.changed.push((id, outcome));
            claim.outcome = Some(outcome);
        }
    }

    /// Records a lost-device report made at `at`: the allowance is treated
    /// as expiring at `at` plus the propagation time (if it does not expire
    /// sooner), and the revocation to publish comes back the first time.
    /// Nothing happens once the allowance has closed.
    pub fn report_lost(&mut self, at: Timestamp) -> Option<(Revoked, RevocationReason)> {
        if self.closed.is_some() {
            return None;
        }
        let first = self.lost_at.is_none();
        self.lost_at = Some(self.lost_at.map_or(at, |t| t.min(at)));
        first.then_some((
            Revoked::Allowance(self.allowance.id),
            RevocationReason::LostDevice,
        ))
    }

    /// Closes the allowance if `now` is past [`Self::closes_at`]: the
    /// escrow not paid out returns to the wallet's account (the movement,
    /// unless nothing is left), and later receipts are refused as late.
    /// Does nothing before then or once closed.
    pub fn close(&mut self, now: Timestamp, config: &SettlementConfig) -> Option<Movement> {
        if self.closed.is_some() || now <= self.closes_at(config) {
            return None;
        }
        let refund = self.allowance.amount.saturating_sub(self.settled_total());
        self.closed = Some(Closure { at: now, refund });
        (refund > 0).then(|| Movement {
            from: Account::Escrow(self.allowance.id),
            to: Account::Wallet(self.allowance.wallet.into()),
            amount: refund,
            kind: MovementKind::Refund,
            allowance: self.allowance.id,
            transfer: None,
        })
    }
}
