//! The node's LAN push of urgent entries, as `node/src/mesh/mod.rs` does it.
//!
//! Besides pairwise sync sessions, a node on a LAN publishes on the
//! gossipsub topic `meshpay/urgent/1` (flood publish: one copy to every
//! connected subscriber):
//!
//! - when a sync session it took part in finishes, the conflict proofs
//!   that session taught it (`SyncStats::new_proofs`);
//! - when it refuses a payment because the transfer conflicts with a
//!   header it holds (`PaymentError::Conflict`), that proof.
//!
//! The message is a [`SyncMessage::Urgent`]: each proof with the
//! allowance that checks it (a proof whose allowance the ledger lacks is
//! left out) and the newest revocation list. Headers are *not* pushed:
//! they move by sync sessions only. A receiver checks the whole message
//! with [`PartialLedger::insert_urgent`] (all or nothing; new entries are
//! held aside, not written into its replica) and does not
//! publish it again itself; gossipsub forwards it to its mesh peers (a
//! target of [`MESH_N`]), who already hold it on a LAN where every node
//! reaches every other, so forwards cost bytes and deliver nothing new.

use meshpay_proto::conflict::ConflictProof;
use meshpay_proto::encoding::Encode;
use meshpay_proto::ledger::{Entry, Inserted, LedgerError, PartialLedger};
use meshpay_proto::sync::SyncMessage;
use meshpay_proto::validate::MeshView;

/// Bytes gossipsub and the transport add to each copy of a message: the
/// signed gossipsub envelope (the 38-byte peer id of its source, an
/// 8-byte sequence number, the 16-byte topic name, a 64-byte Ed25519
/// signature, protobuf tags and lengths) and the noise and yamux framing
/// (a 16-byte tag and frame headers). An estimate from the field sizes,
/// not a capture.
pub const GOSSIP_OVERHEAD: u64 = 170;

/// gossipsub's target mesh size in the node (`mesh_n`): how many peers a
/// receiver forwards a new message to.
pub const MESH_N: u64 = 3;

/// Counters of the LAN push.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PushCounts {
    /// Messages published (on a LAN, or to BLE contacts that heard the
    /// urgent flag).
    pub published: u64,
    /// Of them, over BLE.
    pub over_ble: u64,
    /// Copies delivered (one per receiver and message).
    pub deliveries: u64,
    /// Deliveries that taught the receiver at least one proof.
    pub new_at_receiver: u64,
    /// Deliveries the receiver's ledger refused (none from honest
    /// publishers).
    pub refused: u64,
    /// Bytes sent: every copy from the publisher and every forward,
    /// resends on a lossy LAN included.
    pub bytes: u64,
}

/// The message a node whose ledger is `ledger` publishes for `proofs`, as
/// the entries a receiver inserts and its size on the wire (with
/// [`GOSSIP_OVERHEAD`]); `None` when nothing is left to publish.
pub fn message(ledger: &PartialLedger, proofs: Vec<ConflictProof>) -> Option<(Vec<Entry>, u64)> {
    let proofs: Vec<_> = proofs
        .into_iter()
        .filter_map(|p| Some((ledger.allowance(&p.allowance())?.into_inner(), p)))
        .collect();
    if proofs.is_empty() {
        return None;
    }
    let revocations = ledger.revocations().cloned();
    // What `on_urgent` inserts: each allowance before its proof, then the
    // list.
    let mut entries = Vec::with_capacity(proofs.len() * 2 + 1);
    for (a, p) in &proofs {
        entries.push(Entry::Allowance(a.clone()));
        entries.push(Entry::Proof(p.clone()));
    }
    entries.extend(revocations.clone().map(Entry::Revocations));
    let size = SyncMessage::Urgent {
        proofs,
        revocations,
    }
    .encode()
    .len() as u64;
    Some((entries, size + GOSSIP_OVERHEAD))
}

/// A receiver takes a pushed message as the node's `on_urgent` does:
/// `insert_urgent`, all or nothing. Returns the proofs that were new to it,
/// or the error its ledger refused the message with.
pub fn receive(
    ledger: &mut PartialLedger,
    entries: Vec<Entry>,
) -> Result<Vec<ConflictProof>, LedgerError> {
    let results = ledger.insert_urgent(entries)?;
    Ok(results
        .into_iter()
        .filter_map(|(e, r)| match (e, r) {
            (Entry::Proof(p), Inserted::New) => Some(p),
            _ => None,
        })
        .collect())
}
