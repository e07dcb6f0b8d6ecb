//! The replicated map under the partial ledger, behind a narrow trait, and
//! its automerge implementation.
//!
//! [`Replica`] is the seam where another set reconciliation (for example a
//! range-based one) could replace automerge: the ledger only ever asks a
//! replica to add values under keys, list values by key or prefix, save and
//! load itself, and exchange opaque reconciliation messages with a peer,
//! each of which it can inspect *before* applying it.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT, ReadDoc, ScalarValue, Value};

/// One `(key, value)` pair of the map.
pub type KeyValue = (String, Vec<u8>);

/// Names a unit a replica applies whole (for automerge, a change hash).
pub type UnitId = [u8; 32];

/// One unit of a peer's message (for automerge, one change): the entries it
/// would add, and the units it needs before it can be applied. A replica
/// applies a unit once every unit it depends on is held, and holds it back
/// until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The unit's id.
    pub id: UnitId,
    /// The units it depends on.
    pub deps: Vec<UnitId>,
    /// The `(key, value)` pairs it adds that the replica does not hold.
    pub entries: Vec<KeyValue>,
}

/// A grow-only multi-map from string keys to byte values that two peers
/// can reconcile.
pub trait Replica: Sized {
    /// What is remembered about one peer between sessions.
    type PeerState: Default;
    /// A parsed peer message.
    type Message;

    /// Every value under `key` (more than one after concurrent writes).
    fn values(&self, key: &str) -> Vec<Vec<u8>>;
    /// Whether `value` is one of the values under `key`.
    fn contains(&self, key: &str, value: &[u8]) -> bool {
        self.values(key).iter().any(|v| v == value)
    }
    /// Every key starting with `prefix`, in key order, with its values.
    fn scan(&self, prefix: &str) -> Vec<(String, Vec<Vec<u8>>)>;
    /// The nearest keys below and above `key` that start with `prefix`.
    fn neighbours(&self, prefix: &str, key: &str) -> (Option<String>, Option<String>);
    /// Adds values under keys that hold none yet locally (it never
    /// overwrites: a grow-only set).
    fn put_all(&mut self, entries: &[(String, Vec<u8>)]);
    /// Number of keys.
    fn len(&self) -> usize;
    /// If merges left more than `max` concurrent heads, joins them with one
    /// empty change. (Reconciliation messages list the heads, so a node
    /// that only ever merges would otherwise send one hash per writer it
    /// heard from in every message.)
    fn collapse_heads(&mut self, max: usize);
    /// Whether there are no keys.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next reconciliation message for `peer`, if any.
    fn sync_message(&mut self, peer: &mut Self::PeerState) -> Option<Vec<u8>>;
    /// The peer said it has nothing more to send, so whatever was in flight
    /// to it has been processed: forget any wait for an answer and produce
    /// the next message, if any.
    fn sync_message_after_peer_done(&mut self, peer: &mut Self::PeerState) -> Option<Vec<u8>>;
    /// Parses a peer's message and lists, unit by unit, the `(key, value)`
    /// pairs it would add that this replica does not hold yet, without
    /// applying anything. Units already held are left out.
    fn inspect(&self, message: &[u8]) -> Result<Inspected<Self>, ReplicaError>;
    /// Whether the replica has applied the unit `id`.
    fn holds_unit(&self, id: &UnitId) -> bool;
    /// Forgets every unit held back for missing dependencies (they will be
    /// asked for again in a later reconciliation).
    fn drop_waiting_units(&mut self);
    /// Applies a message that [`Replica::inspect`] accepted.
    fn apply(
        &mut self,
        peer: &mut Self::PeerState,
        inspected: Inspected<Self>,
    ) -> Result<(), ReplicaError>;

