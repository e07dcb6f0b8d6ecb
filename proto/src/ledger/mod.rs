//! The partial ledger: every transfer header a node has heard of, with the
//! allowances that check them, conflict proofs, revocation lists and
//! settlement acknowledgements, held in a grow-only replicated map (an
//! automerge document by default).
//!
//! - Merge is set union, so it is commutative, associative and idempotent.
//! - Nothing enters unchecked: headers need a known allowance and the
//!   wallet's signature, allowances the issuer's, proofs must verify, lists
//!   and acknowledgements must be signed by a trusted issuer key. This holds
//!   for local inserts and for everything a peer sends, which is inspected
//!   before it is applied.
//! - A conflict (two headers of one allowance that cannot both be honest,
//!   or one invalid on its face) is found on local insert and on every
//!   merge, including automerge's own concurrent-write conflicts on one
//!   key, and recorded as a [`ConflictProof`].
//! - [`PartialLedger::advance`] starts a new document each epoch (a UTC
//!   day, [`EPOCH_SECS`]) without what settlement has acknowledged: the
//!   node writes back only the entries it wrote itself, and holds the rest
//!   aside, so documents stay the size of what is new and unsettled.

mod entry;
mod replica;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub use entry::{
    Entry, EntryError, EntryKind, allowance_key, header_key, headers_prefix, proofs_prefix,
};
pub use replica::{
    AutomergeReplica, CLOCK_BUCKETS, ClockMessage, ClockPeer, Inspected, KeyValue, MAX_ACTOR_LEN,
    MAX_CHANGE_BYTES, MAX_CLOCK_WRITERS, MAX_NEED, ParsedClock, Replica, ReplicaError, SMALL_CLOCK,
    Unit, UnitId,
};

use crate::allowance::{Allowance, AllowanceId, TrustStore};
use crate::conflict::{ConflictProof, ConflictProofError, detect, over_limit};
use crate::crypto::{BatchItem, Hash, PublicKey, verify_batch};
use crate::revocation::RevocationList;
use crate::settlement_ack::SettlementAck;
use crate::time::Timestamp;
use crate::transfer::{SignedHeader, TransferId};
use crate::validate::{MeshView, PaymentError, VerifiedAllowance};

/// Most concurrent heads a ledger keeps after a merge before it joins them
/// with an empty change; bounds the dependencies of its next change (the
/// heads at the time) to `MAX_HEADS * 32` bytes.
pub const MAX_HEADS: usize = 8;

/// Most units (automerge changes) a ledger holds back for missing
/// dependencies. Honest peers send changes causes first, and leave a
/// dependency out only when a message is cut between two changes that
/// share a counter, or the receiver dropped what waited; the next round
/// asks for it. A message that would hold back more is refused.
pub const MAX_WAITING_UNITS: usize = 16_384;

/// Length of an epoch in seconds: epoch `e` is the UTC day starting at
/// `e * EPOCH_SECS` (protocol.md 9.8). Every node rotates into the epoch of
/// its clock, so peers meet in the same epoch and share its document from
/// an empty start.
pub const EPOCH_SECS: u64 = 86_400;

/// How far past the newest issuer-signed time a ledger holds (an
/// allowance's issue, an acknowledgement, a revocation list) a rotation
/// judges what to drop, whatever the clock says (protocol.md 9.8).
pub const CLOCK_LEAD_SECS: u64 = 7 * 86_400;

/// The epoch a timestamp falls in.
pub fn epoch_of(t: Timestamp) -> u64 {
    t.0 / EPOCH_SECS
}

/// Most allowances whose proofs one `Urgent` message carries: the most
/// recently convicted (protocol.md 10.3).
pub const MAX_URGENT_PROOFS: usize = 32;

/// Why an entry was refused. The ledger is unchanged after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The value is not a well-formed entry for its key.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// A header or proof for an allowance the ledger does not hold.
    #[error("entry for unknown allowance {0}")]
    UnknownAllowance(AllowanceId),
    /// A header not signed by its allowance's wallet.
    #[error("header {allowance}/{seq} is not signed by the allowance's wallet")]
    BadHeaderSignature {
        /// The allowance.
        allowance: AllowanceId,
        /// The sequence number.
        seq: u32,
    },
    /// An allowance that fails the issuer checks.
    #[error("allowance refused: {0}")]
    Allowance(PaymentError),
    /// A conflict proof that proves nothing.
    #[error("conflict proof refused: {0}")]
    Proof(ConflictProofError),
    /// A revocation list or acknowledgement not signed by a trusted issuer.
    #[error("{0} not signed by a trusted issuer key")]
    UntrustedIssuer(&'static str),
    /// A second, different value under a key that holds one fact only (an
    /// allowance id, a revocation list version, an acknowledgement serial
    /// reused with other content).
    #[error("ledger key {0} already holds a different value")]
    KeyTaken(String),
    /// The replica refused or failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The message would leave more than [`MAX_WAITING_UNITS`] units
    /// waiting for dependencies that have not arrived.
    #[error("more than {MAX_WAITING_UNITS} changes waiting for missing dependencies")]
    TooManyWaiting,
}

/// How header signatures in a batch are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// One by one, strictly: the definition of a valid signature. For
    /// everything from outside (peers, imports, local inserts).
    Strict,
    /// One batch equation (about 3x faster, slightly more permissive, see
    /// [`verify_batch`]): for reloading what was strictly checked before.
    Batch,
}

/// The result of a local insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Added.
    New,
    /// Already held; nothing changed.
    Known,
    /// The header conflicts with what the ledger holds: it was not added;
    /// this proof was added instead (and should be spread first).
    Conflict(ConflictProof),
}

/// What [`PartialLedger::rotate_epoch`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Allowances, and the proofs against them, are kept until this long
    /// after they expire.
    pub expiry_grace_secs: u64,
    /// Settlement acknowledgements are kept this long after they were
    /// issued, so that a peer still on an older epoch cannot bring settled
    /// headers back.
    pub ack_retention_secs: u64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            expiry_grace_secs: 86_400,
            ack_retention_secs: 7 * 86_400,
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rotation {
    /// Entries carried into the new epoch.
    pub kept: usize,
    /// Of those, the entries written into the new document: the ones this
    /// node wrote itself in the old one (and the allowances they need).
    /// The others are held aside.
    pub written: usize,
    /// Entries left behind.
    pub dropped: usize,
}

