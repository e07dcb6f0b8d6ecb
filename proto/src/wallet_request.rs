//! Requests a wallet signs for the settlement service: load an allowance
//! (escrow from the wallet's online account) and report a device lost.
//!
//! The wallet key authenticates them, so anyone may carry one to the
//! service; a fresh nonce and the time of signing keep a copy from being
//! replayed (the service remembers nonces and refuses requests far from
//! its clock).

use serde::{Deserialize, Serialize};

use crate::allowance::{AllowanceId, Caps, Currency};
use crate::crypto::{PublicKey, domain};
use crate::encoding::Encode;
use crate::signed::{Signed, SignedTerms};
use crate::time::Timestamp;
use crate::transfer::Nonce;

/// What the wallet asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WalletAction {
    /// Issue an allowance of `amount`, escrowed from the wallet's account.
    Issue {
        /// Minor units.
        amount: u64,
        /// Currency or voucher code.
        currency: Currency,
        /// Seconds until it expires.
        valid_secs: u64,
        /// Caps on single payments and their number.
        caps: Caps,
    },
    /// The device holding this allowance is lost: revoke it, refund what
    /// was not spent before the revocation reached the mesh.
    ReportLost {
        /// The allowance.
        allowance: AllowanceId,
    },
}

/// A request, signed by `wallet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRequestTerms {
    /// The wallet key that signs (and whose account pays).
    pub wallet: PublicKey,
    /// The issuer (settlement service) the request is for: another
    /// service refuses it, so it cannot be replayed there.
    pub issuer: PublicKey,
    /// Fresh per request.
    pub nonce: Nonce,
    /// When it was signed, by the wallet's clock.
    pub at: Timestamp,
    /// What it asks.
    pub action: WalletAction,
}

impl Encode for WalletRequestTerms {
    const KIND: &'static str = "wallet request terms";
}

impl SignedTerms for WalletRequestTerms {
    const DOMAIN: &'static [u8] = domain::WALLET_REQUEST;
    const SIGNED_KIND: &'static str = "wallet request";
}

/// A wallet-signed request.
pub type WalletRequest = Signed<WalletRequestTerms>;

impl WalletRequestTerms {
    /// Whether the request was signed by the wallet it names.
    pub fn verify(request: &WalletRequest) -> bool {
        request.verify_by(&request.terms.wallet)
    }
}
