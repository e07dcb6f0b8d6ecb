//! Issuer-signed revocation lists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::allowance::AllowanceId;
use crate::crypto::{PublicKey, domain};
use crate::encoding::Encode;
use crate::signed::{Signed, SignedTerms};
use crate::time::Timestamp;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Revoked {
    /// One allowance.
    Allowance(AllowanceId),
    /// Every allowance of a wallet key.
    Wallet(PublicKey),
}

/// Why it was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RevocationReason {
    /// A conflict proof exists against it.
    DoubleSpend,
    /// Its owner reported the device lost or stolen.
    LostDevice,
    /// The issuer withdrew it for another reason.
    Withdrawn,
}

/// The full list as of one version. A newer version replaces an older one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationListTerms {
    /// Strictly increasing with every list the issuer publishes.
    pub version: u64,
    /// When it was published.
    pub issued_at: Timestamp,
    /// The issuer key that signed it.
    pub issuer: PublicKey,
    /// Every revoked allowance or wallet, with the reason.
    pub entries: BTreeMap<Revoked, RevocationReason>,
}

impl Encode for RevocationListTerms {
    const KIND: &'static str = "revocation list terms";
}

impl SignedTerms for RevocationListTerms {
    const DOMAIN: &'static [u8] = domain::REVOCATION_LIST;
    const SIGNED_KIND: &'static str = "revocation list";
}

/// An issuer-signed revocation list.
pub type RevocationList = Signed<RevocationListTerms>;

impl RevocationListTerms {
    /// Whether the allowance, or its wallet, is revoked.
    pub fn revokes(&self, allowance: &AllowanceId, wallet: &PublicKey) -> bool {
        self.entries.contains_key(&Revoked::Allowance(*allowance))
            || self.entries.contains_key(&Revoked::Wallet(*wallet))
    }
}
