//! Keys, signatures and the one hash function of the protocol.
//!
//! - Signatures: Ed25519 (RFC 8032) through ed25519-dalek, verified with
//!   `verify_strict` (rejects non-canonical `s` and small-order keys), or in
//!   batches with `verify_batch`.
//! - Hash: SHA-256 (FIPS 180-4) over a domain tag, a zero byte, then the
//!   canonical encoding. Every hashed or signed message starts with its own
//!   tag, so a signature over one kind of object can never be replayed as
//!   another.

use core::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::bytes::byte_newtype;

/// Domain tags. Each one is hashed or signed before a zero byte and the
/// object's canonical encoding; see docs/protocol.md, "Hashes and signatures".
pub mod domain {
    /// Issuer signature over allowance terms.
    pub const ALLOWANCE: &[u8] = b"meshpay/v1/allowance";
    /// Root signature over an issuer key certificate.
    pub const ISSUER_CERT: &[u8] = b"meshpay/v1/issuer-cert";
    /// Issuer signature over a payee credential.
    pub const PAYEE_CREDENTIAL: &[u8] = b"meshpay/v1/payee-credential";
    /// Hash of a transfer body (what the header commits to).
    pub const TRANSFER_BODY: &[u8] = b"meshpay/v1/transfer-body";
    /// Payer signature over a transfer header; also the transfer id hash.
    pub const TRANSFER_HEADER: &[u8] = b"meshpay/v1/transfer-header";
    /// Payee signature over a transfer id (the acknowledgement).
    pub const RECEIPT_ACK: &[u8] = b"meshpay/v1/receipt-ack";
    /// Issuer signature over a revocation list.
    pub const REVOCATION_LIST: &[u8] = b"meshpay/v1/revocation-list";
    /// Issuer signature over a settlement acknowledgement.
    pub const SETTLEMENT_ACK: &[u8] = b"meshpay/v1/settlement-ack";
    /// Hash of a conflict proof (its identity in the ledger).
    pub const CONFLICT_PROOF: &[u8] = b"meshpay/v1/conflict-proof";
    /// SHA-512 of one ledger entry (key, value), mapped to a Ristretto point
    /// and added into the ledger's multiset hash.
    pub const LEDGER_ENTRY: &[u8] = b"meshpay/v1/ledger-entry";
    /// Hash of the ledger's multiset hash and entry count: the digest peers
    /// compare to skip a sync.
    pub const LEDGER_DIGEST: &[u8] = b"meshpay/v1/ledger-digest";
    /// Hash of the allowances a ledger holds proofs against and its newest
    /// revocation list: peers compare it to skip the `Urgent` message.
    pub const URGENT_DIGEST: &[u8] = b"meshpay/v1/urgent-digest";
    /// Wallet signature over a request to the settlement service (load an
    /// allowance, report a device lost).
    pub const WALLET_REQUEST: &[u8] = b"meshpay/v1/wallet-request";
}

byte_newtype!(
    /// A SHA-256 digest.
    Hash,
    32
);

impl Hash {
    /// `SHA-256(tag || 0x00 || data)`.
    pub fn tagged(tag: &[u8], data: &[u8]) -> Hash {
        let mut h = Sha256::new();
        h.update(tag);
        h.update([0u8]);
        h.update(data);
        Hash(h.finalize().into())
    }
}

/// The message an Ed25519 signature covers: `tag || 0x00 || data`.
pub(crate) fn signing_message(tag: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(tag.len() + 1 + data.len());
    m.extend_from_slice(tag);
    m.push(0);
    m.extend_from_slice(data);
    m
}

/// An Ed25519 public key that has been checked to be a valid curve point of
/// large order. Decoding rejects anything else, so a held `PublicKey` is
/// always usable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// Why 32 bytes are not a usable public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bytes do not decode to a point on the curve.
    #[error("public key is not a valid Ed25519 point")]
    NotOnCurve,
    /// The point has small order: anyone could forge signatures for it.
    #[error("public key has small order (weak key)")]
    Weak,
    /// The point is valid but these are not its canonical 32 bytes (a
    /// y-coordinate of p or more): one key must have one encoding.
    #[error("public key encoding is not canonical")]
    NonCanonical,
}

impl PublicKey {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// Checks and wraps 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        // Off unless a simulator turned it on (see `verify_memo`).
        crate::verify_memo::key(bytes, || {
            let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NotOnCurve)?;
            if key.is_weak() {
                return Err(KeyError::Weak);
            }
            if y_not_reduced(bytes) {
                return Err(KeyError::NonCanonical);
            }
            Ok(PublicKey(key))
        })
    }

    /// The compressed 32-byte form.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Verifies `signature` over `tag || 0x00 || data`.
    pub fn verify(&self, tag: &[u8], data: &[u8], signature: &Signature) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        let message = signing_message(tag, data);
        // Off unless a simulator turned it on (see `verify_memo`).
        crate::verify_memo::remembered(self.as_bytes(), &signature.0, &message, || {
            self.0.verify_strict(&message, &sig).is_ok()
        })
    }

    /// Parses the hex form printed by `Display`.
    pub fn from_hex(s: &str) -> Option<Self> {
        crate::bytes::parse_hex::<32>(s).and_then(|b| Self::from_bytes(&b).ok())
    }

    pub(crate) fn dalek(&self) -> &VerifyingKey {
        &self.0
    }
}