/// The partial ledger of one node.
pub struct PartialLedger<R: Replica = AutomergeReplica> {
    replica: R,
    trust: TrustStore,
    actor: Vec<u8>,
    epoch: u64,
    allowances: BTreeMap<AllowanceId, VerifiedAllowance>,
    conflicted: BTreeSet<AllowanceId>,
    /// The allowances most recently convicted, oldest first, at most
    /// [`MAX_URGENT_PROOFS`]: whose proofs the `Urgent` message carries.
    recent_convictions: std::collections::VecDeque<AllowanceId>,
    revocations: Option<RevocationList>,
    acks: BTreeMap<u64, SettlementAck>,
    settled: HashSet<TransferId>,
    /// Sum of every entry's point: a multiset hash (see [`Entry`]).
    digest: curve25519_dalek::RistrettoPoint,
    entries: usize,
    /// Entries accepted from a peer whose automerge changes wait for
    /// missing dependencies: indexed once they become visible.
    pending: Vec<Checked>,
    /// Units the replica holds back for missing dependencies, with the
    /// entries that could not be checked yet (a header whose allowance has
    /// not arrived): checked when the unit becomes ready, before it is
    /// applied.
    waiting: HashMap<UnitId, Waiting>,
    /// Entries held but not in the replica, by key (values in byte
    /// order). Checked and acted on like the replica's (the allowance
    /// stands convicted, the list applies, headers are compared), but not
    /// written into the replica, and not part of the digest: they are
    ///
    /// - entries learnt from a peer's `Urgent` message (or a LAN push):
    ///   the node that made each one wrote it into its own replica;
    /// - entries carried over a rotation that another node wrote: their
    ///   writer writes them again in the new epoch while they are needed.
    ///
    /// Either way the write reaches this replica by reconciliation, at
    /// which point the entry leaves this set. Writing copies here instead
    /// would make one change per node for every such entry, each then
    /// sent to every node (see docs/protocol.md 9.4 and 9.8).
    aside: BTreeMap<String, Vec<Vec<u8>>>,
    /// How many values `aside` holds.
    aside_count: usize,
}

/// An entry that passed the checks: its key, its value, and it decoded.
type Checked = (String, Vec<u8>, Entry);

/// A unit held back by the replica.
#[derive(Debug, Clone)]
struct Waiting {
    deps: Vec<UnitId>,
    unchecked: Vec<KeyValue>,
}

/// What applying a peer's units will do, decided before anything is
/// applied.
struct Plan {
    /// Entries checked, in units applied now or held back.
    checked: Vec<Checked>,
    /// Units applied now.
    ready: HashSet<UnitId>,
    /// Units of the message held back, with the entries still unchecked.
    held: Vec<(UnitId, Waiting)>,
}

impl<R: Replica> core::fmt::Debug for PartialLedger<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PartialLedger")
            .field("epoch", &self.epoch)
            .field("entries", &self.entries)
            .field("allowances", &self.allowances.len())
            .field("conflicted", &self.conflicted.len())
            .finish()
    }
}

impl<R: Replica> PartialLedger<R> {
    /// An empty ledger. `actor` names this node's writes in the replica:
    /// unique per node, derived from its key; 8 bytes is plenty and every
    /// change carries it, so keep it short.
    pub fn new(actor: &[u8], trust: TrustStore) -> Self {
        PartialLedger {
            replica: R::empty(actor),
            trust,
            actor: actor.to_vec(),
            epoch: 0,
            allowances: BTreeMap::new(),
            conflicted: BTreeSet::new(),
            recent_convictions: std::collections::VecDeque::new(),
            revocations: None,
            acks: BTreeMap::new(),
            settled: HashSet::new(),
            digest: curve25519_dalek::RistrettoPoint::default(),
            entries: 0,
            pending: Vec::new(),
            waiting: HashMap::new(),
            aside: BTreeMap::new(),
            aside_count: 0,
        }
    }

    /// The replica's actor in an epoch: the node's actor, then the epoch
    /// number. A rotated document starts its change sequence again, so it
    /// must not reuse the actor of an older epoch that peers still hold.
    fn epoch_actor(actor: &[u8], epoch: u64) -> Vec<u8> {
        let mut a = actor.to_vec();
        if epoch > 0 {
            // As a varint (LEB128): every change carries the actor, and a
            // UTC day number takes 3 bytes this way, 8 as a plain u64.
            let mut e = epoch;
            loop {
                let low = (e & 0x7f) as u8;
                e >>= 7;
                if e == 0 {
                    a.push(low);
                    break;
                }
                a.push(low | 0x80);
            }
        }
        a
    }

    /// Loads a saved ledger, checking every entry (signatures in one batch:
    /// they were checked strictly when they entered). `epoch` is the epoch
    /// number stored beside the bytes.
    pub fn load(
        bytes: &[u8],
        epoch: u64,
        actor: &[u8],
        trust: TrustStore,
    ) -> Result<Self, LedgerError> {
        Self::load_with_aside(bytes, &[], epoch, actor, trust)
    }

    /// Like [`PartialLedger::load`], with the entries held aside as
    /// [`PartialLedger::save_aside`] wrote them (empty for none), checked
    /// together with the replica's entries. An entry stored aside that the
    /// replica now holds is the replica's.
    pub fn load_with_aside(
        bytes: &[u8],
        aside: &[u8],
        epoch: u64,
        actor: &[u8],
        trust: TrustStore,
    ) -> Result<Self, LedgerError> {
        let replica = R::load(bytes, &Self::epoch_actor(actor, epoch))?;
        let mut ledger = PartialLedger::new(actor, trust);
        ledger.epoch = epoch;
        let mut all = Vec::new();
        for (key, values) in replica.scan("") {
            if values.is_empty() {
                return Err(EntryError::UnknownKey.into());
            }
            for v in values {
                all.push((key.clone(), v));
            }
        }
        if !aside.is_empty() {
            let pairs: Vec<KeyValue> = postcard::from_bytes(aside)
                .map_err(|e| LedgerError::Replica(ReplicaError::Load(e.to_string())))?;
            // What arrived in the replica after the aside part was stored
            // is the replica's.
            all.extend(pairs.into_iter().filter(|(k, v)| !replica.contains(k, v)));
        }
        // Checked together: headers held aside may need an allowance of the
        // replica, and the other way round. The node's own saved ledger:
        // every entry was checked strictly when it entered; batch
        // verification is enough to catch damage.
        let (checked, _) = ledger.check_batch(&all, Verify::Batch, all.len())?;
        ledger.replica = replica;
        for (key, value, entry) in checked {
            if ledger.replica.contains(&key, &value) {
                ledger.index(&key, &value, entry);
            } else {
                ledger.learn(entry);
                ledger.aside_add(key, value);
            }
        }
        Ok(ledger)
    }

