//! Sync sessions: a sans-I/O exchange between two peers that brings both
//! partial ledgers to their union.
//!
//! ```text
//!  each side, at once:   Urgent{proofs, revocations}   (only if it has any,
//!                        and the peer may lack them)
//!                        Hello{epoch, digest, entries}
//!  epochs differ:        the session ends (EpochMismatch) after Urgent
//!  digests equal:        Done{digest}  ── both done: a few hundred bytes
//!  digests differ:       Reconcile(replica message) ⇄ Reconcile(...) ...
//!                        Done{digest} when the replica has nothing to send
//!  finished:             sent Done{d} and received Done{d}, d = own digest
//! ```
//!
//! Every message is cut into frames that fit the link (20 bytes to 64 KiB,
//! see [`frame`]). Caps on rounds, bytes, message size, total time and
//! silence end a session with a typed [`SyncError`]; a peer's data enters
//! the ledger only after it has been checked, so a failing session leaves
//! the ledger as it was before that peer's bad data.

pub mod frame;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::allowance::Allowance;
use crate::conflict::ConflictProof;
use crate::crypto::Hash;
use crate::encoding::{DecodeError, Encode};
use crate::ledger::{AutomergeReplica, Entry, Inserted, LedgerError, PartialLedger, Replica};
use crate::revocation::RevocationList;
use crate::time::Millis;

use frame::{FrameError, Reassembler};

/// One sync message (before framing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Conflict proofs (each with the allowance that checks it) and the
    /// newest revocation list: sent before anything else.
    Urgent {
        /// Proofs with their allowances.
        proofs: Vec<(Allowance, ConflictProof)>,
        /// The newest revocation list.
        revocations: Option<RevocationList>,
    },
    /// The opening summary: peers with equal digests stop at once.
    Hello {
        /// The sender's ledger epoch.
        epoch: u64,
        /// The sender's ledger digest.
        digest: Hash,
        /// How many entries it holds.
        entries: u64,
    },
    /// One message of the replica's own reconciliation protocol.
    Reconcile(Vec<u8>),
    /// The sender has nothing more to send; its digest now.
    Done {
        /// The sender's ledger digest.
        digest: Hash,
    },
}

impl Encode for SyncMessage {
    const KIND: &'static str = "sync message";
}

/// Limits of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// Largest frame this side sends and accepts (20 to 65,536 bytes).
    pub max_frame: usize,
    /// Largest message after reassembly.
    pub max_message: usize,
    /// Most reconciliation messages accepted from the peer.
    pub max_rounds: u32,
    /// Most bytes accepted from the peer.
    pub max_bytes: u64,
    /// Longest a session may take.
    pub max_duration_ms: u64,
    /// Longest silence from the peer.
    pub stall_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_frame: 64 * 1024,
            max_message: 32 << 20,
            max_rounds: 64,
            max_bytes: 256 << 20,
            max_duration_ms: 60_000,
            stall_ms: 10_000,
        }
    }
}

