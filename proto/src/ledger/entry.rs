//! What the partial ledger holds, and how each kind of entry is named in
//! the replicated map.
//!
//! The ledger is one flat map from string keys to canonical encodings. The
//! key is derived from the value, so that two honest nodes that learn the
//! same fact write it under the same key, and two headers of one allowance
//! and sequence number (a fork) land on the same key, where the CRDT keeps
//! both as a conflict.
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `a` | `a` + b64(allowance id) | [`Allowance`] |
//! | `h` | `h` + b64(allowance id) + seq as 8 hex digits | the header without allowance id and seq: version byte, then cumulative (varint), amount (varint), body hash (32), signature (64) |
//! | `p` | `p` + b64(allowance id) + hex(proof hash) | [`ConflictProof`] |
//! | `r` | `r` + version as 16 hex digits | [`RevocationList`] |
//! | `k` | `k` + serial as 16 hex digits | [`SettlementAck`] |
//!
//! b64 is base64url without padding (RFC 4648 §5): 22 characters for a
//! 16-byte id. Keys and values are kept short because every header crosses
//! the mesh as its own CRDT change.

use crate::allowance::{Allowance, AllowanceId};
use crate::conflict::ConflictProof;
use serde::{Deserialize, Serialize};

use crate::crypto::{Hash, Signature};
use crate::encoding::{DecodeError, Encode};
use crate::revocation::RevocationList;
use crate::settlement_ack::SettlementAck;
use crate::transfer::{SignedHeader, TransferHeader};

/// One entry of the partial ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An allowance, needed to check its headers.
    Allowance(Allowance),
    /// A transfer header.
    Header(SignedHeader),
    /// Evidence of a double spend.
    Proof(ConflictProof),
    /// A revocation list (the newest one wins).
    Revocations(RevocationList),
    /// A settlement acknowledgement.
    Ack(SettlementAck),
}

/// The kinds, by key prefix; the order here is the order in which a batch
/// of entries is checked (allowances before the headers that need them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// `a`
    Allowance,
    /// `r`
    Revocations,
    /// `k`
    Ack,
    /// `p`
    Proof,
    /// `h`
    Header,
}

impl EntryKind {
    /// The key prefix.
    pub fn prefix(self) -> char {
        match self {
            EntryKind::Allowance => 'a',
            EntryKind::Header => 'h',
            EntryKind::Proof => 'p',
            EntryKind::Revocations => 'r',
            EntryKind::Ack => 'k',
        }
    }

    /// The kind a key names, if any.
    pub fn of_key(key: &str) -> Option<EntryKind> {
        match key.as_bytes().first()? {
            b'a' => Some(EntryKind::Allowance),
            b'h' => Some(EntryKind::Header),
            b'p' => Some(EntryKind::Proof),
            b'r' => Some(EntryKind::Revocations),
            b'k' => Some(EntryKind::Ack),
            _ => None,
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
fn b64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Key of an allowance.
pub fn allowance_key(id: &AllowanceId) -> String {
    format!("a{}", b64(id.as_bytes()))
}

/// Key of a header: all headers of one allowance share the prefix
/// [`headers_prefix`] and sort by sequence number.
pub fn header_key(allowance: &AllowanceId, seq: u32) -> String {
    format!("h{}{seq:08x}", b64(allowance.as_bytes()))
}

/// The prefix shared by every header key of an allowance.
pub fn headers_prefix(allowance: &AllowanceId) -> String {
    format!("h{}", b64(allowance.as_bytes()))
}

/// The prefix shared by every proof key of an allowance.
pub fn proofs_prefix(allowance: &AllowanceId) -> String {
    format!("p{}", b64(allowance.as_bytes()))
}

/// A header as stored under its key: what the key does not already say.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct StoredHeader {
    cumulative: u64,
    amount: u64,
    body_hash: Hash,
    signature: Signature,
}

impl Encode for StoredHeader {
    const KIND: &'static str = "stored header";
}

/// Parses `h` + b64(16 bytes) + 8 hex digits.
fn parse_header_key(key: &str) -> Option<(AllowanceId, u32)> {
    let rest = key.strip_prefix('h')?;
    if rest.len() != 30 || !rest.is_ascii() {
        return None;
    }
    let (id, seq) = rest.split_at(22);
    let mut bytes = [0u8; 16];
    let mut acc = 0u32;
    let mut bits = 0;
    let mut i = 0;
    for c in id.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if i < 16 {
                bytes[i] = (acc >> bits) as u8;
            }
            i += 1;
            acc &= (1 << bits) - 1;
        }
    }
    let seq = u32::from_str_radix(seq, 16).ok()?;
    // The caller compares the canonical key, which catches any sloppy form.
    Some((AllowanceId(bytes), seq))
}

