//! The replicated map under the partial ledger, behind a narrow trait, and
//! its automerge implementation.
//!
//! [`Replica`] is the seam where another set reconciliation (for example a
//! range-based one) could replace automerge: the ledger only ever asks a
//! replica to add values under keys, list values by key or prefix, save and
//! load itself, and exchange opaque reconciliation messages with a peer,
//! each of which it can inspect *before* applying it.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};

use crate::encoding::Encode;

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
    /// Every `(key, value)` pair this replica's own writer put (what a
    /// rotation writes again, protocol.md 9.8).
    fn own_entries(&self) -> Vec<KeyValue>;
    /// Every key with its values in byte order, the replica given up (a
    /// rotation moves them rather than copying them).
    fn into_map(self) -> BTreeMap<String, Vec<Vec<u8>>> {
        self.scan("").into_iter().collect()
    }
    /// If merges left more than `max` concurrent heads, joins them with one
    /// empty change. (A change depends on every head there is when it is
    /// made, so a node that mostly merges would otherwise list one hash per
    /// writer it heard from in its next change.)
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
    /// What changed since the last `save` or `save_incremental`. A
    /// replica may leave peers' latest changes for a later save (peers send
    /// them again, 9.7); its own are always in it.
    fn save_incremental(&mut self) -> Vec<u8>;
    /// Whether this replica's own writer made a change since the last
    /// `save`, `save_incremental` or `load`. Such a change must be stored
    /// before a peer can receive it: a replica loaded without it would
    /// make another change under the same sequence number (9.7).
    fn has_unsaved_own_writes(&self) -> bool;
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

/// The nearest keys of `map` below and above `key` that start with
/// `prefix` (what [`Replica::neighbours`] answers, for any map by key).
pub(crate) fn nearest_keys<V>(
    map: &BTreeMap<String, V>,
    prefix: &str,
    key: &str,
) -> (Option<String>, Option<String>) {
    use core::ops::Bound::{Excluded, Unbounded};
    let below = map
        .range::<str, _>((Unbounded, Excluded(key)))
        .next_back()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(prefix))
        .cloned();
    let above = map
        .range::<str, _>((Excluded(key), Unbounded))
        .next()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(prefix))
        .cloned();
    (below, above)
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
    /// The pairs this replica's own writer put into the document (few: a
    /// node writes what it was paid and the proofs it found).
    own: Vec<KeyValue>,
    /// Heads as of the last save, for incremental saves.
    saved_heads: Vec<automerge::ChangeHash>,
    /// The own writer's last sequence number as of the last save or load.
    saved_own_seq: u64,
    /// The document's root map as plain memory: every key with its values
    /// in byte order. The ledger reads it on every entry it checks;
    /// automerge's own look-up (a seek through its op columns) cost more
    /// than applying the change. Kept equal to the document and the
    /// staged changes: local writes go into both, and a peer's units
    /// enter it when staged or when automerge applies them (see `queued`).
    map: BTreeMap<String, Vec<Vec<u8>>>,
    /// Units of peers' messages automerge holds back for missing
    /// dependencies, with the pairs they add: they enter `map` once
    /// automerge has applied them.
    queued: HashMap<UnitId, Vec<KeyValue>>,
    /// Every applied change, by writer: what the replica's clock is made
    /// of, and where reconciliation finds what a peer lacks.
    writers: BTreeMap<Vec<u8>, Writer>,
    /// The bytes of the changes most recently received or read, to send on
    /// without reading them from the document again.
    recent: Recent,
    /// How many times changes held back were dropped (see
    /// [`ClockMessage::resend`]).
    purges: u64,
    /// Peers' changes checked and taken (in `map`, in the clock, sent on
    /// to other peers) but not yet applied to the document, in arrival
    /// order. automerge's apply walks every key of the root map once per
    /// call, whatever the number of changes, so the replica applies many
    /// at once: see [`AutomergeReplica::stage_limit`].
    staged: Vec<automerge::Change>,
    /// `staged` by change hash (its position).
    staged_at: HashMap<ChangeHash, usize>,
    /// The bytes of the staged changes.
    staged_bytes: usize,
}

/// Fewest staged changes before the replica applies them (see
/// [`AutomergeReplica::stage_limit`]).
const STAGE_MIN: usize = 64;
/// Most staged changes: bounds the memory they hold and what a node that
/// stops before its next save receives again from its peers.
const STAGE_MAX: usize = 8_192;
/// Most bytes of staged changes (until applied, their entries are held
/// twice: in the parsed changes and in the replica's map).
const STAGE_MAX_BYTES: usize = 16 << 20;

/// Most changes whose bytes a replica keeps at hand ([`Recent`]), and
/// most bytes they may take. Peers mostly lack what is new, so most
/// changes are sent on from here.
const RECENT_CHANGES: usize = 2_048;
const RECENT_BYTES: usize = 8 << 20;

/// Most changes read from the document for one message.
const MAX_READ_AT_ONCE: usize = 4_096;

/// A bounded memory of change bytes, oldest forgotten first.
#[derive(Debug, Default)]
struct Recent {
    bytes: HashMap<ChangeHash, Vec<u8>>,
    order: std::collections::VecDeque<ChangeHash>,
    total: usize,
}

impl Recent {
    fn get(&self, hash: &ChangeHash) -> Option<&[u8]> {
        self.bytes.get(hash).map(Vec::as_slice)
    }

    fn remember(&mut self, hash: ChangeHash, bytes: Vec<u8>) {
        if self.bytes.contains_key(&hash) {
            return;
        }
        self.total += bytes.len();
        self.bytes.insert(hash, bytes);
        self.order.push_back(hash);
        while self.order.len() > RECENT_CHANGES || self.total > RECENT_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.bytes.remove(&old) {
                self.total -= b.len();
            }
        }
    }
}