    /// The entries held aside (see [`PartialLedger::insert_urgent`]) as
    /// bytes, to store beside the saved ledger and give back to
    /// [`PartialLedger::load_with_aside`]. Empty when there are none.
    pub fn save_aside(&self) -> Vec<u8> {
        if self.aside.is_empty() {
            return Vec::new();
        }
        let pairs: Vec<(&String, &Vec<u8>)> = self
            .aside
            .iter()
            .flat_map(|(k, values)| values.iter().map(move |v| (k, v)))
            .collect();
        postcard::to_allocvec(&pairs).unwrap_or_default()
    }

    /// How many entries are held aside (not in the replica: see the
    /// `aside` field).
    pub fn aside_len(&self) -> usize {
        self.aside_count
    }

    /// Every entry held: those of the replica, then those held aside.
    pub fn held_len(&self) -> usize {
        self.entries + self.aside_count
    }

    fn aside_add(&mut self, key: String, value: Vec<u8>) {
        let values = self.aside.entry(key).or_default();
        if let Err(i) = values.binary_search(&value) {
            values.insert(i, value);
            self.aside_count += 1;
        }
    }

    fn aside_remove(&mut self, key: &str, value: &[u8]) {
        let Some(values) = self.aside.get_mut(key) else {
            return;
        };
        if let Ok(i) = values.binary_search_by(|v| v.as_slice().cmp(value)) {
            values.remove(i);
            self.aside_count -= 1;
            if values.is_empty() {
                self.aside.remove(key);
            }
        }
    }

    /// Whether the replica or the entries held aside hold `(key, value)`.
    fn holds(&self, key: &str, value: &[u8]) -> bool {
        self.replica.contains(key, value)
            || self
                .aside
                .get(key)
                .is_some_and(|vs| vs.iter().any(|v| v == value))
    }

    /// Every value held under `key`, in the replica or aside, in byte
    /// order.
    fn held_values(&self, key: &str) -> Vec<Vec<u8>> {
        let mut values = self.replica.values(key);
        if let Some(aside) = self.aside.get(key) {
            for v in aside {
                if let Err(i) = values.binary_search(v) {
                    values.insert(i, v.clone());
                }
            }
        }
        values
    }

