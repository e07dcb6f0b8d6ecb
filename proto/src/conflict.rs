//! Conflict proofs: self-verifying evidence that a wallet spent more than
//! its allowance, built from transfer headers alone.

use serde::{Deserialize, Serialize};

use crate::allowance::{Allowance, AllowanceId};
use crate::crypto::{Hash, domain};
use crate::encoding::Encode;
use crate::transfer::SignedHeader;

/// Evidence against one allowance's wallet. Anyone holding the allowance
/// (and so the wallet key) can check it with [`ConflictProof::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictProof {
    /// Two different transfers with one sequence number. `first` has the
    /// smaller transfer id.
    Fork {
        /// The transfer with the smaller id.
        first: SignedHeader,
        /// The other one.
        second: SignedHeader,
    },
    /// `earlier.seq < later.seq` but the later cumulative does not cover
    /// the later amount plus at least 1 for every sequence number in
    /// between: `later.cumulative < earlier.cumulative + later.amount +
    /// (later.seq - earlier.seq - 1)`. The counter was rewound (or not
    /// advanced) to spend the same money again.
    Rewind {
        /// Lower sequence number.
        earlier: SignedHeader,
        /// Higher sequence number.
        later: SignedHeader,
    },
    /// One header that is invalid on its face: sequence number 0 or above
    /// the count cap, amount 0 or above the per-payment cap, cumulative
    /// below `amount + seq - 1` or above the allowance amount.
    OverLimit {
        /// The header.
        header: SignedHeader,
    },
}

impl Encode for ConflictProof {
    const KIND: &'static str = "conflict proof";
}

/// Why a conflict proof does not prove anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConflictProofError {
    /// A header names another allowance.
    #[error("a header of the proof names another allowance")]
    WrongAllowance,
    /// A header is not signed by the allowance's wallet key.
    #[error("a header of the proof is not signed by the allowance's wallet")]
    BadSignature,
    /// The headers are consistent: no misbehaviour shown.
    #[error("the headers do not conflict")]
    NoConflict,
    /// The same evidence in a non-canonical order.
    #[error("the proof's headers are not in canonical order")]
    NotCanonical,
}

impl ConflictProof {
    /// The allowance whose wallet misbehaved.
    pub fn allowance(&self) -> AllowanceId {
        match self {
            ConflictProof::Fork { first, .. } => first.allowance,
            ConflictProof::Rewind { earlier, .. } => earlier.allowance,
            ConflictProof::OverLimit { header } => header.allowance,
        }
    }

    /// Identity of the proof (for deduplication in the ledger).
    pub fn hash(&self) -> Hash {
        Hash::tagged(domain::CONFLICT_PROOF, &self.encode_body())
    }

    /// The headers the proof holds.
    pub fn headers(&self) -> impl Iterator<Item = &SignedHeader> {
        let (a, b) = match self {
            ConflictProof::Fork { first, second } => (first, Some(second)),
            ConflictProof::Rewind { earlier, later } => (earlier, Some(later)),
            ConflictProof::OverLimit { header } => (header, None),
        };
        core::iter::once(a).chain(b)
    }

    /// Checks the proof against the allowance it names. The caller checks
    /// the allowance's issuer signature.
    pub fn verify(&self, allowance: &Allowance) -> Result<(), ConflictProofError> {
        for h in self.headers() {
            if h.allowance != allowance.id {
                return Err(ConflictProofError::WrongAllowance);
            }
            if !h.verify_by(&allowance.wallet) {
                return Err(ConflictProofError::BadSignature);
            }
        }
        match self {
            ConflictProof::Fork { first, second } => {
                if first.seq != second.seq || first.terms == second.terms {
                    return Err(ConflictProofError::NoConflict);
                }
                if first.id() >= second.id() {
                    return Err(ConflictProofError::NotCanonical);
                }
            }
            ConflictProof::Rewind { earlier, later } => {
                if earlier.seq >= later.seq {
                    return Err(ConflictProofError::NotCanonical);
                }
                if !undercounts(earlier, later) {
                    return Err(ConflictProofError::NoConflict);
                }
            }
            ConflictProof::OverLimit { header } => {
                if !over_limit(header, allowance) {
                    return Err(ConflictProofError::NoConflict);
                }
            }
        }
        Ok(())
    }
}

/// Whether one header breaks its allowance's limits on its face.
pub fn over_limit(header: &SignedHeader, allowance: &Allowance) -> bool {
    header.seq == 0
        || header.seq > allowance.caps.max_payments
        || header.amount == 0
        || header.amount > allowance.caps.max_per_payment
        || understated_alone(header)
        || header.cumulative > allowance.amount
}

/// Whether one header's cumulative is below what its own amount and its
/// sequence number imply: the `seq - 1` transfers before it each carried
/// at least 1, so `cumulative >= amount + seq - 1`.
fn understated_alone(header: &SignedHeader) -> bool {
    let floor = u128::from(header.amount) + u128::from(header.seq.saturating_sub(1));
    u128::from(header.cumulative) < floor
}

/// Whether `later`'s cumulative fails to account for its own amount plus
/// at least 1 for each sequence number between the two (every used
/// sequence number carries a positive amount). Honest payers always
/// satisfy `later.cumulative = earlier.cumulative + the amounts of
/// earlier.seq+1 ..= later.seq`. Requires `earlier.seq < later.seq`.
pub fn undercounts(earlier: &SignedHeader, later: &SignedHeader) -> bool {
    let gap = u64::from(later.seq - earlier.seq - 1);
    let needed = u128::from(earlier.cumulative) + u128::from(later.amount) + u128::from(gap);
    u128::from(later.cumulative) < needed
}

/// If two headers of one allowance cannot both be honest, the proof that
/// says so. Both headers must already be verified as signed by the wallet;
/// headers of different allowances never conflict.
pub fn detect(a: &SignedHeader, b: &SignedHeader) -> Option<ConflictProof> {
    if a.allowance != b.allowance || a.terms == b.terms {
        return None;
    }
    if a.seq == b.seq {
        // Same sequence, different header: either the body differs (a fork),
        // or the body is the same and the cumulative differs, which is a fork
        // of the counter all the same.
        let (first, second) = if a.id() < b.id() { (a, b) } else { (b, a) };
        return Some(ConflictProof::Fork {
            first: first.clone(),
            second: second.clone(),
        });
    }
    let (earlier, later) = if a.seq < b.seq { (a, b) } else { (b, a) };
    undercounts(earlier, later).then(|| ConflictProof::Rewind {
        earlier: earlier.clone(),
        later: later.clone(),
    })
}
