//! One sync session between two ledger devices over a modelled link: the
//! real [`SyncSession`] machines on both sides, their frames carried with
//! modelled airtime, turns and loss.

use meshpay_proto::ledger::LedgerError;
use meshpay_proto::sync::{SyncConfig, SyncError, SyncSession};
use meshpay_proto::time::Millis;
use rand::RngExt;

use crate::devices::{Behaviour, LedgerDevice};
use crate::link::LinkModel;
use crate::world::{DeviceId, SimTime};

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// Both sides agreed.
    Agreed,
    /// One side refused the other's data or framing (a forger's frames).
    Refused,
    /// The peer went silent (a staller).
    Stalled,
    /// The caps ended it.
    Capped,
}

/// The outcome of one session.
#[derive(Debug, Clone)]
pub struct SessionResult {
    /// How it ended.
    pub end: SessionEnd,
    /// Modelled duration, microseconds.
    pub elapsed_us: f64,
    /// Whether either ledger gained entries.
    pub changed: bool,
    /// Why a side refused, when it did (the error's kind, without ids).
    pub refusal: Option<String>,
    /// Bytes of the two sides' `Urgent` messages (every proof and the
    /// revocation list a side holds, sent first unless the peer is known to
    /// hold them).
    pub urgent_bytes: u64,
    /// Proofs each side (`a`, `b`) learnt in a session that ended agreed:
    /// what the node publishes to its LAN when a session finishes.
    pub learnt: [Vec<meshpay_proto::conflict::ConflictProof>; 2],
}

/// The kind of a sync error, without the ids in its message, for counting.
fn kind(e: &SyncError) -> String {
    match e {
        SyncError::Ledger(LedgerError::UnknownAllowance(_)) => {
            "peer data refused: entry for unknown allowance".into()
        }
        SyncError::Ledger(LedgerError::BadHeaderSignature { .. }) => {
            "peer data refused: header not signed by its wallet".into()
        }
        SyncError::Ledger(LedgerError::KeyTaken(_)) => {
            "peer data refused: ledger key already holds a different value".into()
        }
        other => other.to_string(),
    }
}

/// Most direction turns before the simulator gives up on a session that
/// neither finishes nor fails (none do under the caps; a guard only).
const MAX_TURNS: usize = 512;

/// Runs a session between `a` and `b` starting at `t0` (ms).
pub fn run<R: rand::Rng + ?Sized>(
    (ia, a): (DeviceId, &mut LedgerDevice),
    (ib, b): (DeviceId, &mut LedgerDevice),
    link: &LinkModel,
    t0: SimTime,
    rng: &mut R,
) -> SessionResult {
    let config = SyncConfig {
        max_frame: link.max_frame,
        ..SyncConfig::default()
    };
    let peer_a = take_peer(a, ib);
    let peer_b = take_peer(b, ia);
    let now = |us: f64| Millis(t0 + (us / 1000.0) as u64);
    let known_a = a.agreed_urgent.get(&ib).copied();
    let known_b = b.agreed_urgent.get(&ia).copied();
    let mut sa = SyncSession::knowing(&a.ledger, peer_a, known_a, config, Millis(t0));
    let mut sb = SyncSession::knowing(&b.ledger, peer_b, known_b, config, Millis(t0));
    let (len_a, len_b) = (a.ledger.len(), b.ledger.len());
    let mut elapsed = link.setup_us();
    let mut end = SessionEnd::Capped;
    let mut refusal = None;
    let mut turns = 0;
    'session: while turns < MAX_TURNS {
        for dir in 0..2 {
            turns += 1;
            let (tx, rx, from, to) = if dir == 0 {
                (&mut sa, &mut sb, &mut *a, &mut *b)
            } else {
                (&mut sb, &mut sa, &mut *b, &mut *a)
            };
            let mut moved = false;
            // A staller sends what it queued at the start, then nothing.
            let silent = from.behaviour == Behaviour::Staller && turns > 2;
            while let Some(mut frame) = tx.poll_transmit() {
                if silent {
                    break;
                }
                if !moved {
                    elapsed += link.turn_us();
                }
                moved = true;
                let (dt, bytes) = link.frame(frame.len(), rng);
                elapsed += dt;
                from.cost.bytes_sent += bytes;
                from.cost.sync_bytes_sent += bytes;
                to.cost.bytes_received += bytes;
                if from.behaviour == Behaviour::Forger && frame.len() > 1 {
                    let i = rng.random_range(1..frame.len());
                    frame[i] ^= 1 << rng.random_range(0..8u32);
                }
                if to.behaviour == Behaviour::Staller {
                    continue;
                }
                let before = rx.stats().new_proofs.len();
                let result = rx.handle_frame(&mut to.ledger, &frame, now(elapsed));
                for p in &rx.stats().new_proofs[before..] {
                    to.hold_proof(p.allowance(), now(elapsed).0);
                }
                if let Err(e) = result {
                    tracing::debug!(error = %e, from = ?from.behaviour, "sync session refused");
                    refusal = Some(kind(&e));
                    end = SessionEnd::Refused;
                    break 'session;
                }
            }
            if silent {
                // The honest side waits out its stall timer.
                let at = now(elapsed).plus(config.stall_ms);
                let _ = rx.handle_timeout(at);
                elapsed += config.stall_ms as f64 * 1000.0;
                end = SessionEnd::Stalled;
                break 'session;
            }
            if sa.is_agreed() && sb.is_agreed() {
                end = SessionEnd::Agreed;
                break 'session;
            }
            if !moved && dir == 1 && turns > 2 {
                break 'session;
            }
        }
    }
    let urgent_bytes = sa.stats().urgent_bytes_sent + sb.stats().urgent_bytes_sent;
    let radio = elapsed as u64;
    a.cost.radio_on_us += radio;
    b.cost.radio_on_us += radio;
    let changed = a.ledger.len() != len_a || b.ledger.len() != len_b;
    if changed {
        a.touch();
        b.touch();
    }
    let mut learnt = [Vec::new(), Vec::new()];
    if end == SessionEnd::Agreed {
        learnt = [sa.stats().new_proofs.clone(), sb.stats().new_proofs.clone()];
        let epoch_a = a.ledger.epoch();
        let epoch_b = b.ledger.epoch();
        a.peers.insert(ib, (epoch_a, sa.into_peer_state()));
        b.peers.insert(ia, (epoch_b, sb.into_peer_state()));
        a.agreed_urgent.insert(ib, a.ledger.urgent_digest());
        b.agreed_urgent.insert(ia, b.ledger.urgent_digest());
    }
    SessionResult {
        end,
        elapsed_us: elapsed,
        changed,
        refusal,
        urgent_bytes,
        learnt,
    }
}

/// The remembered state for `peer`, if it was made in the current epoch.
fn take_peer(
    d: &mut LedgerDevice,
    peer: DeviceId,
) -> <meshpay_proto::ledger::AutomergeReplica as meshpay_proto::ledger::Replica>::PeerState {
    match d.peers.remove(&peer) {
        Some((epoch, state)) if epoch == d.ledger.epoch() => state,
        _ => Default::default(),
    }
}
