//! `Signed<T>`: terms plus one signature by a named key role.

use core::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::crypto::{PublicKey, SecretKey, Signature};
use crate::encoding::Encode;

/// Terms that are signed as a whole under a domain tag.
pub trait SignedTerms: Encode {
    /// The domain tag of the signature (see [`crate::crypto::domain`]).
    const DOMAIN: &'static [u8];
    /// Name of the signed object in errors ("allowance", ...).
    const SIGNED_KIND: &'static str;
}

/// Terms and a signature over `DOMAIN || 0x00 || encode_body(terms)`.
///
/// Who must have signed depends on `T` (the issuer for an allowance, the
/// payer for a transfer header); [`Signed::verify_by`] checks one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "T: SignedTerms")]
pub struct Signed<T> {
    /// What was signed.
    pub terms: T,
    /// The signature.
    pub signature: Signature,
}

impl<T: SignedTerms> Signed<T> {
    /// Signs `terms` with `key`.
    pub fn sign(terms: T, key: &SecretKey) -> Self {
        let signature = key.sign(T::DOMAIN, &terms.encode_body());
        Signed { terms, signature }
    }

    /// Whether `key` made the signature.
    pub fn verify_by(&self, key: &PublicKey) -> bool {
        key.verify(T::DOMAIN, &self.terms.encode_body(), &self.signature)
    }

    /// The exact message the signature covers, for batch verification.
    pub fn signing_message(&self) -> Vec<u8> {
        crate::crypto::signing_message(T::DOMAIN, &self.terms.encode_body())
    }
}

impl<T> Deref for Signed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.terms
    }
}

impl<T: SignedTerms> Encode for Signed<T> {
    const KIND: &'static str = T::SIGNED_KIND;
}