impl Entry {
    /// The kind.
    pub fn kind(&self) -> EntryKind {
        match self {
            Entry::Allowance(_) => EntryKind::Allowance,
            Entry::Header(_) => EntryKind::Header,
            Entry::Proof(_) => EntryKind::Proof,
            Entry::Revocations(_) => EntryKind::Revocations,
            Entry::Ack(_) => EntryKind::Ack,
        }
    }

    /// The key the entry is stored under.
    pub fn key(&self) -> String {
        match self {
            Entry::Allowance(a) => allowance_key(&a.id),
            Entry::Header(h) => header_key(&h.allowance, h.seq),
            Entry::Proof(p) => format!(
                "{}{}",
                proofs_prefix(&p.allowance()),
                hex(p.hash().as_bytes())
            ),
            Entry::Revocations(r) => format!("r{:016x}", r.version),
            Entry::Ack(k) => format!("k{:016x}", k.serial),
        }
    }

    /// The canonical encoding stored as the value.
    pub fn encode_value(&self) -> Vec<u8> {
        match self {
            Entry::Allowance(a) => a.encode(),
            Entry::Header(h) => StoredHeader {
                cumulative: h.cumulative,
                amount: h.amount,
                body_hash: h.body_hash,
                signature: h.signature,
            }
            .encode(),
            Entry::Proof(p) => p.encode(),
            Entry::Revocations(r) => r.encode(),
            Entry::Ack(k) => k.encode(),
        }
    }

    /// Decodes a value stored under `key`, checking that the key is the one
    /// the value belongs under.
    pub fn decode(key: &str, value: &[u8]) -> Result<Entry, EntryError> {
        let kind = EntryKind::of_key(key).ok_or(EntryError::UnknownKey)?;
        let entry = match kind {
            EntryKind::Allowance => Entry::Allowance(Allowance::decode(value)?),
            EntryKind::Header => {
                let (allowance, seq) = parse_header_key(key).ok_or(EntryError::KeyMismatch)?;
                let stored = StoredHeader::decode(value)?;
                Entry::Header(SignedHeader {
                    terms: TransferHeader {
                        allowance,
                        seq,
                        cumulative: stored.cumulative,
                        amount: stored.amount,
                        body_hash: stored.body_hash,
                    },
                    signature: stored.signature,
                })
            }
            EntryKind::Proof => Entry::Proof(ConflictProof::decode(value)?),
            EntryKind::Revocations => Entry::Revocations(RevocationList::decode(value)?),
            EntryKind::Ack => Entry::Ack(SettlementAck::decode(value)?),
        };
        if entry.key() != key {
            return Err(EntryError::KeyMismatch);
        }
        Ok(entry)
    }

    /// The entry's element of the ledger's multiset hash (ECMH over
    /// Ristretto): `SHA-512(tag || 0x00 || key || 0x00 || value)` mapped to
    /// a point. Sums of such points cannot be steered to a chosen value
    /// without solving discrete logarithms, unlike XOR or modular sums of
    /// hashes, which a few hundred chosen entries can collide.
    pub(crate) fn digest_part(key: &str, value: &[u8]) -> curve25519_dalek::RistrettoPoint {
        use sha2::Digest as _;
        let mut h = sha2::Sha512::new();
        h.update(crate::crypto::domain::LEDGER_ENTRY);
        h.update([0u8]);
        h.update(key.as_bytes());
        h.update([0u8]);
        h.update(value);
        let wide: [u8; 64] = h.finalize().into();
        // Off unless a simulator turned it on (see `verify_memo`).
        crate::verify_memo::point(&wide, || {
            curve25519_dalek::RistrettoPoint::from_uniform_bytes(&wide)
        })
    }
}

/// Why a stored or received value is not a ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The key has no known prefix.
    #[error("unknown ledger key")]
    UnknownKey,
    /// The value does not decode.
    #[error("ledger value does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The value belongs under another key.
    #[error("ledger value stored under the wrong key")]
    KeyMismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_keys_round_trip_and_sort_by_sequence() {
        for id in [[0u8; 16], [0xFF; 16], *b"0123456789abcdef"] {
            let id = AllowanceId(id);
            for seq in [0, 1, 255, 256, u32::MAX] {
                let key = header_key(&id, seq);
                assert_eq!(key.len(), 31);
                assert!(key.starts_with(&headers_prefix(&id)));
                assert_eq!(parse_header_key(&key), Some((id, seq)));
            }
            assert!(header_key(&id, 9) < header_key(&id, 10));
            assert!(header_key(&id, 0xFFFF) < header_key(&id, 0x1_0000));
        }
        assert_eq!(b64(b"\xfb\xff"), "-_8");
        for bad in [
            "",
            "h",
            "x0000000000000000000000000000000",
            "h!!!!!!!!!!!!!!!!!!!!!!00000000",
        ] {
            assert!(parse_header_key(bad).is_none(), "{bad}");
        }
    }
}
