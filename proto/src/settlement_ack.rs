//! Issuer-signed settlement acknowledgements: how offline nodes learn which
//! receipts settled, and what they may stop carrying.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::{PublicKey, domain};
use crate::encoding::Encode;
use crate::signed::{Signed, SignedTerms};
use crate::time::Timestamp;
use crate::transfer::TransferId;

/// Why settlement refused a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// It lost to another transfer of the same sequence number (fork order
    /// is by transfer id, see docs/protocol.md).
    Conflicted,
    /// Settling it would exceed the escrow.
    OverEscrow,
    /// A signature did not verify. Said only to whoever submitted that
    /// copy, never in an acknowledgement: the transfer id does not cover
    /// the signatures (docs/protocol.md, 11.9).
    BadSignature,
    /// It reached settlement before its allowance was valid (rule
    /// `not-yet-valid`, with the grace period as the tolerance).
    NotValid,
    /// It breaks a cap or the payee restriction.
    OutsideCaps,
    /// It reached settlement after its allowance closed (expiry, or a
    /// lost-device report, plus the grace period) and the unspent escrow
    /// was returned to the wallet.
    Late,
    /// Settlement holds no allowance with the id the transfer names.
    UnknownAllowance,
}

impl Refusal {
    /// Whether the refusal is a loss from the payer's double spending (a
    /// lost fork, or an escrow used up by a rewound counter): the payee's
    /// offline check could not have caught it, so the loss policy decides
    /// who bears it. Every other refusal is the payee's to bear.
    pub fn is_conflict_loss(self) -> bool {
        matches!(self, Refusal::Conflicted | Refusal::OverEscrow)
    }
}

/// The fate of one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Settled: the payee was credited with the amount.
    Settled,
    /// Refused, with the reason.
    Refused(Refusal),
    /// Refused for a conflict loss ([`Refusal::is_conflict_loss`]), and the
    /// issuer's risk fund paid `by_fund` of the amount to the payee; the
    /// payee bears the rest.
    Covered {
        /// [`Refusal::Conflicted`] or [`Refusal::OverEscrow`].
        refusal: Refusal,
        /// What the risk fund paid, at most the transfer's amount.
        by_fund: u64,
    },
}

impl Outcome {
    /// How much of a transfer of `amount` reached the payee: all of it when
    /// settled, the fund's part when covered, nothing when refused.
    pub fn paid(&self, amount: u64) -> u64 {
        match self {
            Outcome::Settled => amount,
            Outcome::Covered { by_fund, .. } => *by_fund,
            Outcome::Refused(_) => 0,
        }
    }
}

/// A batch of outcomes signed by the issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementAckTerms {
    /// Increasing per acknowledgement the service publishes.
    pub serial: u64,
    /// When it was made.
    pub issued_at: Timestamp,
    /// The issuer key that signed it.
    pub issuer: PublicKey,
    /// Outcome per transfer id.
    pub outcomes: BTreeMap<TransferId, Outcome>,
}

impl Encode for SettlementAckTerms {
    const KIND: &'static str = "settlement acknowledgement terms";
}

impl SignedTerms for SettlementAckTerms {
    const DOMAIN: &'static [u8] = domain::SETTLEMENT_ACK;
    const SIGNED_KIND: &'static str = "settlement acknowledgement";
}

/// An issuer-signed settlement acknowledgement.
pub type SettlementAck = Signed<SettlementAckTerms>;