    /// Loads another replica's saved bytes for merging, listing unit by unit
    /// every `(key, value)` it holds that this replica does not; nothing is
    /// merged yet (see [`Replica::merge_from`]).
    fn inspect_saved(&self, bytes: &[u8]) -> Result<(Self, Vec<Unit>), ReplicaError>;
    /// Merges a replica returned by [`Replica::inspect_saved`].
    fn merge_from(&mut self, other: Self) -> Result<(), ReplicaError>;

    /// The whole replica as bytes (without units held back for missing
    /// dependencies: they were not all checked).
    fn save(&mut self) -> Vec<u8>;
    /// What changed since the last `save` or `save_incremental`.
    fn save_incremental(&mut self) -> Vec<u8>;
    /// Loads a replica saved by [`Replica::save`] (followed by any number of
    /// [`Replica::save_incremental`] outputs, concatenated).
    fn load(bytes: &[u8], actor: &[u8]) -> Result<Self, ReplicaError>;
    /// An empty replica writing as `actor`.
    fn empty(actor: &[u8]) -> Self;

    /// Peer state as bytes, for the node's storage.
    fn encode_peer_state(state: &Self::PeerState) -> Vec<u8>;
    /// Peer state from bytes (a damaged one is an error, not a panic).
    fn decode_peer_state(bytes: &[u8]) -> Result<Self::PeerState, ReplicaError>;
}

/// A peer message that has been parsed and listed but not applied.
pub struct Inspected<R: Replica> {
    /// The units of the message this replica does not hold, with the new
    /// `(key, value)` pairs each would add.
    pub units: Vec<Unit>,
    /// Wire size of the message.
    pub size: usize,
    pub(crate) message: R::Message,
}

impl<R: Replica> core::fmt::Debug for Inspected<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inspected")
            .field("units", &self.units.len())
            .field("size", &self.size)
            .finish()
    }
}

/// Why a replica operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The saved bytes do not load.
    #[error("saved ledger does not load: {0}")]
    Load(String),
    /// A peer message does not parse.
    #[error("malformed sync message: {0}")]
    Malformed(String),
    /// A peer message holds an operation the ledger never makes (a delete,
    /// a nested object, an overwrite, a non-bytes value).
    #[error("sync message holds a forbidden operation: {0}")]
    ForbiddenOperation(&'static str),
    /// Applying failed inside the CRDT.
    #[error("sync message could not be applied: {0}")]
    Apply(String),
}

/// The automerge implementation: one automerge document whose root map is
/// the ledger's map. Keys live directly in the root (nested maps created by
/// two nodes concurrently would conflict as objects).
pub struct AutomergeReplica {
    doc: Automerge,
    /// Heads as of the last save, for incremental saves.
    saved_heads: Vec<automerge::ChangeHash>,
    /// The document's root map as plain memory: every key with its values
    /// in byte order. The ledger reads it on every entry it checks;
    /// automerge's own look-up (a seek through its op columns) cost more
    /// than applying the change. Kept equal to the document: local writes
    /// go into both, and a peer's units enter it when automerge applies
    /// them (see `queued`).
    map: BTreeMap<String, Vec<Vec<u8>>>,
    /// Units of peers' messages automerge holds back for missing
    /// dependencies, with the pairs they add: they enter `map` once
    /// automerge has applied them.
    queued: HashMap<UnitId, Vec<KeyValue>>,
}

impl core::fmt::Debug for AutomergeReplica {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AutomergeReplica")
            .field("keys", &self.doc.length(ROOT))
            .finish()
    }
}

/// Saves leave out changes held back for missing dependencies: the ledger
/// may not have checked them yet, and they would come back on load without
/// the ledger's record of what still needs checking.
const NO_ORPHANS: automerge::SaveOptions = automerge::SaveOptions {
    deflate: true,
    retain_orphans: false,
};

/// Byte 0..4 of every automerge storage chunk.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_DOCUMENT: u8 = 0;

