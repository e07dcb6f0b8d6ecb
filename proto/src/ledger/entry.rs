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
//! | `a` | `a` + hex(allowance id) | [`Allowance`] |
//! | `h` | `h` + hex(allowance id) + seq as 8 hex digits | [`SignedHeader`] |
//! | `p` | `p` + hex(allowance id) + hex(proof hash) | [`ConflictProof`] |
//! | `r` | `r` + version as 16 hex digits | [`RevocationList`] |
//! | `k` | `k` + serial as 16 hex digits | [`SettlementAck`] |

use crate::allowance::{Allowance, AllowanceId};
use crate::conflict::ConflictProof;
use crate::crypto::Hash;
use crate::encoding::{DecodeError, Encode};
use crate::revocation::RevocationList;
use crate::settlement_ack::SettlementAck;
use crate::transfer::SignedHeader;

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
    format!("a{}", hex(id.as_bytes()))
}

/// Key of a header: all headers of one allowance share the prefix
/// [`headers_prefix`] and sort by sequence number.
pub fn header_key(allowance: &AllowanceId, seq: u32) -> String {
    format!("h{}{seq:08x}", hex(allowance.as_bytes()))
}

/// The prefix shared by every header key of an allowance.
pub fn headers_prefix(allowance: &AllowanceId) -> String {
    format!("h{}", hex(allowance.as_bytes()))
}

/// The prefix shared by every proof key of an allowance.
pub fn proofs_prefix(allowance: &AllowanceId) -> String {
    format!("p{}", hex(allowance.as_bytes()))
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
            Entry::Header(h) => h.encode(),
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
            EntryKind::Header => Entry::Header(SignedHeader::decode(value)?),
            EntryKind::Proof => Entry::Proof(ConflictProof::decode(value)?),
            EntryKind::Revocations => Entry::Revocations(RevocationList::decode(value)?),
            EntryKind::Ack => Entry::Ack(SettlementAck::decode(value)?),
        };
        if entry.key() != key {
            return Err(EntryError::KeyMismatch);
        }
        Ok(entry)
    }

    /// The entry's contribution to the ledger digest.
    pub(crate) fn digest_part(key: &str, value: &[u8]) -> Hash {
        let mut data = Vec::with_capacity(key.len() + 1 + value.len());
        data.extend_from_slice(key.as_bytes());
        data.push(0);
        data.extend_from_slice(value);
        Hash::tagged(crate::crypto::domain::LEDGER_ENTRY, &data)
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
