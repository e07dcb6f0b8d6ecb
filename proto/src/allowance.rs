//! Allowances (issuer-signed offline spending rights), the issuer's key
//! certificates, payee credentials, and the trust store that checks them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::bytes::byte_newtype;
use crate::crypto::{PublicKey, domain};
use crate::encoding::Encode;
use crate::signed::{Signed, SignedTerms};
use crate::time::Timestamp;

byte_newtype!(
    /// Issuer-assigned, random, pseudonymous id of an allowance.
    AllowanceId,
    16
);

/// An ISO 4217-style currency or voucher code: three upper-case ASCII
/// letters ("EUR", "USD", or a relief voucher code such as "XRV").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Checks and wraps a code.
    pub fn new(code: &str) -> Option<Currency> {
        let b = code.as_bytes();
        let arr: [u8; 3] = b.try_into().ok()?;
        arr.iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Currency(arr))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Invariant: three ASCII upper-case letters.
        core::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <[u8; 3]>::deserialize(d)?;
        if raw.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency(raw))
        } else {
            Err(serde::de::Error::custom(
                "currency code must be 3 upper-case letters",
            ))
        }
    }
}

impl core::fmt::Display for Currency {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Risk caps of an allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Largest amount of a single payment, in minor units.
    pub max_per_payment: u64,
    /// Largest sequence number: at most this many payments.
    pub max_payments: u32,
}

/// Who may accept payments from an allowance (targeted disbursement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restriction {
    /// Only these payee keys.
    Payees(BTreeSet<PublicKey>),
    /// Only payees holding an issuer-signed [`PayeeCredential`] of this class
    /// (for example "approved food vendor").
    PayeeClass(u32),
}

/// What the issuer signs when it escrows value for offline use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceTerms {
    /// Pseudonymous id; appears in every transfer header.
    pub id: AllowanceId,
    /// The wallet key that may spend it.
    pub wallet: PublicKey,
    /// Escrowed amount in minor units: cumulative spending never exceeds it.
    pub amount: u64,
    /// Currency or voucher code.
    pub currency: Currency,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// Payees must refuse it after this instant (plus the stated skew).
    pub expires_at: Timestamp,
    /// Per-payment and count caps.
    pub caps: Caps,
    /// Wallet tier the issuer assigned (informational for payees; the caps
    /// above already reflect it).
    pub tier: u8,
    /// Optional payee restriction.
    pub restriction: Option<Restriction>,
    /// The issuer key that signed this allowance (the pinned root key, or a
    /// key certified by it).
    pub issuer: PublicKey,
}

impl Encode for AllowanceTerms {
    const KIND: &'static str = "allowance terms";
}

impl SignedTerms for AllowanceTerms {
    const DOMAIN: &'static [u8] = domain::ALLOWANCE;
    const SIGNED_KIND: &'static str = "allowance";
}

/// An issuer-signed allowance.
pub type Allowance = Signed<AllowanceTerms>;

/// Root-signed statement that `key` may act as issuer between two instants.
/// This is how the issuer key rotates while nodes pin only the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerCertificateTerms {
    /// The certified issuer key.
    pub key: PublicKey,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
}

impl Encode for IssuerCertificateTerms {
    const KIND: &'static str = "issuer certificate terms";
}

impl SignedTerms for IssuerCertificateTerms {
    const DOMAIN: &'static [u8] = domain::ISSUER_CERT;
    const SIGNED_KIND: &'static str = "issuer certificate";
}

/// A root-signed issuer key certificate.
pub type IssuerCertificate = Signed<IssuerCertificateTerms>;

/// Issuer-signed statement that a payee belongs to a class of approved
/// payees until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayeeCredentialTerms {
    /// The payee wallet key.
    pub payee: PublicKey,
    /// Its class.
    pub class: u32,
    /// End of validity.
    pub expires_at: Timestamp,
    /// The issuer key that signed it.
    pub issuer: PublicKey,
}

impl Encode for PayeeCredentialTerms {
    const KIND: &'static str = "payee credential terms";
}

impl SignedTerms for PayeeCredentialTerms {
    const DOMAIN: &'static [u8] = domain::PAYEE_CREDENTIAL;
    const SIGNED_KIND: &'static str = "payee credential";
}

/// An issuer-signed payee credential.
pub type PayeeCredential = Signed<PayeeCredentialTerms>;

/// The root of trust pinned in a node's config, plus the issuer key
/// certificates it has learnt.
#[derive(Debug, Clone)]
pub struct TrustStore {
    root: PublicKey,
    certificates: Vec<IssuerCertificate>,
}

impl TrustStore {
    /// A store that trusts `root` directly (v1: root and issuer are one key).
    pub fn new(root: PublicKey) -> Self {
        TrustStore {
            root,
            certificates: Vec::new(),
        }
    }

    /// The pinned root key.
    pub fn root(&self) -> &PublicKey {
        &self.root
    }

    /// Adds a certificate if the root signed it; returns whether it did.
    pub fn add_certificate(&mut self, cert: IssuerCertificate) -> bool {
        if !cert.verify_by(&self.root) || cert.not_after < cert.not_before {
            return false;
        }
        if !self.certificates.contains(&cert) {
            self.certificates.push(cert);
        }
        true
    }

    /// Whether `key` may sign as issuer at instant `at`.
    pub fn is_issuer_at(&self, key: &PublicKey, at: Timestamp) -> bool {
        self.is_issuer_for(key, at, at)
    }

    /// Whether `key` may sign something valid from `from` to `until`: the
    /// root always, a certified key only inside its certificate's window. So
    /// an allowance cannot outlive the certificate of the key that signed
    /// it, and a retired key cannot sign anything that is still usable.
    pub fn is_issuer_for(&self, key: &PublicKey, from: Timestamp, until: Timestamp) -> bool {
        *key == self.root
            || self
                .certificates
                .iter()
                .any(|c| c.key == *key && c.not_before <= from && until <= c.not_after)
    }
}