/// Splits a buffer of concatenated automerge storage chunks (magic, 4-byte
/// checksum, type byte, LEB128 length, data) into `(type, whole chunk)`.
fn split_chunks(mut data: &[u8]) -> Result<Vec<(u8, &[u8])>, ReplicaError> {
    let bad = |why: &str| ReplicaError::Malformed(format!("change chunk: {why}"));
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 9 || data[..4] != CHUNK_MAGIC {
            return Err(bad("bad magic bytes"));
        }
        let kind = data[8];
        let mut len: u64 = 0;
        let mut shift = 0u32;
        let mut i = 9;
        loop {
            let b = *data.get(i).ok_or_else(|| bad("truncated length"))?;
            if shift > 56 {
                return Err(bad("length too long"));
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| i.checked_add(l))
            .filter(|&e| e <= data.len())
            .ok_or_else(|| bad("truncated chunk"))?;
        out.push((kind, &data[..end]));
        data = &data[end..];
    }
    Ok(out)
}

/// Adds `value` to a key's values, kept in byte order and without
/// repeats (two nodes that wrote the same value concurrently leave two
/// equal values in automerge: one entry).
fn add_value(values: &mut Vec<Vec<u8>>, value: Vec<u8>) {
    if let Err(at) = values.binary_search(&value) {
        values.insert(at, value);
    }
}

/// Checks one change's operations are ledger writes (a bytes value put
/// into the root map under a key, overwriting nothing) and lists them.
fn ledger_ops(
    change: &automerge::Change,
    out: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), ReplicaError> {
    use automerge::legacy::{Key, ObjectId, OpType};
    for op in change.decode().operations {
        if op.obj != ObjectId::Root {
            return Err(ReplicaError::ForbiddenOperation(
                "write outside the root map",
            ));
        }
        if op.insert || !op.pred.is_empty() {
            return Err(ReplicaError::ForbiddenOperation("insert or overwrite"));
        }
        let Key::Map(key) = op.key else {
            return Err(ReplicaError::ForbiddenOperation("sequence key"));
        };
        let OpType::Put(ScalarValue::Bytes(value)) = op.action else {
            return Err(ReplicaError::ForbiddenOperation("not a bytes value"));
        };
        out.push((key.to_string(), value));
    }
    Ok(())
}

impl AutomergeReplica {
    fn actor(actor: &[u8]) -> ActorId {
        ActorId::from(actor)
    }

    /// A replica around a document, its map read from the document.
    fn from_doc(doc: Automerge, saved_heads: Vec<automerge::ChangeHash>) -> Self {
        let mut replica = AutomergeReplica {
            doc,
            saved_heads,
            map: BTreeMap::new(),
            queued: HashMap::new(),
        };
        replica.reread_map();
        replica
    }

    /// Reads the map from the document again (after a load or a merge).
    fn reread_map(&mut self) {
        let keys: Vec<String> = self
            .doc
            .map_range(ROOT, ..)
            .map(|item| item.key.to_string())
            .collect();
        self.map = keys
            .into_iter()
            .map(|k| {
                let v = self.doc_values(&k);
                (k, v)
            })
            .collect();
    }

    /// Every value under `key` in the document, in byte order.
    fn doc_values(&self, key: &str) -> Vec<Vec<u8>> {
        let Ok(all) = self.doc.get_all(ROOT, key) else {
            return Vec::new();
        };
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(all.len());
        for (v, _) in all {
            if let Value::Scalar(s) = v
                && let ScalarValue::Bytes(b) = s.as_ref()
            {
                add_value(&mut out, b.clone());
            }
        }
        out
    }

    /// Adds pairs the document now holds to the map.
    fn add_to_map(&mut self, pairs: Vec<KeyValue>) {
        for (k, v) in pairs {
            add_value(self.map.entry(k).or_default(), v);
        }
    }

    /// The pairs of `ops` this replica does not hold, each once.
    fn not_held(&self, ops: Vec<KeyValue>) -> Vec<KeyValue> {
        let mut seen = HashSet::new();
        ops.into_iter()
            .filter(|(k, v)| !self.contains(k, v) && seen.insert((k.clone(), v.clone())))
            .collect()
    }