/// Whether the 255-bit y-coordinate is `p = 2^255 - 19` or more. Such an
/// encoding names the same point as `y - p` and is refused so that every key
/// has one encoding. (The other non-canonical form, x = 0 with the sign bit
/// set, only occurs for y = 1 or y = -1, both small-order and refused as
/// weak.)
fn y_not_reduced(bytes: &[u8; 32]) -> bool {
    bytes[0] >= 0xED && bytes[1..31].iter().all(|&b| b == 0xFF) && bytes[31] & 0x7F == 0x7F
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl core::hash::Hash for PublicKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::bytes::fmt_hex(self.as_bytes(), f)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::bytes::serialize(self.as_bytes(), s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: [u8; 32] = crate::bytes::deserialize(d)?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

byte_newtype!(
    /// The 32 bytes of a public key, not yet checked to be a valid point.
    ///
    /// Used where a key is only compared or stored (the payee named in a
    /// transfer body): decompressing a point costs about as much as a
    /// quarter of a signature check, so it is done only when a signature is
    /// checked against the key.
    KeyBytes,
    32
);

impl KeyBytes {
    /// Checks the bytes as a [`PublicKey`].
    pub fn to_public_key(&self) -> Result<PublicKey, KeyError> {
        PublicKey::from_bytes(&self.0)
    }
}

impl From<PublicKey> for KeyBytes {
    fn from(k: PublicKey) -> KeyBytes {
        KeyBytes(*k.as_bytes())
    }
}

impl PartialEq<PublicKey> for KeyBytes {
    fn eq(&self, other: &PublicKey) -> bool {
        &self.0 == other.as_bytes()
    }
}

byte_newtype!(
    /// An Ed25519 signature (R || s), 64 bytes. Not checked until verified.
    Signature,
    64
);

/// An Ed25519 signing key. Never encoded by the protocol; storage of it is
/// the node's business.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from a cryptographic RNG supplied by the caller.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        SecretKey(SigningKey::generate(rng))
    }

    /// The key for a 32-byte RFC 8032 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// The 32-byte RFC 8032 seed (for the node's encrypted key file).
    pub fn to_seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `tag || 0x00 || data`.
    pub fn sign(&self, tag: &[u8], data: &[u8]) -> Signature {
        Signature(self.0.sign(&signing_message(tag, data)).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

/// One signature to check in a batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// Full signed message (`tag || 0x00 || data`).
    pub message: Vec<u8>,
    /// Claimed signature.
    pub signature: Signature,
    /// Claimed signer.
    pub key: PublicKey,
}

/// Verifies many signatures at once (about 3x faster per signature than one
/// by one at batch sizes in the thousands). Deterministic: the batch
/// randomiser is derived from the inputs.
///
/// Returns `true` if the batch equation holds, `false` otherwise; a `false`
/// says nothing about which item failed: callers that need to know fall back
/// to [`PublicKey::verify`] one by one.
///
/// The batch equation is a little more permissive than
/// [`PublicKey::verify`]'s strict check (it does not refuse a small-order
/// component in `R`). Such a signature can only be made by the key's holder;
/// strict single verification stays the definition of validity, and an
/// offline payee always uses it.
pub fn verify_batch(items: &[BatchItem]) -> bool {
    let messages: Vec<&[u8]> = items.iter().map(|i| i.message.as_slice()).collect();
    verify_batch_parts(
        &messages,
        items.iter().map(|i| &i.signature),
        items.iter().map(|i| i.key),
    )
}

pub(crate) fn verify_batch_parts<'a>(
    messages: &[&[u8]],
    signatures: impl Iterator<Item = &'a Signature>,
    keys: impl Iterator<Item = PublicKey>,
) -> bool {
    let signatures: Vec<ed25519_dalek::Signature> = signatures
        .map(|s| ed25519_dalek::Signature::from_bytes(&s.0))
        .collect();
    let keys: Vec<VerifyingKey> = keys.map(|k| *k.dalek()).collect();
    if signatures.len() != messages.len() || keys.len() != messages.len() {
        return false;
    }
    if messages.is_empty() {
        return true;
    }
    ed25519_dalek::verify_batch(messages, &signatures, &keys).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every y in [p, 2^255) that decompresses to a valid point is refused as
    /// non-canonical, while its reduced twin (y - p) is the canonical form.
    #[test]
    fn unreduced_y_is_refused_and_reduced_twin_is_not() {
        let mut seen_valid_point = false;
        for low in 0xEDu8..=0xFF {
            for sign in [0u8, 0x80] {
                let mut unreduced = [0xFFu8; 32];
                unreduced[0] = low;
                unreduced[31] = 0x7F | sign;
                assert!(y_not_reduced(&unreduced));
                let mut reduced = [0u8; 32];
                reduced[0] = low - 0xED; // y - p
                reduced[31] = sign;
                assert!(!y_not_reduced(&reduced));
                if let Ok(k) = PublicKey::from_bytes(&reduced) {
                    seen_valid_point = true;
                    assert_eq!(
                        PublicKey::from_bytes(&unreduced),
                        Err(KeyError::NonCanonical),
                        "{k}"
                    );
                }
            }
        }
        assert!(
            seen_valid_point,
            "the test must exercise at least one point"
        );
    }

    #[test]
    fn signatures_are_bound_to_their_domain_tag() {
        let k = SecretKey::from_seed(&[7; 32]);
        let sig = k.sign(domain::ALLOWANCE, b"terms");
        assert!(k.public().verify(domain::ALLOWANCE, b"terms", &sig));
        assert!(!k.public().verify(domain::REVOCATION_LIST, b"terms", &sig));
        assert!(!k.public().verify(domain::ALLOWANCE, b"terms!", &sig));
    }
}