/// Why a session ended early. After any of these the session is over; the
/// ledger holds everything checked and applied before the error, nothing
/// of the message that caused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A frame broke the framing rules.
    #[error("frame refused: {0}")]
    Frame(#[from] FrameError),
    /// A reassembled message did not decode.
    #[error("message refused: {0}")]
    Decode(#[from] DecodeError),
    /// The peer's data failed the ledger's checks.
    #[error("peer data refused: {0}")]
    Ledger(#[from] LedgerError),
    /// The peer sent more reconciliation messages than allowed.
    #[error("peer exceeded {0} rounds")]
    TooManyRounds(u32),
    /// The peer sent more bytes than allowed.
    #[error("peer exceeded {0} bytes")]
    TooManyBytes(u64),
    /// The session took longer than allowed.
    #[error("session exceeded {0} ms")]
    TimedOut(u64),
    /// The peer was silent too long.
    #[error("peer silent for {0} ms")]
    Stalled(u64),
    /// A message out of place (a second hello).
    #[error("unexpected {0} message")]
    Unexpected(&'static str),
    /// The session already ended with an error.
    #[error("session already failed")]
    AlreadyFailed,
    /// The peer's ledger is in another epoch: the two documents share
    /// nothing, so reconciling them would bring back every entry of one
    /// epoch into the other. The urgent entries were exchanged; the side
    /// in the older epoch should rotate ([`PartialLedger::advance`]) if its
    /// clock agrees, and the next session reconciles.
    #[error("peer is in epoch {theirs}, this ledger in epoch {ours}")]
    EpochMismatch {
        /// This ledger's epoch.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
}

/// Counters of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Bytes of frames sent.
    pub bytes_sent: u64,
    /// Bytes of frames received.
    pub bytes_received: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Messages sent.
    pub messages_sent: u32,
    /// Messages received.
    pub messages_received: u32,
    /// Reconciliation messages received.
    pub rounds_received: u32,
    /// Bytes of the `Urgent` message sent (0 when there was nothing urgent
    /// or the peer was known to hold it).
    pub urgent_bytes_sent: u64,
    /// Proofs found or learnt during the session.
    pub new_proofs: Vec<ConflictProof>,
}

/// One side of a sync session.
pub struct SyncSession<R: Replica = AutomergeReplica> {
    config: SyncConfig,
    peer: R::PeerState,
    outgoing: VecDeque<Vec<u8>>,
    reassembler: Reassembler,
    started: Millis,
    last_heard: Millis,
    hello_received: bool,
    sent_done: Option<Hash>,
    peer_done: Option<Hash>,
    finished: bool,
    failed: bool,
    stats: SyncStats,
}

impl<R: Replica> core::fmt::Debug for SyncSession<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SyncSession")
            .field("finished", &self.finished)
            .field("failed", &self.failed)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<R: Replica> SyncSession<R> {
    /// Opens a session: queues the urgent entries and the hello. `peer` is
    /// what was remembered about this peer (or `Default` for a stranger).
    pub fn new(
        ledger: &PartialLedger<R>,
        peer: R::PeerState,
        config: SyncConfig,
        now: Millis,
    ) -> Self {
        Self::knowing(ledger, peer, None, config, now)
    }

    /// Like [`SyncSession::new`], for a peer whose last session ended
    /// agreed while this ledger's [`PartialLedger::urgent_digest`] was
    /// `agreed_urgent`: if it still is, the peer holds every proof and the
    /// revocation list this side would send first, and the `Urgent`
    /// message is left out. (What the peer learnt since, it sends in its
    /// own `Urgent`.) Record the digest when a session finishes agreed.
    pub fn knowing(
        ledger: &PartialLedger<R>,
        peer: R::PeerState,
        agreed_urgent: Option<Hash>,
        config: SyncConfig,
        now: Millis,
    ) -> Self {
        // Only what survives storage carries over from an earlier session:
        // the rest (what was sent, what the peer said it holds) described
        // that session's link, and would keep this side from sending again
        // what was lost with it.
        let peer = R::decode_peer_state(&R::encode_peer_state(&peer)).unwrap_or_default();
        let mut s = SyncSession {
            config,
            peer,
            outgoing: VecDeque::new(),
            reassembler: Reassembler::new(config.max_frame, config.max_message),
            started: now,
            last_heard: now,
            hello_received: false,
            sent_done: None,
            peer_done: None,
            finished: false,
            failed: false,
            stats: SyncStats::default(),
        };
        if agreed_urgent != Some(ledger.urgent_digest()) {
            s.send_urgent(ledger);
        }
        s.send(&SyncMessage::Hello {
            epoch: ledger.epoch(),
            digest: ledger.digest(),
            entries: ledger.len() as u64,
        });
        s
    }

    /// Sends the proofs (each with its allowance) and the newest revocation
    /// list, if there are any.
    fn send_urgent(&mut self, ledger: &PartialLedger<R>) {
        use crate::validate::MeshView;
        let (proofs, revocations) = ledger.urgent();
        let proofs: Vec<(Allowance, ConflictProof)> = proofs
            .into_iter()
            .filter_map(|p| Some((ledger.allowance(&p.allowance())?.into_inner(), p)))
            .collect();
        if proofs.is_empty() && revocations.is_none() {
            return;
        }
        let before = self.stats.bytes_sent;
        self.send(&SyncMessage::Urgent {
            proofs,
            revocations,
        });
        self.stats.urgent_bytes_sent += self.stats.bytes_sent - before;
    }

    fn send(&mut self, message: &SyncMessage) {
        let bytes = message.encode();
        self.stats.messages_sent += 1;
        for f in frame::split(&bytes, self.config.max_frame) {
            self.stats.bytes_sent += f.len() as u64;
            self.stats.frames_sent += 1;
            self.outgoing.push_back(f);
        }
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outgoing.pop_front()
    }

    /// Whether both sides agree they are in sync.
    pub fn is_finished(&self) -> bool {
        self.finished && self.outgoing.is_empty()
    }

    /// Whether both sides have said they agree, even if this side's last
    /// `Done` is still queued (a transport whose peer already reported
    /// agreement need not send it).
    pub fn is_agreed(&self) -> bool {
        self.finished
    }

    /// Whether the session ended with an error.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Counters so far.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// What to remember about this peer for next time.
    pub fn into_peer_state(self) -> R::PeerState {
        self.peer
    }

    /// When [`SyncSession::handle_timeout`] wants to be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.finished || self.failed {
            return None;
        }
        Some(
            self.last_heard
                .plus(self.config.stall_ms)
                .min(self.started.plus(self.config.max_duration_ms)),
        )
    }

    /// Enforces the time caps.
    pub fn handle_timeout(&mut self, now: Millis) -> Result<(), SyncError> {
        if self.failed {
            return Err(SyncError::AlreadyFailed);
        }
        if self.finished {
            return Ok(());
        }
        if now >= self.started.plus(self.config.max_duration_ms) {
            return self.fail(SyncError::TimedOut(self.config.max_duration_ms));
        }
        if now >= self.last_heard.plus(self.config.stall_ms) {
            return self.fail(SyncError::Stalled(self.config.stall_ms));
        }
        Ok(())
    }

    fn fail(&mut self, e: SyncError) -> Result<(), SyncError> {
        self.failed = true;
        self.outgoing.clear();
        Err(e)
    }

    /// Handles one frame from the peer.
    pub fn handle_frame(
        &mut self,
        ledger: &mut PartialLedger<R>,
        frame: &[u8],
        now: Millis,
    ) -> Result<(), SyncError> {
        if self.failed {
            return Err(SyncError::AlreadyFailed);
        }
        self.last_heard = now;
        self.stats.frames_received += 1;
        self.stats.bytes_received += frame.len() as u64;
        if self.stats.bytes_received > self.config.max_bytes {
            return self.fail(SyncError::TooManyBytes(self.config.max_bytes));
        }
        if now >= self.started.plus(self.config.max_duration_ms) {
            return self.fail(SyncError::TimedOut(self.config.max_duration_ms));
        }
        let message = match self.reassembler.push(frame) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) => return self.fail(e.into()),
        };
        let message = match SyncMessage::decode_limited(&message, self.config.max_message) {
            Ok(m) => m,
            Err(e) => return self.fail(e.into()),
        };
        self.stats.messages_received += 1;
        match self.handle_message(ledger, message) {
            Ok(()) => Ok(()),
            Err(e @ SyncError::EpochMismatch { .. }) => {
                // What is queued (this side's `Urgent` and `Hello`) still
                // goes out: the peer learns the epoch, and the proofs
                // cross.
                self.failed = true;
                Err(e)
            }
            Err(e) => self.fail(e),
        }
    }

    fn handle_message(
        &mut self,
        ledger: &mut PartialLedger<R>,
        message: SyncMessage,
    ) -> Result<(), SyncError> {
        match message {
            SyncMessage::Urgent {
                proofs,
                revocations,
            } => {
                // All or nothing: every entry is checked before any is added.
                let mut entries = Vec::new();
                for (allowance, proof) in proofs {
                    entries.push(Entry::Allowance(allowance));
                    entries.push(Entry::Proof(proof));
                }
                entries.extend(revocations.map(Entry::Revocations));
                for (entry, result) in ledger.insert_urgent(entries)? {
                    if let (Entry::Proof(p), Inserted::New) = (entry, result) {
                        self.stats.new_proofs.push(p);
                    }
                }
            }
            SyncMessage::Hello { epoch, digest, .. } => {
                if self.hello_received {
                    return Err(SyncError::Unexpected("second hello"));
                }
                self.hello_received = true;
                if epoch != ledger.epoch() {
                    return Err(SyncError::EpochMismatch {
                        ours: ledger.epoch(),
                        theirs: epoch,
                    });
                }
                if digest == ledger.digest() {
                    self.send_done_once(ledger);
                } else {
                    match ledger.sync_message(&mut self.peer) {
                        Some(m) => self.send(&SyncMessage::Reconcile(m)),
                        None => self.send_done_once(ledger),
                    }
                }
            }
            SyncMessage::Reconcile(_) if !self.hello_received => {
                // An honest peer's hello comes first: it names the epoch
                // the reconciliation is about.
                return Err(SyncError::Unexpected("reconcile before hello"));
            }
            SyncMessage::Reconcile(bytes) => {
                self.stats.rounds_received += 1;
                if self.stats.rounds_received > self.config.max_rounds {
                    return Err(SyncError::TooManyRounds(self.config.max_rounds));
                }
                let proofs = ledger.receive(&mut self.peer, &bytes)?;
                self.stats.new_proofs.extend(proofs);
                if !self.agreed(ledger) {
                    // The peer waits for an answer to its message.
                    match ledger.sync_message(&mut self.peer) {
                        Some(m) => self.send(&SyncMessage::Reconcile(m)),
                        None => self.send_done(ledger),
                    }
                }
            }
            SyncMessage::Done { digest } => {
                self.peer_done = Some(digest);
                if digest == ledger.digest() {
                    self.send_done_once(ledger);
                } else {
                    // The peer has processed all we sent: nothing is in
                    // flight any more.
                    match ledger.sync_message_after_peer_done(&mut self.peer) {
                        Some(m) => self.send(&SyncMessage::Reconcile(m)),
                        None => self.send_done_once(ledger),
                    }
                }
            }
        }
        self.finished = self.agreed(ledger);
        Ok(())
    }

    /// Both sides have said "done" with this side's current digest.
    fn agreed(&self, ledger: &PartialLedger<R>) -> bool {
        let mine = Some(ledger.digest());
        self.peer_done == mine && self.sent_done == mine
    }

    /// Sends `Done` unless the last one sent already carried this digest.
    fn send_done_once(&mut self, ledger: &PartialLedger<R>) {
        if self.sent_done != Some(ledger.digest()) {
            self.send_done(ledger);
        }
    }

    fn send_done(&mut self, ledger: &PartialLedger<R>) {
        let digest = ledger.digest();
        self.sent_done = Some(digest);
        self.send(&SyncMessage::Done { digest });
    }
}