/// The applied changes of one writer (automerge actor).
#[derive(Debug, Default)]
struct Writer {
    /// By sequence number: the change's hash and its first operation's
    /// counter (a change's counter is above every counter of the changes
    /// it depends on, so sorting by it puts causes first).
    changes: BTreeMap<u64, (ChangeHash, u64)>,
    /// The last operation counter of the highest change held (its next
    /// change must start above it: see `in_writer_order`).
    last_max_op: u64,
    /// The highest `n` such that changes `1..=n` are all held: the
    /// writer's entry in the clock.
    upto: u64,
    /// The writer's bucket (see [`ClockMessage::covers`]), as a bit.
    bucket: u32,
    /// The highest sequence number held.
    last: u64,
}

impl Writer {
    fn add(&mut self, seq: u64, hash: ChangeHash, start_op: u64, max_op: u64) {
        // A second change under one (writer, sequence number) is a forked
        // writer; the first one stays (automerge refuses the second).
        self.changes.entry(seq).or_insert((hash, start_op));
        if seq >= self.last {
            self.last = seq;
            self.last_max_op = max_op;
        }
        while self.changes.contains_key(&(self.upto + 1)) {
            self.upto += 1;
        }
    }
}

/// Largest total of change bytes in one reconciliation message: what does
/// not fit goes in the next one, so a ledger of any size syncs in messages
/// of bounded size, and a cut link loses at most one message's worth.
pub const MAX_CHANGE_BYTES: usize = 1 << 20;

/// Longest writer (actor) id accepted in a peer's clock or change.
pub const MAX_ACTOR_LEN: usize = 64;

/// Most writers a peer's clock may list.
pub const MAX_CLOCK_WRITERS: usize = 1 << 16;

/// Most changes a peer may ask for in one message.
pub const MAX_NEED: usize = 16_384;

/// Most writers whose ancestry one change of a message is followed
/// through (beyond that, its writer's later changes in the message are
/// left out for the next round).
const MAX_TRACKED_WRITERS: usize = 1_024;

/// Buckets a clock is summarised in (see [`ClockMessage::summary`]).
pub const CLOCK_BUCKETS: usize = 32;

/// Every bucket, as a bit set.
const ALL_BUCKETS: u32 = u32::MAX;

/// A replica with at most this many writers sends its whole clock at once
/// instead of a summary (the clock is then about as small as a summary).
pub const SMALL_CLOCK: usize = 16;

/// One reconciliation message of [`AutomergeReplica`] (the payload of a
/// `Reconcile` sync message): what the sender holds, as a clock or a
/// summary of one, and the changes it believes the receiver lacks.
///
/// The clock is a version vector, as in Yjs' state vectors: each automerge
/// writer numbers its changes 1, 2, 3, ... and each change depends on its
/// writer's previous one, so "changes `1..=n` of writer `w`" for every
/// writer names a set closed under dependencies: everything a replica
/// holds, in a few bytes per writer however long its history. With many
/// writers even that adds up, so a replica first sends a summary (a digest
/// per bucket of writers) and then the entries of the buckets that differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockMessage {
    /// Empty, or for each of the [`CLOCK_BUCKETS`] buckets the first 8
    /// bytes of `H("meshpay/v1/clock-bucket", entries)` over the sender's
    /// clock entries in that bucket, in actor order, each as
    /// `u8(len) || actor || u64_le(n)`.
    pub summary: Vec<[u8; 8]>,
    /// Bit `b` set: `clock` lists every entry of the sender's clock in
    /// bucket `b` (a writer's bucket is the first byte of SHA-256 of its
    /// actor id, modulo [`CLOCK_BUCKETS`]).
    pub covers: u32,
    /// Clock entries in the covered buckets: the writer's actor id and the
    /// highest `n` such that the sender holds that writer's changes
    /// `1..=n`. Sorted by actor id, each once, `n >= 1`.
    pub clock: Vec<(Vec<u8>, u64)>,
    /// Changes the sender holds back because they depend on these, which
    /// it lacks: the receiver sends them whether or not it sent them
    /// before. (An honest sender never leaves a dependency out, but the
    /// receiver may have dropped what waited for one, 9.4.)
    pub need: Vec<[u8; 32]>,
    /// The sender dropped changes it held back (9.4) since it last wrote
    /// to the receiver: the receiver forgets which changes it sent in this
    /// session and sends again whatever the sender's clock lacks.
    pub resend: bool,
    /// Changes the sender believes the receiver lacks, causes before
    /// effects, each one automerge change in automerge's storage encoding.
    pub changes: Vec<Vec<u8>>,
}

impl Encode for ClockMessage {
    const KIND: &'static str = "reconciliation message";
}

/// A [`ClockMessage`] parsed and checked.
pub struct ParsedClock {
    summary: Option<[[u8; 8]; CLOCK_BUCKETS]>,
    covers: u32,
    clock: BTreeMap<Vec<u8>, u64>,
    need: Vec<ChangeHash>,
    resend: bool,
    /// Some changes were left out (see `in_writer_order`).
    left_out: bool,
    changes: Vec<automerge::Change>,
}

/// A writer's bucket, as a bit: the first byte of SHA-256 of its actor
/// id, modulo [`CLOCK_BUCKETS`]. (A hash, because actor ids need not be
/// random: the simulator's and the tests' are not.)
fn bucket_bit(actor: &[u8]) -> u32 {
    use sha2::Digest as _;
    let first = sha2::Sha256::digest(actor)[0];
    1 << (usize::from(first) % CLOCK_BUCKETS)
}