    /// [`Replica::scan`] over the replica and the entries held aside.
    fn held_scan(&self, prefix: &str) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut out: BTreeMap<String, Vec<Vec<u8>>> =
            self.replica.scan(prefix).into_iter().collect();
        for (k, values) in self
            .aside
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            let held = out.entry(k.clone()).or_default();
            for v in values {
                if let Err(i) = held.binary_search(v) {
                    held.insert(i, v.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// [`Replica::neighbours`] over the replica and the entries held
    /// aside: the nearest key below and above `key` with `prefix`.
    fn held_neighbours(&self, prefix: &str, key: &str) -> (Option<String>, Option<String>) {
        let (below, above) = self.replica.neighbours(prefix, key);
        if self.aside.is_empty() {
            return (below, above);
        }
        let (aside_below, aside_above) = replica::nearest_keys(&self.aside, prefix, key);
        (
            below.max(aside_below),
            above.into_iter().chain(aside_above).min(),
        )
    }

    /// The whole ledger as bytes (store beside it the epoch number).
    pub fn save(&mut self) -> Vec<u8> {
        self.replica.save()
    }

    /// What changed since the last save, to append to the stored bytes.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.replica.save_incremental()
    }

    /// Whether the node wrote into the document since the last save or
    /// load (a payment, a proof, a rotation, a join of heads). A node
    /// stores such a change before any sync message leaves: see
    /// [`Replica::has_unsaved_own_writes`].
    pub fn has_unsaved_own_writes(&self) -> bool {
        self.replica.has_unsaved_own_writes()
    }

    /// The epoch: how many times the ledger has been rotated.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The trust store entries are checked against.
    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// The replica (for sync and measurements).
    pub fn replica(&self) -> &R {
        &self.replica
    }

    /// Distinct `(key, value)` entries held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the ledger holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// An order-independent digest of the entries held: two ledgers with
    /// the same entries have the same digest, whatever their histories.
    pub fn digest(&self) -> Hash {
        let mut data = self.digest.compress().to_bytes().to_vec();
        data.extend_from_slice(&(self.entries as u64).to_le_bytes());
        Hash::tagged(crate::crypto::domain::LEDGER_DIGEST, &data)
    }

    /// Adds one entry made or learnt locally (a payment's header, an
    /// allowance from a payer, a proof or list from a gateway).
    pub fn insert(&mut self, entry: Entry) -> Result<Inserted, LedgerError> {
        self.insert_with(entry, None)
    }

    /// Adds a payment's header with the payer's allowance, in one write of
    /// the replica when both are new (one change for peers to receive
    /// instead of two). The allowance is checked first; the header as by
    /// [`PartialLedger::insert`], whose result this is.
    pub fn insert_payment(
        &mut self,
        allowance: Allowance,
        header: SignedHeader,
    ) -> Result<Inserted, LedgerError> {
        let a = Entry::Allowance(allowance);
        let (key, value) = (a.key(), a.encode_value());
        if self.replica.contains(&key, &value) {
            return self.insert(Entry::Header(header));
        }
        let (mut checked, _) = self.check_batch(&[(key, value)], Verify::Strict, 1)?;
        let Some(allowance) = checked.pop() else {
            return self.insert(Entry::Header(header));
        };
        // Known before the header is checked against it; written with it.
        self.learn(allowance.2.clone());
        self.insert_with(Entry::Header(header), Some(allowance))
    }

    /// [`PartialLedger::insert`], also writing `with` (a checked entry
    /// already learnt) into the replica, in the same change as the entry
    /// when that is written, and on its own otherwise.
    fn insert_with(
        &mut self,
        entry: Entry,
        with: Option<Checked>,
    ) -> Result<Inserted, LedgerError> {
        let key = entry.key();
        let value = entry.encode_value();
        let held = self.held_values(&key);
        if held.contains(&value) {
            self.write(with.into_iter().collect());
            return Ok(Inserted::Known);
        }
        if let Err(e) = self.check_batch(&[(key.clone(), value.clone())], Verify::Strict, 1) {
            self.write(with.into_iter().collect());
            return Err(e);
        }
        if let Entry::Header(h) = &entry {
            if let Some(proof) = self.conflict_with_held(h) {
                // The conflicting header stays out (one honest value per
                // key); the proof, which carries it, goes in.
                self.write(with.into_iter().collect());
                self.insert(Entry::Proof(proof.clone()))?;
                return Ok(Inserted::Conflict(proof));
            }
            if !held.is_empty() {
                // The same header under another signature of its wallet:
                // the same transfer, already held.
                self.write(with.into_iter().collect());
                return Ok(Inserted::Known);
            }
        }
        let mut all: Vec<Checked> = with.into_iter().collect();
        all.push((key, value, entry));
        self.write(all);
        Ok(Inserted::New)
    }

    /// Writes checked entries into the replica as one change, and indexes
    /// them. A header or proof whose allowance the replica does not hold
    /// (it is held aside since a rotation) takes the allowance with it:
    /// within an epoch's document every header and proof comes with its
    /// allowance (protocol.md 9.8), so a peer can always check it.
    fn write(&mut self, mut entries: Vec<Checked>) {
        if entries.is_empty() {
            return;
        }
        let mut needed: Vec<Checked> = Vec::new();
        for (_, _, e) in &entries {
            let id = match e {
                Entry::Header(h) => h.allowance,
                Entry::Proof(p) => p.allowance(),
                _ => continue,
            };
            let key = allowance_key(&id);
            let listed = |c: &Checked| c.0 == key;
            if !self.replica.values(&key).is_empty()
                || entries.iter().any(listed)
                || needed.iter().any(listed)
            {
                continue;
            }
            if let Some(a) = self.allowances.get(&id) {
                let a = Entry::Allowance(a.allowance().clone());
                needed.push((key, a.encode_value(), a));
            }
        }
        entries.splice(0..0, needed);
        let pairs: Vec<KeyValue> = entries
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        self.replica.put_all(&pairs);
        if !self.pending.is_empty() {
            // Indexed here: not again when a peer's change that holds the
            // same entry is applied.
            self.pending
                .retain(|(k, v, _)| !pairs.iter().any(|(pk, pv)| pk == k && pv == v));
        }
        for (key, value, entry) in entries {
            self.index(&key, &value, entry);
        }
    }

    /// Adds several entries as one: all are checked first, and if any
    /// fails none is added (what a peer's urgent message carries).
    pub fn insert_all(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<(Entry, Inserted)>, LedgerError> {
        let batch: Vec<KeyValue> = entries
            .iter()
            .map(|e| (e.key(), e.encode_value()))
            .filter(|(k, v)| !self.replica.contains(k, v))
            .collect();
        self.check_batch(&batch, Verify::Strict, batch.len())?;
        let mut sorted = entries;
        sorted.sort_by_key(Entry::kind);
        sorted
            .into_iter()
            .map(|e| {
                let r = self.insert(e.clone())?;
                Ok((e, r))
            })
            .collect()
    }

    /// Takes the entries of a peer's `Urgent` message (proofs with their
    /// allowances, a revocation list): all are checked first, and if any
    /// fails none is taken. New ones are acted on at once but held aside,
    /// not written into the replica: their author's own write arrives by
    /// reconciliation (see the `aside` field).
    pub fn insert_urgent(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<(Entry, Inserted)>, LedgerError> {
        let mut batch: Vec<KeyValue> = Vec::new();
        for e in &entries {
            let kv = (e.key(), e.encode_value());
            if !self.holds(&kv.0, &kv.1) && !batch.contains(&kv) {
                batch.push(kv);
            }
        }
        let (checked, _) = self.check_batch(&batch, Verify::Strict, batch.len())?;
        for (key, value, entry) in checked {
            self.learn(entry);
            self.aside_add(key, value);
        }
        Ok(entries
            .into_iter()
            .map(|e| {
                let (key, value) = (e.key(), e.encode_value());
                let r = match batch.iter().position(|(k, v)| *k == key && *v == value) {
                    Some(i) => {
                        batch.swap_remove(i);
                        Inserted::New
                    }
                    None => Inserted::Known,
                };
                (e, r)
            })
            .collect())
    }

    /// Every conflict proof held (in the replica or aside), in key order.
    pub fn proofs(&self) -> Vec<ConflictProof> {
        self.decoded("p")
            .into_iter()
            .filter_map(|e| match e {
                Entry::Proof(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The newest revocation list held.
    pub fn revocations(&self) -> Option<&RevocationList> {
        self.revocations.as_ref()
    }

    /// Every settlement acknowledgement held.
    pub fn acks(&self) -> impl Iterator<Item = &SettlementAck> {
        self.acks.values()
    }

    /// Whether settlement has acknowledged the transfer (either way).
    pub fn is_settled(&self, id: &TransferId) -> bool {
        self.settled.contains(id)
    }

    /// Every header held, in key order.
    pub fn all_headers(&self) -> Vec<SignedHeader> {
        self.decoded("h")
            .into_iter()
            .filter_map(|e| match e {
                Entry::Header(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    /// Every entry held (in the replica or aside), in key order (for
    /// export and tests).
    pub fn entries(&self) -> Vec<Entry> {
        self.decoded("")
    }

    fn decoded(&self, prefix: &str) -> Vec<Entry> {
        let mut out = Vec::new();
        for (key, values) in self.held_scan(prefix) {
            for v in values {
                // Everything held was checked on the way in.
                if let Ok(e) = Entry::decode(&key, &v) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// The urgent part of the ledger: what a sync sends before anything
    /// else. The proofs are one against each of the [`MAX_URGENT_PROOFS`]
    /// allowances most recently convicted here: older ones have had time
    /// to spread, and reach a peer that lacks them by reconciliation (each
    /// is in the document of its finder, which writes it again each
    /// epoch). Without the bound, every session would carry every proof
    /// ever found, and a long run's sessions would grow without end.
    pub fn urgent(&self) -> (Vec<ConflictProof>, Option<RevocationList>) {
        let mut proofs = Vec::new();
        for id in &self.recent_convictions {
            // One proof convicts: the first held.
            let first = self
                .decoded(&proofs_prefix(id))
                .into_iter()
                .find_map(|e| match e {
                    Entry::Proof(p) => Some(p),
                    _ => None,
                });
            proofs.extend(first);
        }
        (proofs, self.revocations.clone())
    }

    /// A summary of the urgent part: which allowances stand convicted and
    /// which revocation list is newest. A peer that agreed with this ledger
    /// while the summary was the same holds everything urgent it would be
    /// sent (see [`crate::sync::SyncSession::knowing`]).
    pub fn urgent_digest(&self) -> Hash {
        use crate::encoding::Encode;
        let mut data = Vec::with_capacity(16 * self.conflicted.len() + 40);
        data.extend_from_slice(&(self.conflicted.len() as u64).to_le_bytes());
        for id in &self.conflicted {
            data.extend_from_slice(&id.0);
        }
        if let Some(r) = &self.revocations {
            data.extend_from_slice(
                Hash::tagged(crate::crypto::domain::REVOCATION_LIST, &r.encode()).as_bytes(),
            );
        }
        Hash::tagged(crate::crypto::domain::URGENT_DIGEST, &data)
    }

    /// A proof if `h` conflicts with a held header, or is invalid on its face.
    ///
    /// Only the headers under the same key and the nearest sequence numbers
    /// below and above are compared: held headers of an allowance without a
    /// proof satisfy the undercount inequality pairwise, and because every
    /// amount is at least 1 it composes across neighbours, so the nearest
    /// ones bound all the others (see docs/protocol.md).
    fn conflict_with_held(&self, h: &SignedHeader) -> Option<ConflictProof> {
        let allowance = self.allowances.get(&h.allowance)?;
        if over_limit(h, allowance.allowance()) {
            return Some(ConflictProof::OverLimit { header: h.clone() });
        }
        let key = header_key(&h.allowance, h.seq);
        let (below, above) = self.held_neighbours(&headers_prefix(&h.allowance), &key);
        [Some(key), below, above]
            .into_iter()
            .flatten()
            .flat_map(|k| {
                self.held_values(&k)
                    .into_iter()
                    .filter_map(move |v| match Entry::decode(&k, &v) {
                        Ok(Entry::Header(other)) => Some(other),
                        _ => None,
                    })
            })
            .find_map(|other| detect(h, &other))
    }

    /// Checks a batch of `(key, value)` pairs against the ledger and each
    /// other; returns them decoded, or the first error. Changes nothing.
    ///
    /// Headers and proofs from index `deferrable_from` on whose allowance is
    /// neither held nor in the batch are not an error: they are returned
    /// apart, unchecked, to be checked once their allowance arrives.
    fn check_batch(
        &self,
        batch: &[KeyValue],
        verify: Verify,
        deferrable_from: usize,
    ) -> Result<(Vec<Checked>, Vec<KeyValue>), LedgerError> {
        let mut decoded = Vec::with_capacity(batch.len());
        for (i, (k, v)) in batch.iter().enumerate() {
            decoded.push((k.clone(), v.clone(), Entry::decode(k, v)?, i));
        }
        decoded.sort_by_key(|(_, _, e, _)| e.kind());
        // One value per key, except for headers (a fork is two values under
        // one header key, and is evidence).
        let mut single: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for (k, v, e, _) in &decoded {
            if e.kind() == EntryKind::Header {
                continue;
            }
            let held = self.held_values(k);
            let clash = held.iter().any(|h| h != v)
                || single.get(k.as_str()).is_some_and(|other| other != v);
            if clash {
                return Err(LedgerError::KeyTaken(k.clone()));
            }
            single.insert(k, v);
        }
        // Allowances first: the headers and proofs of the batch may need them.
        let mut fresh: BTreeMap<AllowanceId, Allowance> = BTreeMap::new();
        let mut headers: Vec<BatchItem> = Vec::new();
        let mut deferred = vec![false; decoded.len()];
        for (n, (_, _, entry, i)) in decoded.iter().enumerate() {
            let allowance = match entry {
                Entry::Proof(p) => Some(p.allowance()),
                Entry::Header(h) => Some(h.allowance),
                _ => None,
            };
            if *i >= deferrable_from
                && let Some(id) = allowance
                && !self.allowances.contains_key(&id)
                && !fresh.contains_key(&id)
            {
                deferred[n] = true;
                continue;
            }
            match entry {
                Entry::Allowance(a) => {
                    // A held allowance with this id is the same value (the
                    // key check above), so already verified.
                    if !self.allowances.contains_key(&a.id) {
                        VerifiedAllowance::verify(a.clone(), &self.trust)
                            .map_err(LedgerError::Allowance)?;
                    }
                    fresh.insert(a.id, a.clone());
                }
                Entry::Revocations(r) => {
                    if !self.trust.is_issuer_at(&r.issuer, r.issued_at) || !r.verify_by(&r.issuer) {
                        return Err(LedgerError::UntrustedIssuer("revocation list"));
                    }
                }
                Entry::Ack(k) => {
                    if !self.trust.is_issuer_at(&k.issuer, k.issued_at) || !k.verify_by(&k.issuer) {
                        return Err(LedgerError::UntrustedIssuer("settlement acknowledgement"));
                    }
                }
                Entry::Proof(p) => {
                    let a = self.allowance_for(&p.allowance(), &fresh)?;
                    p.verify(&a).map_err(LedgerError::Proof)?;
                }
                Entry::Header(h) => {
                    let a = self.allowance_for(&h.allowance, &fresh)?;
                    let bad = || LedgerError::BadHeaderSignature {
                        allowance: h.allowance,
                        seq: h.seq,
                    };
                    match verify {
                        Verify::Strict => {
                            if !h.verify_by(&a.wallet) {
                                return Err(bad());
                            }
                        }
                        Verify::Batch => headers.push(BatchItem {
                            message: h.signing_message(),
                            signature: h.signature,
                            key: a.wallet,
                        }),
                    }
                }
            }
        }
        // Batch mode: one batch verification; on failure find the culprit.
        if !headers.is_empty() && !verify_batch(&headers) {
            for (_, _, entry, _) in &decoded {
                if let Entry::Header(h) = entry {
                    let a = self.allowance_for(&h.allowance, &fresh)?;
                    if !h.verify_by(&a.wallet) {
                        return Err(LedgerError::BadHeaderSignature {
                            allowance: h.allowance,
                            seq: h.seq,
                        });
                    }
                }
            }
        }
        let mut checked = Vec::with_capacity(decoded.len());
        let mut unchecked = Vec::new();
        for ((k, v, e, _), later) in decoded.into_iter().zip(deferred) {
            if later {
                unchecked.push((k, v));
            } else {
                checked.push((k, v, e));
            }
        }
        Ok((checked, unchecked))
    }

    fn allowance_for(
        &self,
        id: &AllowanceId,
        fresh: &BTreeMap<AllowanceId, Allowance>,
    ) -> Result<Allowance, LedgerError> {
        self.allowances
            .get(id)
            .map(|v| v.allowance().clone())
            .or_else(|| fresh.get(id).cloned())
            .ok_or(LedgerError::UnknownAllowance(*id))
    }

    /// Updates the in-memory indexes for an entry now visible in the replica.
    fn index(&mut self, key: &str, value: &[u8], entry: Entry) {
        self.digest += Entry::digest_part(key, value);
        self.entries += 1;
        if !self.aside.is_empty() {
            self.aside_remove(key, value);
        }
        self.learn(entry);
    }

    /// Updates what the ledger knows from one checked entry (the in-memory
    /// indexes other than the digest).
    fn learn(&mut self, entry: Entry) {
        match entry {
            Entry::Allowance(a) => {
                // Checked in check_batch.
                self.allowances
                    .entry(a.id)
                    .or_insert_with(|| VerifiedAllowance::checked(a));
            }
            Entry::Proof(p) => {
                if self.conflicted.insert(p.allowance()) {
                    self.recent_convictions.push_back(p.allowance());
                    if self.recent_convictions.len() > MAX_URGENT_PROOFS {
                        self.recent_convictions.pop_front();
                    }
                }
            }
            Entry::Revocations(r) => {
                if self
                    .revocations
                    .as_ref()
                    .is_none_or(|old| old.version < r.version)
                {
                    self.revocations = Some(r);
                }
            }
            Entry::Ack(k) => {
                self.settled.extend(k.outcomes.keys().copied());
                self.acks.insert(k.serial, k);
            }
            Entry::Header(_) => {}
        }
    }

    /// Checks a peer's reconciliation message and, if every new entry in it
    /// passes, applies it. On any error nothing from this message enters
    /// the ledger. Returns the conflict proofs the merge produced.
    ///
    /// A unit of the message (an automerge change) that depends on one not
    /// held yet is held back by the replica until that one arrives; a
    /// header in it whose allowance is still unknown is checked then,
    /// before the unit is applied, instead of failing the message (honest
    /// peers send such messages, see [`MAX_WAITING_UNITS`]).
    pub fn receive(
        &mut self,
        peer: &mut R::PeerState,
        message: &[u8],
    ) -> Result<Vec<ConflictProof>, LedgerError> {
        let inspected = self.replica.inspect(message)?;
        let plan = self.plan_or_purge(&inspected.units, true)?;
        let plan = self.not_indexed(plan);
        self.replica.apply(peer, inspected)?;
        self.carry_out(plan)
    }

    /// Merges another node's saved ledger (an export carried by hand, or a
    /// benchmark's setup), with the same checks as a peer's message.
    pub fn import(&mut self, saved: &[u8]) -> Result<Vec<ConflictProof>, LedgerError> {
        let (other, units) = self.replica.inspect_saved(saved)?;
        let plan = self.plan_or_purge(&units, false)?;
        let plan = self.not_indexed(plan);
        self.replica.merge_from(other)?;
        self.carry_out(plan)
    }

    /// `plan` without the entries the replica holds already: a unit held
    /// back lists what was new when it arrived, and this node may have
    /// written the same entry since (an allowance its header took along).
    /// They are indexed once.
    fn not_indexed(&self, mut plan: Plan) -> Plan {
        plan.checked
            .retain(|(k, v, _)| !self.replica.contains(k, v));
        plan
    }

    /// Units held back for missing dependencies (for tests and status).
    pub fn waiting_units(&self) -> usize {
        self.waiting.len()
    }

    /// [`Self::plan`]; if it fails while units held back from earlier
    /// messages would become ready, those may be the culprits (a peer can
    /// send a forged change that waits on an honest one): they are
    /// dropped, and the message is planned again on its own.
    fn plan_or_purge(&mut self, units: &[Unit], defer: bool) -> Result<Plan, LedgerError> {
        match self.plan(units, defer) {
            Ok(plan) => Ok(plan),
            Err(e) if self.waiting.values().any(|w| !w.unchecked.is_empty()) => {
                self.replica.drop_waiting_units();
                self.waiting.clear();
                // Their checked entries will come again with their changes.
                self.pending.clear();
                self.plan(units, defer).map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }

    /// Decides which units the replica will apply now and which it holds
    /// back, and checks every entry that will be applied now: those of the
    /// message's ready units, and those of held-back units that the message
    /// makes ready. With `defer`, entries of units held back whose
    /// allowance is unknown are left unchecked until their unit is ready.
    fn plan(&self, units: &[Unit], defer: bool) -> Result<Plan, LedgerError> {
        let ready = self.ready_units(units);
        let mut batch: Vec<KeyValue> = Vec::new();
        let in_message: HashSet<UnitId> = units.iter().map(|u| u.id).collect();
        for (id, w) in &self.waiting {
            if ready.contains(id) && !in_message.contains(id) {
                batch.extend(w.unchecked.iter().cloned());
            }
        }
        for u in units.iter().filter(|u| ready.contains(&u.id)) {
            batch.extend(u.entries.iter().cloned());
        }
        let deferrable_from = if defer { batch.len() } else { usize::MAX };
        let held_units: Vec<&Unit> = units.iter().filter(|u| !ready.contains(&u.id)).collect();
        for u in &held_units {
            batch.extend(u.entries.iter().cloned());
        }
        let still_waiting = self
            .waiting
            .keys()
            .filter(|id| !ready.contains(*id))
            .count();
        let new_waiting = held_units
            .iter()
            .filter(|u| !self.waiting.contains_key(&u.id))
            .count();
        if still_waiting + new_waiting > MAX_WAITING_UNITS {
            return Err(LedgerError::TooManyWaiting);
        }
        let (checked, unchecked) = self.check_batch(&batch, Verify::Strict, deferrable_from)?;
        let unchecked: HashSet<KeyValue> = unchecked.into_iter().collect();
        let held = held_units
            .into_iter()
            .map(|u| {
                let waiting = Waiting {
                    deps: u.deps.clone(),
                    unchecked: u
                        .entries
                        .iter()
                        .filter(|kv| unchecked.contains(*kv))
                        .cloned()
                        .collect(),
                };
                (u.id, waiting)
            })
            .collect();
        Ok(Plan {
            checked,
            ready,
            held,
        })
    }

    /// The units, of `units` and of those held back, that the replica will
    /// apply once it has `units`: those whose every dependency is held or
    /// applied with them (Kahn's algorithm over the candidates).
    fn ready_units(&self, units: &[Unit]) -> HashSet<UnitId> {
        let mut deps_of: HashMap<UnitId, &[UnitId]> = HashMap::new();
        for u in units {
            deps_of.insert(u.id, &u.deps);
        }
        for (id, w) in &self.waiting {
            deps_of.entry(*id).or_insert(&w.deps);
        }
        let mut missing: HashMap<UnitId, usize> = HashMap::new();
        let mut dependents: HashMap<UnitId, Vec<UnitId>> = HashMap::new();
        let mut ready_now = Vec::new();
        for (id, deps) in &deps_of {
            let mut n = 0;
            for d in deps.iter() {
                if self.replica.holds_unit(d) {
                    continue;
                }
                // A dependency that is neither held nor a candidate keeps
                // the unit waiting: it is counted and never released.
                n += 1;
                if deps_of.contains_key(d) {
                    dependents.entry(*d).or_default().push(*id);
                }
            }
            if n == 0 {
                ready_now.push(*id);
            }
            missing.insert(*id, n);
        }
        let mut ready = HashSet::new();
        while let Some(id) = ready_now.pop() {
            if !ready.insert(id) {
                continue;
            }
            for next in dependents.get(&id).into_iter().flatten() {
                if let Some(n) = missing.get_mut(next) {
                    *n -= 1;
                    if *n == 0 {
                        ready_now.push(*next);
                    }
                }
            }
        }
        ready
    }

    /// After the replica applied what a [`Plan`] was made for: records the
    /// units now held back, and indexes what became visible.
    fn carry_out(&mut self, plan: Plan) -> Result<Vec<ConflictProof>, LedgerError> {
        self.waiting.retain(|id, _| !plan.ready.contains(id));
        for (id, w) in plan.held {
            let entry = self.waiting.entry(id).or_insert(Waiting {
                deps: w.deps,
                unchecked: Vec::new(),
            });
            for kv in w.unchecked {
                if !entry.unchecked.contains(&kv) {
                    entry.unchecked.push(kv);
                }
            }
        }
        self.absorb(plan.checked)
    }

    /// Indexes checked entries that are now in the replica, and turns the
    /// conflicts they bring together into proofs.
    fn absorb(
        &mut self,
        checked: Vec<(String, Vec<u8>, Entry)>,
    ) -> Result<Vec<ConflictProof>, LedgerError> {
        let mut waiting = std::mem::take(&mut self.pending);
        let mut seen: HashSet<(String, Vec<u8>)> = waiting
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        for c in checked {
            if seen.insert((c.0.clone(), c.1.clone())) {
                waiting.push(c);
            }
        }
        let mut new_headers = Vec::new();
        // Decoded and checked before (or when it became pending).
        for (key, value, entry) in waiting {
            if !self.replica.contains(&key, &value) {
                // Its change waits for a missing dependency.
                self.pending.push((key, value, entry));
                continue;
            }
            if let Entry::Header(h) = &entry {
                new_headers.push(h.clone());
            }
            self.index(&key, &value, entry);
        }
        // Conflicts the merge brought together, including automerge's
        // concurrent writes to one key.
        let mut proofs = Vec::new();
        for h in &new_headers {
            if let Some(p) = self.conflict_with_held(h)
                && !proofs.contains(&p)
                && !self.conflicted.contains(&p.allowance())
            {
                proofs.push(p);
            }
        }
        // Built from entries checked above, so they verify; one that did not
        // would be a bug here, not the peer's doing, and is left out.
        proofs.retain(|p| self.insert(Entry::Proof(p.clone())).is_ok());
        self.replica.collapse_heads(MAX_HEADS);
        Ok(proofs)
    }

    /// The next reconciliation message for a peer.
    pub fn sync_message(&mut self, peer: &mut R::PeerState) -> Option<Vec<u8>> {
        self.replica.sync_message(peer)
    }

    /// The next reconciliation message once the peer said it is done.
    pub fn sync_message_after_peer_done(&mut self, peer: &mut R::PeerState) -> Option<Vec<u8>> {
        self.replica.sync_message_after_peer_done(peer)
    }

    /// Rotates into the epoch of `now` ([`epoch_of`]) if the ledger is in
    /// an older one; what [`PartialLedger::rotate_to`] did, if it did.
    pub fn advance(&mut self, now: Timestamp, policy: &RetentionPolicy) -> Option<Rotation> {
        let epoch = epoch_of(now);
        (epoch > self.epoch).then(|| self.rotate_to(epoch, now, policy))
    }

    /// Starts the next epoch (see [`PartialLedger::rotate_to`]).
    pub fn rotate_epoch(&mut self, now: Timestamp, policy: &RetentionPolicy) -> Rotation {
        self.rotate_to(self.epoch + 1, now, policy)
    }

    /// Starts epoch `epoch` (a later one than the current; an earlier or
    /// equal one is taken as the next): a fresh replica, with no history,
    /// and only what is still needed: allowances, their headers and the
    /// proofs against them until `expiry_grace` after they expire, the
    /// newest revocation list, and recent acknowledgements.
    ///
    /// Of what is kept, only the entries this node wrote into the old
    /// replica are written into the new one: its unsettled headers and
    /// its proofs (with
    /// the allowances they need), its revocation list, and its
    /// acknowledgements issued within the last epoch, as one change under
    /// the new epoch's actor. Every other entry is held aside. Its own writer writes it again in the
    /// new epoch, and that write arrives by reconciliation. So peers in one
    /// epoch share a document that starts empty, and none receives the
    /// entries it carried over from every other node (protocol.md 9.8).
    pub fn rotate_to(&mut self, epoch: u64, now: Timestamp, policy: &RetentionPolicy) -> Rotation {
        let epoch = epoch.max(self.epoch + 1);
        // What is dropped is judged at `now`, but never more than
        // CLOCK_LEAD_SECS past the newest issuer-signed time held: a clock
        // run far ahead must not throw away what is still valid (it only
        // delays drops when no issuer time is that recent).
        let newest = self
            .allowances
            .values()
            .map(|a| a.allowance().issued_at)
            .chain(self.acks.values().map(|k| k.issued_at))
            .chain(self.revocations.iter().map(|r| r.issued_at))
            .max();
        let now = match newest {
            Some(t) if t.plus(CLOCK_LEAD_SECS) < now => t.plus(CLOCK_LEAD_SECS),
            _ => now,
        };
        let mut allowances = std::mem::take(&mut self.allowances);
        allowances.retain(|_, a| now.minus(policy.expiry_grace_secs) <= a.allowance().expires_at);
        // The allowances kept, as the 22 characters of base64 their keys
        // and those of their headers and proofs share (protocol.md 9.2).
        let kept_allowances: HashSet<String> = allowances
            .keys()
            .map(|id| allowance_key(id)[1..].to_string())
            .collect();
        let own: HashSet<KeyValue> = self.replica.own_entries().into_iter().collect();
        // Everything held, by key, values in byte order: the entries held
        // aside and the replica's (one epoch's worth) are moved.
        let replica = std::mem::replace(
            &mut self.replica,
            R::empty(&Self::epoch_actor(&self.actor, epoch)),
        );
        let mut held = std::mem::take(&mut self.aside);
        for (key, values) in replica.into_map() {
            let at = held.entry(key).or_default();
            for v in values {
                if let Err(i) = at.binary_search(&v) {
                    at.insert(i, v);
                }
            }
        }
        let newest_list = self
            .revocations
            .as_ref()
            .map(|r| Entry::Revocations(r.clone()).key());
        let mut rotation = Rotation::default();
        let mut written: Vec<Checked> = Vec::new();
        let mut aside: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut aside_count = 0;
        for (key, values) in held {
            // Whether the allowance a key names (by the 22 characters of
            // base64 after its first) is kept.
            let of_allowance = || {
                key.get(1..23)
                    .is_some_and(|id| kept_allowances.contains(id))
            };
            let mut keep_one = None;
            for value in values {
                if keep_one.is_some() {
                    // One value per key in the new epoch: a forked header
                    // key keeps its first value, and the proof that
                    // carries both.
                    rotation.dropped += 1;
                    continue;
                }
                let keep = match key.as_bytes().first() {
                    Some(b'a') => key.len() == 23 && of_allowance(),
                    Some(b'p') => of_allowance(),
                    // A settled header is kept too (aside, below): it is
                    // what catches a wallet that spends its sequence
                    // number again later.
                    Some(b'h') => of_allowance(),
                    Some(b'r') => newest_list.as_deref() == Some(key.as_str()),
                    Some(b'k') => matches!(Entry::decode(&key, &value),
                        Ok(Entry::Ack(k)) if now.minus(policy.ack_retention_secs) <= k.issued_at),
                    _ => false,
                };
                if keep {
                    keep_one = Some(value);
                } else {
                    rotation.dropped += 1;
                }
            }
            let Some(value) = keep_one else { continue };
            rotation.kept += 1;
            let pair = (key, value);
            // What the node wrote and others still need from it: its
            // unsettled headers and its proofs (with the allowances they
            // need, added by `write`), its list, and acknowledgements of
            // the last epoch. An allowance alone travels with what it
            // checks; a settled header no longer travels.
            if own.contains(&pair) {
                match Entry::decode(&pair.0, &pair.1) {
                    Ok(Entry::Allowance(_)) | Err(_) => {}
                    Ok(Entry::Ack(k)) if now.minus(EPOCH_SECS) > k.issued_at => {}
                    Ok(Entry::Header(h)) if self.settled.contains(&h.id()) => {}
                    Ok(entry) => {
                        written.push((pair.0, pair.1, entry));
                        continue;
                    }
                }
            }
            aside.entry(pair.0).or_default().push(pair.1);
            aside_count += 1;
        }
        let mut fresh = PartialLedger::<R>::new(&self.actor, self.trust.clone());
        std::mem::swap(&mut fresh.replica, &mut self.replica);
        fresh.epoch = epoch;
        // What the kept entries tell, moved rather than learnt again: they
        // were checked when they entered.
        fresh.conflicted = std::mem::take(&mut self.conflicted)
            .into_iter()
            .filter(|id| allowances.contains_key(id))
            .collect();
        fresh.recent_convictions = std::mem::take(&mut self.recent_convictions);
        fresh
            .recent_convictions
            .retain(|id| allowances.contains_key(id));
        fresh.allowances = allowances;
        fresh.revocations = self.revocations.take();
        fresh.acks = std::mem::take(&mut self.acks);
        fresh
            .acks
            .retain(|_, k| now.minus(policy.ack_retention_secs) <= k.issued_at);
        // Until this process ends, remember what settled even if its
        // acknowledgement has aged out (a reload knows what the retained
        // acknowledgements say).
        fresh.settled = std::mem::take(&mut self.settled);
        fresh.aside = aside;
        fresh.aside_count = aside_count;
        fresh.write(written);
        rotation.written = fresh.entries;
        *self = fresh;
        rotation
    }
}

impl<R: Replica> MeshView for PartialLedger<R> {
    fn is_revoked(&self, allowance: &AllowanceId, wallet: &PublicKey) -> bool {
        self.revocations
            .as_ref()
            .is_some_and(|r| r.revokes(allowance, wallet))
    }

    fn has_conflict(&self, allowance: &AllowanceId) -> bool {
        self.conflicted.contains(allowance)
    }

    fn headers(&self, allowance: &AllowanceId) -> Vec<SignedHeader> {
        let mut out = Vec::new();
        for (key, values) in self.held_scan(&headers_prefix(allowance)) {
            for v in values {
                if let Ok(Entry::Header(h)) = Entry::decode(&key, &v) {
                    out.push(h);
                }
            }
        }
        out
    }

    fn allowance(&self, id: &AllowanceId) -> Option<VerifiedAllowance> {
        self.allowances.get(id).cloned()
    }
}
