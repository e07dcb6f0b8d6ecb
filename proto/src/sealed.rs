//! Receipts sealed to the settlement service, for relays to carry.
//!
//! A relay needs the public header (to know what it carries and to drop it
//! once settlement acknowledges it) but has no business reading the body:
//! who was paid, the invoice nonce, the payer's clock. So a receipt travels
//! through relays as its signed header in clear and its body with the
//! payee's acknowledgement sealed with HPKE (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to the
//! settlement service.
//!
//! The recipient key is the issuer's pinned Ed25519 root key, read as an
//! X25519 key through the birational map from Edwards to Montgomery form
//! (as libsodium's `crypto_sign_ed25519_pk_to_curve25519` and age's
//! ssh-ed25519 recipients do). Every node already pins that key, so a
//! node that never went online can seal; the service opens with the
//! X25519 scalar of its Ed25519 seed. The associated data is the transfer
//! id, so a sealed body cannot be moved under another header.
//!
//! Randomness comes in as an argument (32 bytes of entropy for the
//! ephemeral key), as everywhere in this crate.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::crypto::{PublicKey, SecretKey, Signature};
use crate::encoding::Encode;
use crate::transfer::{Receipt, SignedHeader, Transfer, TransferBody, TransferId};

/// HPKE `info`: binds the seal to this use.
const INFO: &[u8] = b"meshpay/v1/sealed-receipt";

/// A receipt as relays carry it: the header in clear, the rest sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedReceipt {
    /// The payer-signed header.
    pub header: SignedHeader,
    /// The HPKE encapsulated key.
    pub enc: [u8; 32],
    /// The sealed body and payee signature, with the AEAD tag at the end.
    pub sealed: Vec<u8>,
}

impl Encode for SealedReceipt {
    const KIND: &'static str = "sealed receipt";
}

/// What is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SealedBody {
    body: TransferBody,
    payee_signature: Signature,
}

impl Encode for SealedBody {
    const KIND: &'static str = "sealed receipt body";
}

/// Why sealing or opening failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The issuer key has no X25519 form (never for a valid key).
    #[error("the issuer key cannot be used for sealing")]
    Key,
    /// HPKE failed to seal.
    #[error("sealing failed")]
    Seal,
    /// Wrong recipient, or the sealed part, the header or the encapsulated
    /// key was altered.
    #[error("the sealed receipt does not open (wrong key, or altered)")]
    Open,
    /// It opened, but what is inside is not a body of this header.
    #[error("the sealed body does not match its header")]
    Mismatch,
}

/// Stretches 32 bytes of entropy into the stream HPKE asks for.
struct Entropy {
    seed: [u8; 32],
    counter: u64,
}

impl rand_core_09::RngCore for Entropy {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let block = sha2::Sha256::new()
                .chain_update(b"meshpay/v1/seal-entropy")
                .chain_update(self.seed)
                .chain_update(self.counter.to_le_bytes())
                .finalize();
            self.counter += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

impl rand_core_09::CryptoRng for Entropy {}

type KemPublic = <X25519HkdfSha256 as Kem>::PublicKey;
type KemSecret = <X25519HkdfSha256 as Kem>::PrivateKey;

/// The issuer's Ed25519 key in X25519 form.
fn recipient(issuer: &PublicKey) -> Result<KemPublic, SealError> {
    let point = curve25519_dalek::edwards::CompressedEdwardsY(*issuer.as_bytes())
        .decompress()
        .ok_or(SealError::Key)?;
    KemPublic::from_bytes(&point.to_montgomery().to_bytes()).map_err(|_| SealError::Key)
}

/// The X25519 secret of an Ed25519 seed: the first half of SHA-512(seed),
/// the scalar Ed25519 signs with (X25519 clamps it the same way).
fn recipient_secret(issuer: &SecretKey) -> Result<KemSecret, SealError> {
    let h = sha2::Sha512::digest(issuer.to_seed());
    KemSecret::from_bytes(&h[..32]).map_err(|_| SealError::Key)
}

/// Seals `receipt` to the settlement service of `issuer`.
pub fn seal(
    receipt: &Receipt,
    issuer: &PublicKey,
    entropy: [u8; 32],
) -> Result<SealedReceipt, SealError> {
    let pk = recipient(issuer)?;
    let transfer = &receipt.transfer;
    let mut buf = SealedBody {
        body: transfer.body().clone(),
        payee_signature: receipt.payee_signature,
    }
    .encode();
    let id = transfer.id();
    let mut rng = Entropy {
        seed: entropy,
        counter: 0,
    };
    let (enc, tag) = hpke::single_shot_seal_in_place_detached::<
        ChaCha20Poly1305,
        HkdfSha256,
        X25519HkdfSha256,
        _,
    >(&OpModeS::Base, &pk, INFO, &mut buf, id.as_bytes(), &mut rng)
    .map_err(|_| SealError::Seal)?;
    buf.extend_from_slice(&tag.to_bytes());
    let enc: [u8; 32] = enc
        .to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| SealError::Seal)?;
    Ok(SealedReceipt {
        header: transfer.signed_header(),
        enc,
        sealed: buf,
    })
}

impl SealedReceipt {
    /// The transfer id (from the header).
    pub fn transfer_id(&self) -> TransferId {
        self.header.terms.id()
    }

    /// Opens it with the issuer's key: the receipt, whose signatures the
    /// caller still checks.
    pub fn open(&self, issuer: &SecretKey) -> Result<Receipt, SealError> {
        const TAG: usize = 16;
        let sk = recipient_secret(issuer)?;
        let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&self.enc)
            .map_err(|_| SealError::Open)?;
        if self.sealed.len() < TAG {
            return Err(SealError::Open);
        }
        let (ct, tag) = self.sealed.split_at(self.sealed.len() - TAG);
        let tag = hpke::aead::AeadTag::<ChaCha20Poly1305>::from_bytes(tag)
            .map_err(|_| SealError::Open)?;
        let mut buf = ct.to_vec();
        let id = self.transfer_id();
        hpke::single_shot_open_in_place_detached::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &sk,
            &enc,
            INFO,
            &mut buf,
            id.as_bytes(),
            &tag,
        )
        .map_err(|_| SealError::Open)?;
        let inner = SealedBody::decode(&buf).map_err(|_| SealError::Mismatch)?;
        let transfer =
            Transfer::from_parts(self.header.clone(), inner.body).ok_or(SealError::Mismatch)?;
        Ok(Receipt {
            transfer,
            payee_signature: inner.payee_signature,
        })
    }
}