/// What one side of a session knows about its peer. Nothing of it outlives
/// the session: the peer's clock comes again in its first messages.
#[derive(Debug, Clone, Default)]
pub struct ClockPeer {
    /// The peer's clock entries as far as known: in the buckets of
    /// `known`.
    theirs: BTreeMap<Vec<u8>, u64>,
    /// Buckets of the peer's clock this side knows: sent by the peer, or
    /// equal to this side's by the peer's summary.
    known: u32,
    /// Buckets whose entries this side has sent.
    told: u32,
    /// The peer's summary, not yet compared.
    their_summary: Option<[[u8; 8]; CLOCK_BUCKETS]>,
    /// Buckets the peer sent whose entries this side owes in return.
    owed: u32,
    /// Changes sent to the peer in this session (it may not have said so
    /// in a clock yet).
    sent: HashSet<ChangeHash>,
    /// Changes the peer asked for in its latest message.
    their_need: Vec<ChangeHash>,
    /// Changes this side asked the peer for in this session.
    asked: HashSet<ChangeHash>,
    /// Whether this side's clock or summary went to the peer.
    announced: bool,
    /// The replica's count of purges when this side last wrote to the
    /// peer.
    purges: u64,
}

impl ClockPeer {
    /// A peer nothing is known about.
    pub fn new() -> Self {
        Self::default()
    }
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

/// Adds `value` to a key's values, kept in byte order and without
/// repeats (two nodes that wrote the same value concurrently leave two
/// equal values in automerge: one entry).
fn add_value(values: &mut Vec<Vec<u8>>, value: Vec<u8>) {
    if let Err(at) = values.binary_search(&value) {
        values.insert(at, value);
    }
}

/// `Automerge::load`, with a panic inside automerge turned into an error.
/// automerge 0.12 panics on some damaged documents whose checksums are
/// right (in hexane's column decoding: `proto/tests/hostile_changes.rs`);
/// a damaged file must give a clear error, not bring the node down. The
/// load builds a new document from the bytes and touches nothing else,
/// so nothing is left half-changed by the unwinding.
fn load_doc(bytes: &[u8]) -> Result<Automerge, ReplicaError> {
    match std::panic::catch_unwind(|| Automerge::load(bytes)) {
        Ok(loaded) => loaded.map_err(|e| ReplicaError::Load(e.to_string())),
        Err(_) => Err(ReplicaError::Load(
            "automerge panicked while decoding the document".into(),
        )),
    }
}

/// Whether a peer's change is byte for byte what automerge itself encodes
/// for its contents. automerge 0.12 applies a change with the right
/// checksum whatever its encoding, but a document holding one encoded
/// otherwise no longer loads: the load encodes every change again and its
/// hash no longer matches ("mismatching heads"). Honest writers' changes
/// always pass. (A pure function of the bytes, which the change hash
/// names: remembered when a simulator turned the memo on.)
fn canonical(change: &automerge::Change) -> bool {
    crate::verify_memo::canonical(&change.hash().0, || {
        automerge::Change::from(change.decode()).raw_bytes() == change.raw_bytes()
    })
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
            own: Vec::new(),
            saved_heads,
            saved_own_seq: 0,
            map: BTreeMap::new(),
            queued: HashMap::new(),
            writers: BTreeMap::new(),
            recent: Recent::default(),
            purges: 0,
            staged: Vec::new(),
            staged_at: HashMap::new(),
            staged_bytes: 0,
        };
        replica.reread_map();
        replica.reindex_writers();
        replica.own = replica.doc_own_entries();
        replica
    }

    /// The own writer's last sequence number (0 before its first change).
    fn own_seq(&self) -> u64 {
        self.writers
            .get(self.doc.get_actor().to_bytes())
            .map_or(0, |w| w.last)
    }

    /// Lists the document's changes by writer again (after a load or a
    /// merge).
    fn reindex_writers(&mut self) {
        self.writers.clear();
        let metas: Vec<_> = self
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| {
                let ops = (m.start_op, m.max_op);
                (m.actor.to_bytes().to_vec(), m.seq, m.hash, ops)
            })
            .collect();
        for (actor, seq, hash, ops) in metas {
            self.add_to_writer(actor, seq, hash, ops);
        }
    }

    /// Lists a change under its writer; `ops` are its first and last
    /// operation counters.
    fn add_to_writer(&mut self, actor: Vec<u8>, seq: u64, hash: ChangeHash, ops: (u64, u64)) {
        self.writers
            .entry(actor)
            .or_insert_with_key(|actor| Writer {
                bucket: bucket_bit(actor),
                ..Writer::default()
            })
            .add(seq, hash, ops.0, ops.1);
    }

    /// Adds a change the document has just applied or committed to the
    /// writers' index; whether this replica's own writer wrote it.
    fn record(&mut self, hash: ChangeHash) -> bool {
        let (actor, seq, ops) = if let Some(meta) = self.doc.get_change_meta_by_hash(&hash) {
            let ops = (meta.start_op, meta.max_op);
            (meta.actor.to_bytes().to_vec(), meta.seq, ops)
        } else if let Some(&at) = self.staged_at.get(&hash) {
            let c = &self.staged[at];
            let ops = (c.start_op().get(), c.max_op());
            (c.actor_id().to_bytes().to_vec(), c.seq(), ops)
        } else {
            return false;
        };
        let own = actor == self.doc.get_actor().to_bytes();
        self.add_to_writer(actor, seq, hash, ops);
        own
    }

    /// How many staged changes the replica holds before it applies them:
    /// an eighth of the keys, within [`STAGE_MIN`] and [`STAGE_MAX`]. One
    /// apply walks every key (see `staged`), so each change then costs
    /// about eight keys' walk, whatever the document's size.
    fn stage_limit(&self) -> usize {
        (self.map.len() / 8).clamp(STAGE_MIN, STAGE_MAX)
    }

    /// How many peers' changes are staged, not applied to the document yet.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Applies the staged changes to the document. Before a save, a merge,
    /// and whenever the document itself must hold everything taken.
    fn apply_staged(&mut self) -> Result<(), ReplicaError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.staged_at.clear();
        self.staged_bytes = 0;
        let staged = std::mem::take(&mut self.staged);
        let applied = self.doc.apply_changes(staged);
        if let Err(e) = applied {
            // Not expected: every staged change was checked as automerge
            // checks it (writer order, dependencies held). Should it
            // happen, the map and the clock are read from the document
            // again, so that they claim nothing it lacks; peers send the
            // rest again.
            self.reread_map();
            self.reindex_writers();
            self.own = self.doc_own_entries();
            return Err(ReplicaError::Apply(e.to_string()));
        }
        Ok(())
    }

    /// Whether a peer's message can be staged rather than applied: nothing
    /// is held back for missing dependencies, every dependency of each new
    /// change is held or in the message (a message lists changes by first
    /// operation counter, and an empty change shares its counter with the
    /// changes that follow it, so a cause may come after its effect), and
    /// no change is this replica's own writer's (a change of its own coming
    /// back must be in the document before its writer writes again, or the
    /// next write would reuse its sequence number).
    fn can_stage(&self, changes: &[automerge::Change]) -> bool {
        if !self.queued.is_empty() {
            return false;
        }
        let me = self.doc.get_actor();
        let new: Vec<&automerge::Change> =
            changes.iter().filter(|c| !self.holds_change(c)).collect();
        if new.iter().any(|c| c.actor_id() == me) {
            return false;
        }
        let in_message: HashSet<ChangeHash> = new.iter().map(|c| c.hash()).collect();
        new.iter().flat_map(|c| c.deps()).all(|d| {
            in_message.contains(d)
                || self.staged_at.contains_key(d)
                || self.doc.get_change_meta_by_hash(d).is_some()
        })
    }

    /// The bytes of a change at hand: received or read recently, or staged.
    fn at_hand(&self, hash: &ChangeHash) -> Option<&[u8]> {
        self.recent.get(hash).or_else(|| {
            self.staged_at
                .get(hash)
                .map(|&at| self.staged[at].raw_bytes())
        })
    }

    /// The replica's clock entries in the buckets of `buckets` (see
    /// [`ClockMessage::clock`]).
    pub fn clock(&self, buckets: u32) -> Vec<(Vec<u8>, u64)> {
        self.writers
            .iter()
            .filter(|(_, w)| w.upto > 0 && w.bucket & buckets != 0)
            .map(|(a, w)| (a.clone(), w.upto))
            .collect()
    }

    /// The replica's clock summary (see [`ClockMessage::summary`]).
    pub fn summary(&self) -> [[u8; 8]; CLOCK_BUCKETS] {
        use sha2::Digest as _;
        let mut hashers: Vec<sha2::Sha256> = (0..CLOCK_BUCKETS)
            .map(|_| {
                let mut h = sha2::Sha256::new();
                h.update(b"meshpay/v1/clock-bucket\0");
                h
            })
            .collect();
        for (actor, w) in self.writers.iter().filter(|(_, w)| w.upto > 0) {
            let h = &mut hashers[w.bucket.trailing_zeros() as usize];
            // Actor ids are at most MAX_ACTOR_LEN (64) bytes.
            h.update([actor.len() as u8]);
            h.update(actor);
            h.update(w.upto.to_le_bytes());
        }
        let mut out = [[0u8; 8]; CLOCK_BUCKETS];
        for (o, h) in out.iter_mut().zip(hashers) {
            o.copy_from_slice(&h.finalize()[..8]);
        }
        out
    }

    /// The number of writers in the clock.
    fn clock_len(&self) -> usize {
        self.writers.values().filter(|w| w.upto > 0).count()
    }

    /// The changes a peer with clock `theirs` lacks, less those in `sent`,
    /// causes first, up to [`MAX_CHANGE_BYTES`] (at least one change), as
    /// `(hash, bytes)`. Changes in `need` go whether sent before or not.
    fn changes_for(
        &mut self,
        theirs: &BTreeMap<Vec<u8>, u64>,
        sent: &HashSet<ChangeHash>,
        need: &HashSet<ChangeHash>,
    ) -> Vec<(ChangeHash, Vec<u8>)> {
        let mut lacking: Vec<(u64, &[u8], u64, ChangeHash)> = Vec::new();
        // Both maps are sorted by actor: one walk through the two.
        let mut their_iter = theirs.iter().peekable();
        for (actor, writer) in &self.writers {
            while their_iter.next_if(|(a, _)| *a < actor).is_some() {}
            let have = their_iter
                .next_if(|(a, _)| *a == actor)
                .map_or(0, |(_, n)| *n);
            if writer.last <= have {
                continue;
            }
            for (seq, (hash, start_op)) in writer.changes.range(have.saturating_add(1)..) {
                if !sent.contains(hash) || need.contains(hash) {
                    lacking.push((*start_op, actor, *seq, *hash));
                }
            }
        }
        // Causes before effects: a change's first counter exceeds every
        // counter of the changes it depends on. (Two changes can share a
        // counter when one of them is empty; should the cut below fall
        // between them, the effect waits for its cause in the next
        // message.)
        lacking.sort_unstable();
        let lacking: Vec<ChangeHash> = lacking.into_iter().map(|(.., h)| h).collect();
        // Recent changes are at hand; the others are read from the
        // document in one pass (automerge finds a change's operations by
        // scanning its op columns, so one read per change would cost a
        // scan each).
        let mut picked = Vec::new();
        let mut known = 0usize;
        let mut missing = Vec::new();
        for hash in lacking {
            if known > MAX_CHANGE_BYTES || missing.len() >= MAX_READ_AT_ONCE {
                break;
            }
            match self.at_hand(&hash) {
                Some(bytes) => known += bytes.len(),
                None => missing.push(hash),
            }
            picked.push(hash);
        }
        let mut read: HashMap<ChangeHash, Vec<u8>> = HashMap::new();
        if !missing.is_empty()
            && let Ok(bundle) = self.doc.bundle(missing.iter().copied())
        {
            for mut change in bundle.to_changes().unwrap_or_default() {
                // Compressed when that is smaller, as automerge stores it.
                read.insert(change.hash(), change.bytes().into_owned());
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for hash in picked {
            let change = match self.at_hand(&hash) {
                Some(change) => change.to_vec(),
                // A change the document could not give back ends the
                // message here, so that it stays causally closed; the peer
                // asks for it (`need`) if something waits for it.
                None => match read.remove(&hash).or_else(|| {
                    self.doc
                        .get_change_by_hash(&hash)
                        .map(|mut c| c.bytes().into_owned())
                }) {
                    Some(change) => change,
                    None => break,
                },
            };
            if !out.is_empty() && bytes + change.len() > MAX_CHANGE_BYTES {
                break;
            }
            bytes += change.len();
            out.push((hash, change));
        }
        let missing: HashSet<ChangeHash> = missing.into_iter().collect();
        for (hash, change) in &out {
            if missing.contains(hash) {
                self.recent.remember(*hash, change.clone());
            }
        }
        out
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
        if self.holds_change(change) {
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

    /// The units and changes of a message that may reach automerge, and
    /// whether any was left out. automerge 0.12 panics on a change whose
    /// writer's previous change it has not applied, even when the change's
    /// declared dependencies are all there; honest changes always descend
    /// from their writer's previous change, hostile ones need not. So,
    /// walking the message in order, a change not held is taken only if
    /// its writer's previous change is held, or is earlier in the message
    /// and an ancestor of it through the message's changes. A sequence
    /// number already used refuses the message (a forked writer); any
    /// other change is left out, to come again (`resend`).
    #[allow(clippy::type_complexity)]
    fn in_writer_order(
        &self,
        parsed: Vec<automerge::Change>,
    ) -> Result<(Vec<Unit>, Vec<automerge::Change>, bool), ReplicaError> {
        // Per writer with a change here not held yet: what the replica
        // holds of it (looked up once), the next sequence number expected,
        // the last operation counter of its latest change taken (held or
        // from the message), and (for a writer with more than one such
        // change, the only ones whose sequence numbers need tracking
        // through ancestry) a small index.
        struct InMessage {
            held_upto: u64,
            new_changes: usize,
            next: u64,
            max_op: u64,
            tracked: Option<u32>,
        }
        let mut writers: HashMap<&[u8], InMessage> = HashMap::new();
        let held: Vec<bool> = parsed.iter().map(|c| self.holds_change(c)).collect();
        for (c, _) in parsed.iter().zip(&held).filter(|(_, h)| !**h) {
            let actor = c.actor_id().to_bytes();
            writers
                .entry(actor)
                .or_insert_with(|| {
                    let held = self.writers.get(actor);
                    let held_upto = held.map_or(0, |w| w.upto);
                    InMessage {
                        held_upto,
                        new_changes: 0,
                        next: held_upto + 1,
                        // The held change the next one follows, if the
                        // replica holds the writer's changes without a gap.
                        max_op: held
                            .filter(|w| w.last == held_upto)
                            .map_or(0, |w| w.last_max_op),
                        tracked: None,
                    }
                })
                .new_changes += 1;
        }
        // (The order of the indices decides nothing: they are only
        // looked up.)
        for (i, w) in writers
            .values_mut()
            .filter(|w| w.new_changes > 1)
            .enumerate()
        {
            w.tracked = Some(i as u32);
        }
        // For each change taken: per tracked writer (by index, sorted),
        // the highest sequence number among its ancestors in the message
        // (itself included).
        let mut ancestry: HashMap<ChangeHash, Vec<(u32, u64)>> = HashMap::new();
        let mut taken: Vec<bool> = Vec::with_capacity(parsed.len());
        let mut units = Vec::new();
        let mut left_out = false;
        for (change, held) in parsed.iter().zip(held) {
            if held {
                // Held: automerge skips it; its bytes are kept at hand.
                taken.push(true);
                continue;
            }
            let seq = change.seq();
            let Some(w) = writers.get_mut(change.actor_id().to_bytes()) else {
                taken.push(false);
                continue;
            };
            let held_upto = w.held_upto;
            if seq < w.next {
                return Err(ReplicaError::Malformed(format!(
                    "a second change under sequence number {seq} of one writer"
                )));
            }
            let mut mine: Vec<(u32, u64)> = Vec::new();
            for d in change.deps() {
                if let Some(theirs) = ancestry.get(d) {
                    mine.extend_from_slice(theirs);
                }
            }
            // One pair per writer, the highest sequence number.
            mine.sort_unstable();
            mine.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    earlier.1 = earlier.1.max(later.1);
                }
                same
            });
            let in_ancestry = |i: u32| {
                mine.binary_search_by_key(&i, |p| p.0)
                    .ok()
                    .map(|at| mine[at].1)
            };
            let previous_ok = seq == held_upto + 1
                || (seq == w.next
                    && w.tracked
                        .and_then(in_ancestry)
                        .is_some_and(|s| s + 1 == seq));
            if !previous_ok {
                left_out = true;
                taken.push(false);
                continue;
            }
            // A change whose operations reuse a counter of its writer's
            // previous change is refused (automerge 0.12 applies it, and
            // then neither saves nor loads the document correctly).
            if change.start_op().get() <= w.max_op {
                return Err(ReplicaError::Malformed(format!(
                    "change {seq} of a writer starts at operation {} of its change {}",
                    change.start_op(),
                    seq - 1
                )));
            }
            if !canonical(change) {
                return Err(ReplicaError::Malformed(
                    "a change not in automerge's own encoding".into(),
                ));
            }
            w.max_op = change.max_op();
            w.next = seq + 1;
            if let Some(i) = w.tracked {
                match mine.binary_search_by_key(&i, |p| p.0) {
                    Ok(at) => mine[at].1 = seq,
                    Err(at) => mine.insert(at, (i, seq)),
                }
            }
            if mine.len() <= MAX_TRACKED_WRITERS {
                ancestry.insert(change.hash(), mine);
            }
            units.extend(self.unit(change)?);
            taken.push(true);
        }
        let changes = parsed
            .into_iter()
            .zip(taken)
            .filter_map(|(c, t)| t.then_some(c))
            .collect();
        Ok((units, changes, left_out))
    }

    /// Whether `change` is applied: its writer's entry at its sequence
    /// number is this change (an index look-up; automerge's own builds
    /// the change's metadata).
    fn holds_change(&self, change: &automerge::Change) -> bool {
        self.writers
            .get(change.actor_id().to_bytes())
            .and_then(|w| w.changes.get(&change.seq()))
            .is_some_and(|(h, _)| *h == change.hash())
    }

    /// The pairs of the document's changes by its own writer, read from
    /// the document (after a load or a merge; local writes add to `own`).
    fn doc_own_entries(&self) -> Vec<KeyValue> {
        let me = self.doc.get_actor().to_bytes();
        let Some(writer) = self.writers.get(me) else {
            return Vec::new();
        };
        let hashes: Vec<ChangeHash> = writer.changes.values().map(|(h, _)| *h).collect();
        let mut out = Vec::new();
        // One pass over the document for all of them (see `changes_for`).
        let changes = match self.doc.bundle(hashes.iter().copied()) {
            Ok(bundle) => bundle.to_changes().unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let changes = if changes.len() == hashes.len() {
            changes
        } else {
            hashes
                .iter()
                .filter_map(|h| self.doc.get_change_by_hash(h))
                .collect()
        };
        for change in &changes {
            // The replica's own changes hold ledger writes only.
            let _ = ledger_ops(change, &mut out);
        }
        out
    }

    /// The automerge document (for measurements). Peers' changes still
    /// staged are not in it yet; a full save applies them.
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }
}

