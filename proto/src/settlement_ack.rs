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
    /// A signature did not verify.
    BadSignature,
    /// The allowance had expired when it was made, or was revoked before.
    NotValid,
    /// It breaks a cap or the payee restriction.
    OutsideCaps,
}

/// The fate of one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Settled: the payee was credited with the amount.
    Settled,
    /// Refused, with the reason.
    Refused(Refusal),
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