    /// `change` as a unit, unless this replica holds it already. Each unit
    /// lists every new pair it writes, even one another unit of the same
    /// message writes too: the two may be applied at different times.
    fn unit(&self, change: &automerge::Change) -> Result<Option<Unit>, ReplicaError> {
        // The metadata look-up is a hash-map probe; get_change_by_hash
        // would rebuild the change from the op set (linear in its size).
        if self.doc.get_change_meta_by_hash(&change.hash()).is_some() {
            return Ok(None);
        }
        let mut ops = Vec::new();
        ledger_ops(change, &mut ops)?;
        Ok(Some(Unit {
            id: change.hash().0,
            deps: change.deps().iter().map(|d| d.0).collect(),
            entries: self.not_held(ops),
        }))
    }

    /// The automerge document (for measurements).
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }
}

impl Replica for AutomergeReplica {
    type PeerState = sync::State;
    type Message = sync::Message;

    fn values(&self, key: &str) -> Vec<Vec<u8>> {
        self.map.get(key).cloned().unwrap_or_default()
    }

    fn contains(&self, key: &str, value: &[u8]) -> bool {
        self.map
            .get(key)
            .is_some_and(|values| values.binary_search_by(|v| v.as_slice().cmp(value)).is_ok())
    }

    fn scan(&self, prefix: &str) -> Vec<(String, Vec<Vec<u8>>)> {
        self.map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn neighbours(&self, prefix: &str, key: &str) -> (Option<String>, Option<String>) {
        use core::ops::Bound::{Excluded, Unbounded};
        let below = self
            .map
            .range::<str, _>((Unbounded, Excluded(key)))
            .next_back()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(prefix))
            .cloned();
        let above = self
            .map
            .range::<str, _>((Excluded(key), Unbounded))
            .next()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(prefix))
            .cloned();
        (below, above)
    }

    fn put_all(&mut self, entries: &[(String, Vec<u8>)]) {
        if entries.is_empty() {
            return;
        }
        let mut tx = self.doc.transaction();
        let mut any = false;
        for (key, value) in entries {
            if !self.map.contains_key(key) {
                // Putting into the root map with a string key cannot fail.
                let _ = tx.put(ROOT, key.as_str(), ScalarValue::Bytes(value.clone()));
                self.map.insert(key.clone(), vec![value.clone()]);
                any = true;
            }
        }
        if any {
            // Time 0: the protocol has no use for automerge's wall-clock
            // stamp, and proto reads no clock.
            tx.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
        } else {
            tx.rollback();
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn collapse_heads(&mut self, max: usize) {
        if self.doc.get_heads().len() > max {
            self.doc
                .empty_commit(automerge::transaction::CommitOptions::default().with_time(0));
        }
    }

    fn sync_message(&mut self, peer: &mut sync::State) -> Option<Vec<u8>> {
        self.doc
            .generate_sync_message(peer)
            .map(sync::Message::encode)
    }

    fn sync_message_after_peer_done(&mut self, peer: &mut sync::State) -> Option<Vec<u8>> {
        peer.in_flight = false;
        self.sync_message(peer)
    }

    fn inspect(&self, message: &[u8]) -> Result<Inspected<Self>, ReplicaError> {
        let parsed =
            sync::Message::decode(message).map_err(|e| ReplicaError::Malformed(e.to_string()))?;
        let mut units = Vec::new();
        for chunk in parsed.changes.iter() {
            for (kind, bytes) in split_chunks(chunk)? {
                if kind == CHUNK_DOCUMENT {
                    let doc = Automerge::load(bytes)
                        .map_err(|e| ReplicaError::Malformed(e.to_string()))?;
                    for change in doc.get_changes(&[]) {
                        units.extend(self.unit(&change)?);
                    }
                } else {
                    let change = automerge::Change::from_bytes(bytes.to_vec())
                        .map_err(|e| ReplicaError::Malformed(e.to_string()))?;
                    units.extend(self.unit(&change)?);
                }
            }
        }
        Ok(Inspected {
            units,
            size: message.len(),
            message: parsed,
        })
    }

    fn inspect_saved(&self, bytes: &[u8]) -> Result<(Self, Vec<Unit>), ReplicaError> {
        let doc = Automerge::load(bytes).map_err(|e| ReplicaError::Load(e.to_string()))?;
        let mut units = Vec::new();
        for change in doc.get_changes(&[]) {
            units.extend(self.unit(&change)?);
        }
        Ok((AutomergeReplica::from_doc(doc, Vec::new()), units))
    }

    fn holds_unit(&self, id: &UnitId) -> bool {
        self.doc
            .get_change_meta_by_hash(&automerge::ChangeHash(*id))
            .is_some()
    }

    fn drop_waiting_units(&mut self) {
        let bytes = self.doc.save_with_options(NO_ORPHANS);
        let actor = self.doc.get_actor().clone();
        // Our own save always loads; should it not, keeping the document
        // as it is (queue included) is the safe failure.
        if let Ok(doc) = Automerge::load(&bytes) {
            self.doc = doc.with_actor(actor);
            self.queued.clear();
        }
    }

    fn merge_from(&mut self, mut other: Self) -> Result<(), ReplicaError> {
        let merged = self
            .doc
            .merge(&mut other.doc)
            .map(|_| ())
            .map_err(|e| ReplicaError::Apply(e.to_string()));
        self.reread_map();
        merged
    }

    fn apply(
        &mut self,
        peer: &mut sync::State,
        inspected: Inspected<Self>,
    ) -> Result<(), ReplicaError> {
        let applied = self
            .doc
            .receive_sync_message(peer, inspected.message)
            .map_err(|e| ReplicaError::Apply(e.to_string()));
        for unit in inspected.units {
            self.queued.entry(unit.id).or_insert(unit.entries);
        }
        // What automerge applied now, this message's units or ones held
        // back from earlier messages, enters the map.
        let ready: Vec<UnitId> = self
            .queued
            .keys()
            .filter(|id| self.holds_unit(id))
            .copied()
            .collect();
        for id in ready {
            if let Some(pairs) = self.queued.remove(&id) {
                self.add_to_map(pairs);
            }
        }
        applied
    }

    fn save(&mut self) -> Vec<u8> {
        self.saved_heads = self.doc.get_heads();
        self.doc.save_with_options(NO_ORPHANS)
    }

    fn save_incremental(&mut self) -> Vec<u8> {
        let bytes = self.doc.save_after(&self.saved_heads);
        self.saved_heads = self.doc.get_heads();
        bytes
    }

    fn load(bytes: &[u8], actor: &[u8]) -> Result<Self, ReplicaError> {
        let doc = Automerge::load(bytes).map_err(|e| ReplicaError::Load(e.to_string()))?;
        let saved_heads = doc.get_heads();
        let mut replica =
            AutomergeReplica::from_doc(doc.with_actor(Self::actor(actor)), saved_heads);
        // Saves by older versions kept changes that waited for missing
        // dependencies; nothing here knows whether they were checked.
        if !replica.doc.get_missing_deps(&[]).is_empty() {
            replica.drop_waiting_units();
        }
        Ok(replica)
    }

    fn empty(actor: &[u8]) -> Self {
        AutomergeReplica::from_doc(Automerge::new().with_actor(Self::actor(actor)), Vec::new())
    }

    fn encode_peer_state(state: &sync::State) -> Vec<u8> {
        state.encode()
    }

    fn decode_peer_state(bytes: &[u8]) -> Result<sync::State, ReplicaError> {
        sync::State::decode(bytes).map_err(|e| ReplicaError::Malformed(e.to_string()))
    }
}