impl Replica for AutomergeReplica {
    type PeerState = ClockPeer;
    type Message = ParsedClock;

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
        nearest_keys(&self.map, prefix, key)
    }

    fn put_all(&mut self, entries: &[(String, Vec<u8>)]) {
        if entries.is_empty() {
            return;
        }
        // A write of its own may rest on staged entries (a payment's header
        // on a peer's allowance, which it then does not write again): they
        // go into the document first, so that the write depends on them and
        // every save that holds it holds them. (Should applying them fail,
        // the map forgets them and the write takes what it needs along.)
        let _ = self.apply_staged();
        let mut tx = self.doc.transaction();
        let mut any = false;
        for (key, value) in entries {
            if !self.map.contains_key(key) {
                // Putting into the root map with a string key cannot fail.
                let _ = tx.put(ROOT, key.as_str(), ScalarValue::Bytes(value.clone()));
                self.map.insert(key.clone(), vec![value.clone()]);
                self.own.push((key.clone(), value.clone()));
                any = true;
            }
        }
        if any {
            // Time 0: the protocol has no use for automerge's wall-clock
            // stamp, and proto reads no clock.
            let (hash, _) =
                tx.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
            if let Some(hash) = hash {
                self.record(hash);
            }
        } else {
            tx.rollback();
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn own_entries(&self) -> Vec<KeyValue> {
        self.own.clone()
    }

    fn into_map(self) -> BTreeMap<String, Vec<Vec<u8>>> {
        self.map
    }

    fn collapse_heads(&mut self, max: usize) {
        if self.doc.get_heads().len() > max {
            let hash = self
                .doc
                .empty_commit(automerge::transaction::CommitOptions::default().with_time(0));
            self.record(hash);
        }
    }

    fn sync_message(&mut self, peer: &mut ClockPeer) -> Option<Vec<u8>> {
        let mut summary = Vec::new();
        let mut covers = 0u32;
        let mut resend = false;
        if !peer.announced {
            peer.purges = self.purges;
        } else if peer.purges != self.purges {
            // Changes this side held back, some perhaps sent by the peer,
            // are gone: the peer must send them again, and whatever was
            // asked for may be asked for again.
            peer.purges = self.purges;
            resend = true;
            peer.told = 0;
            peer.asked.clear();
            covers = ALL_BUCKETS;
        }
        if !peer.announced {
            if self.clock_len() <= SMALL_CLOCK {
                covers = ALL_BUCKETS;
            } else {
                summary = self.summary().to_vec();
            }
        }
        if let Some(theirs) = peer.their_summary.take() {
            // Buckets equal to ours are known: the peer holds what we hold
            // there (as of now: our clock only grows). The entries of the
            // others go to the peer, which answers with its own.
            let mine = self.summary();
            let mut equal = 0u32;
            for (b, (t, m)) in theirs.iter().zip(mine.iter()).enumerate() {
                if t == m {
                    equal |= 1 << b;
                } else {
                    covers |= 1 << b;
                }
            }
            let learnt = equal & !peer.known;
            if learnt != 0 {
                peer.theirs.extend(self.clock(learnt));
                peer.known |= learnt;
            }
        }
        covers |= std::mem::take(&mut peer.owed);
        covers &= !peer.told;
        peer.told |= covers;
        let their_need: HashSet<ChangeHash> =
            std::mem::take(&mut peer.their_need).into_iter().collect();
        let changes = if peer.known == ALL_BUCKETS {
            self.changes_for(&peer.theirs, &peer.sent, &their_need)
        } else {
            Vec::new()
        };
        let need: Vec<ChangeHash> = self
            .doc
            .get_missing_deps(&[])
            .into_iter()
            .filter(|h| !peer.asked.contains(h))
            .collect();
        if !resend
            && summary.is_empty()
            && covers == 0
            && changes.is_empty()
            && need.is_empty()
            && peer.announced
        {
            return None;
        }
        peer.announced = true;
        peer.asked.extend(need.iter().copied());
        peer.sent.extend(changes.iter().map(|(h, _)| *h));
        let message = ClockMessage {
            summary,
            covers,
            clock: if covers == 0 {
                Vec::new()
            } else {
                self.clock(covers)
            },
            need: need.iter().map(|h| h.0).collect(),
            resend,
            changes: changes.into_iter().map(|(_, c)| c).collect(),
        };
        Some(message.encode())
    }

    fn sync_message_after_peer_done(&mut self, peer: &mut ClockPeer) -> Option<Vec<u8>> {
        // Nothing is awaited from the peer: what is left to send is what
        // did not fit in the earlier messages.
        self.sync_message(peer)
    }

    fn inspect(&self, message: &[u8]) -> Result<Inspected<Self>, ReplicaError> {
        let malformed = ReplicaError::Malformed;
        let parsed = ClockMessage::decode_limited(message, message.len())
            .map_err(|e| malformed(e.to_string()))?;
        let summary = match parsed.summary.len() {
            0 => None,
            CLOCK_BUCKETS => {
                let mut s = [[0u8; 8]; CLOCK_BUCKETS];
                s.copy_from_slice(&parsed.summary);
                Some(s)
            }
            n => {
                return Err(malformed(format!(
                    "clock summary of {n} buckets (0 or {CLOCK_BUCKETS})"
                )));
            }
        };
        if parsed.clock.len() > MAX_CLOCK_WRITERS {
            return Err(malformed(format!(
                "clock of {} writers (at most {MAX_CLOCK_WRITERS})",
                parsed.clock.len()
            )));
        }
        if parsed.need.len() > MAX_NEED {
            return Err(malformed(format!(
                "asks for {} changes (at most {MAX_NEED})",
                parsed.need.len()
            )));
        }
        let mut clock = BTreeMap::new();
        for (actor, upto) in parsed.clock {
            if actor.is_empty() || actor.len() > MAX_ACTOR_LEN {
                return Err(malformed(format!(
                    "clock names a writer id of {} bytes (1 to {MAX_ACTOR_LEN})",
                    actor.len()
                )));
            }
            if upto == 0 {
                return Err(malformed("clock lists a writer at 0".into()));
            }
            if clock
                .last_key_value()
                .is_some_and(|(last, _): (&Vec<u8>, _)| *last >= actor)
            {
                return Err(malformed("clock not sorted by writer".into()));
            }
            if bucket_bit(&actor) & parsed.covers == 0 {
                return Err(malformed(
                    "clock entry outside the buckets it covers".into(),
                ));
            }
            clock.insert(actor, upto);
        }
        let mut parsed_changes = Vec::with_capacity(parsed.changes.len());
        for bytes in parsed.changes {
            // Parsing builds a new value from the bytes and nothing else,
            // so a panic inside automerge (see `load_doc`) is only a
            // malformed change.
            let change = std::panic::catch_unwind(|| automerge::Change::from_bytes(bytes))
                .map_err(|_| malformed("change: automerge panicked while decoding it".into()))?
                .map_err(|e| malformed(format!("change: {e}")))?;
            let actor = change.actor_id().to_bytes();
            if actor.is_empty() || actor.len() > MAX_ACTOR_LEN {
                return Err(malformed(format!(
                    "change by a writer id of {} bytes (1 to {MAX_ACTOR_LEN})",
                    actor.len()
                )));
            }
            if !change.other_actor_ids().is_empty() {
                // Ledger writes reference no other writer's operations.
                return Err(ReplicaError::ForbiddenOperation(
                    "change refers to other writers",
                ));
            }
            parsed_changes.push(change);
        }
        let (units, changes, left_out) = self.in_writer_order(parsed_changes)?;
        Ok(Inspected {
            units,
            size: message.len(),
            message: ParsedClock {
                summary,
                covers: parsed.covers,
                clock,
                need: parsed.need.into_iter().map(ChangeHash).collect(),
                resend: parsed.resend,
                left_out,
                changes,
            },
        })
    }

    fn inspect_saved(&self, bytes: &[u8]) -> Result<(Self, Vec<Unit>), ReplicaError> {
        let doc = load_doc(bytes)?;
        let mut units = Vec::new();
        for change in doc.get_changes(&[]) {
            units.extend(self.unit(&change)?);
        }
        Ok((AutomergeReplica::from_doc(doc, Vec::new()), units))
    }

    fn holds_unit(&self, id: &UnitId) -> bool {
        let hash = automerge::ChangeHash(*id);
        self.staged_at.contains_key(&hash) || self.doc.get_change_meta_by_hash(&hash).is_some()
    }

    fn drop_waiting_units(&mut self) {
        // The document is saved and loaded: it must hold the staged ones.
        let _ = self.apply_staged();
        let bytes = self.doc.save_with_options(NO_ORPHANS);
        let actor = self.doc.get_actor().clone();
        // Our own save always loads; should it not, keeping the document
        // as it is (queue included) is the safe failure.
        if let Ok(doc) = load_doc(&bytes) {
            self.doc = doc.with_actor(actor);
            self.queued.clear();
            self.purges += 1;
        }
    }

    fn merge_from(&mut self, mut other: Self) -> Result<(), ReplicaError> {
        // The map and the clock are read from the merged document.
        self.apply_staged()?;
        other.apply_staged()?;
        let merged = self
            .doc
            .merge(&mut other.doc)
            .map(|_| ())
            .map_err(|e| ReplicaError::Apply(e.to_string()));
        self.reread_map();
        self.reindex_writers();
        self.own = self.doc_own_entries();
        merged
    }

    fn apply(
        &mut self,
        peer: &mut ClockPeer,
        inspected: Inspected<Self>,
    ) -> Result<(), ReplicaError> {
        let ParsedClock {
            summary,
            covers,
            clock,
            need,
            resend,
            left_out,
            changes,
        } = inspected.message;
        let received: Vec<(ChangeHash, Vec<u8>)> = changes
            .iter()
            .map(|c| (c.hash(), c.raw_bytes().to_vec()))
            .collect();
        let applied = if self.can_stage(&changes) {
            for c in changes {
                if !self.holds_change(&c) && !self.staged_at.contains_key(&c.hash()) {
                    self.staged_at.insert(c.hash(), self.staged.len());
                    self.staged_bytes += c.raw_bytes().len();
                    self.staged.push(c);
                }
            }
            Ok(())
        } else {
            // automerge holds back what waits for a dependency; it must
            // see everything taken before.
            self.apply_staged().and_then(|()| {
                self.doc
                    .apply_changes(changes)
                    .map_err(|e| ReplicaError::Apply(e.to_string()))
            })
        };
        if applied.is_ok() {
            if summary.is_some() {
                peer.their_summary = summary;
            }
            if covers != 0 {
                // The peer's entries in these buckets, complete: they
                // replace what was known there. It waits for ours in turn.
                peer.theirs.retain(|a, _| bucket_bit(a) & covers == 0);
                peer.theirs.extend(clock);
                peer.known |= covers;
                peer.owed |= covers & !peer.told;
            }
            peer.their_need = need;
            if resend {
                peer.sent.clear();
            }
            if left_out {
                // Ask the peer, in the next message, to send again what it
                // believes sent: the changes left out among them.
                self.purges += 1;
            }
            for (hash, bytes) in received {
                self.recent.remember(hash, bytes);
            }
            for unit in inspected.units {
                self.queued.entry(unit.id).or_insert(unit.entries);
            }
        }
        // What automerge applied now, this message's units or ones held
        // back from earlier messages, enters the map and the clock.
        let ready: Vec<UnitId> = self
            .queued
            .keys()
            .filter(|id| self.holds_unit(id))
            .copied()
            .collect();
        for id in ready {
            if let Some(pairs) = self.queued.remove(&id) {
                // The node's own change coming back (its save lost it):
                // its pairs are the node's own again.
                if self.record(ChangeHash(id)) {
                    self.own.extend(pairs.iter().cloned());
                }
                self.add_to_map(pairs);
            }
        }
        if self.staged.len() >= self.stage_limit() || self.staged_bytes >= STAGE_MAX_BYTES {
            self.apply_staged()?;
        }
        applied
    }

    fn save(&mut self) -> Vec<u8> {
        // (On the unexpected failure the document is saved as it is.)
        let _ = self.apply_staged();
        self.saved_heads = self.doc.get_heads();
        self.saved_own_seq = self.own_seq();
        self.doc.save_with_options(NO_ORPHANS)
    }

    fn save_incremental(&mut self) -> Vec<u8> {
        let bytes = self.doc.save_after(&self.saved_heads);
        self.saved_heads = self.doc.get_heads();
        self.saved_own_seq = self.own_seq();
        bytes
    }

    fn has_unsaved_own_writes(&self) -> bool {
        self.own_seq() > self.saved_own_seq
    }

    fn load(bytes: &[u8], actor: &[u8]) -> Result<Self, ReplicaError> {
        let doc = load_doc(bytes)?;
        let saved_heads = doc.get_heads();
        let mut replica =
            AutomergeReplica::from_doc(doc.with_actor(Self::actor(actor)), saved_heads);
        replica.saved_own_seq = replica.own_seq();
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

    fn encode_peer_state(_: &ClockPeer) -> Vec<u8> {
        // Nothing about a peer outlives a session (see `ClockPeer`).
        Vec::new()
    }

    fn decode_peer_state(_: &[u8]) -> Result<ClockPeer, ReplicaError> {
        // Whatever was stored (including the automerge sync states that
        // earlier versions kept) describes nothing the next session needs.
        Ok(ClockPeer::new())
    }
}
