//! The partial ledger and sync sessions: conflicts on insert and merge,
//! convergence under random sync schedules, hostile peers, frame sizes,
//! save/load and epochs.

mod common;

use common::*;
use meshpay_proto::ledger::{
    ClockMessage, Entry, Inserted, LedgerError, PartialLedger, RetentionPolicy,
};
use meshpay_proto::prelude::*;
use meshpay_proto::sync::frame::FrameError;
use meshpay_proto::sync::{SyncConfig, SyncError, SyncMessage, SyncSession, SyncStats};
use proptest::prelude::*;

type Ledger = PartialLedger;
type PeerState = meshpay_proto::ledger::ClockPeer;

fn ledger(node: u8) -> Ledger {
    Ledger::new(&[node; 16], trust())
}

/// A ledger holding wallet `w`'s allowance.
fn with_wallets(node: u8, wallets: &[u32]) -> Ledger {
    let mut l = ledger(node);
    for &w in wallets {
        l.insert(Entry::Allowance(wallet(w).1)).expect("allowance");
    }
    l
}

/// Runs a whole session between `a` and `b` in memory from the given peer
/// states, frames moving in alternation. Returns both finished sessions.
fn run_session(
    a: &mut Ledger,
    b: &mut Ledger,
    states: (PeerState, PeerState),
    known: (Option<Hash>, Option<Hash>),
    config: SyncConfig,
) -> Result<(SyncSession, SyncSession), SyncError> {
    let mut sa = SyncSession::knowing(a, states.0, known.0, config, Millis(0));
    let mut sb = SyncSession::knowing(b, states.1, known.1, config, Millis(0));
    for step in 0..100_000u64 {
        let mut moved = false;
        if let Some(f) = sa.poll_transmit() {
            sb.handle_frame(b, &f, Millis(step))?;
            moved = true;
        }
        if let Some(f) = sb.poll_transmit() {
            sa.handle_frame(a, &f, Millis(step))?;
            moved = true;
        }
        if sa.is_finished() && sb.is_finished() {
            return Ok((sa, sb));
        }
        assert!(moved, "session stuck: {sa:?} {sb:?}");
    }
    panic!("session did not finish");
}

/// A whole session between strangers; both sides' stats.
fn sync_with(
    a: &mut Ledger,
    b: &mut Ledger,
    config: SyncConfig,
) -> Result<(SyncStats, SyncStats), SyncError> {
    let (sa, sb) = run_session(
        a,
        b,
        (PeerState::new(), PeerState::new()),
        (None, None),
        config,
    )?;
    Ok((sa.stats().clone(), sb.stats().clone()))
}

fn sync(a: &mut Ledger, b: &mut Ledger) -> (SyncStats, SyncStats) {
    sync_with(a, b, SyncConfig::default()).expect("honest sync")
}

fn copy(l: &mut Ledger, node: u8) -> Ledger {
    Ledger::load(&l.save(), l.epoch(), &[node; 16], trust()).expect("reload")
}

#[test]
fn insert_refuses_unknown_allowance_and_bad_signature() {
    let (k, a) = wallet(1);
    let mut l = ledger(1);
    let h = header(&k, &a, 1, 100, 1);
    assert_eq!(
        l.insert(Entry::Header(h.clone())),
        Err(LedgerError::UnknownAllowance(a.id))
    );
    l.insert(Entry::Allowance(a.clone())).expect("allowance");
    // Signed by another wallet's key.
    let (other, _) = wallet(2);
    let forged = header(&other, &a, 1, 100, 1);
    assert!(matches!(
        l.insert(Entry::Header(forged)),
        Err(LedgerError::BadHeaderSignature { seq: 1, .. })
    ));
    assert_eq!(l.len(), 1, "only the allowance");
    assert_eq!(l.insert(Entry::Header(h.clone())), Ok(Inserted::New));
    assert_eq!(l.insert(Entry::Header(h)), Ok(Inserted::Known));
    assert_eq!(l.len(), 2);
}

#[test]
fn insert_refuses_an_allowance_from_an_untrusted_issuer() {
    let mut l = ledger(1);
    let mut terms = wallet(1).1.terms.clone();
    terms.issuer = key(9).public();
    let forged = Allowance::sign(terms, &key(9));
    assert!(matches!(
        l.insert(Entry::Allowance(forged)),
        Err(LedgerError::Allowance(PaymentError::UntrustedIssuer))
    ));
    assert!(l.is_empty());
}

#[test]
fn local_insert_of_a_fork_yields_a_proof_instead_of_the_header() {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    l.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("first");
    let Ok(Inserted::Conflict(proof)) = l.insert(Entry::Header(header(&k, &a, 1, 100, 2))) else {
        panic!("expected a conflict");
    };
    assert!(matches!(proof, ConflictProof::Fork { .. }));
    proof.verify(&a).expect("proof verifies");
    assert!(l.has_conflict(&a.id));
    assert_eq!(l.headers(&a.id).len(), 1, "the second header stays out");
    assert_eq!(l.proofs(), vec![proof]);
}

#[test]
fn local_insert_of_a_rewind_and_an_over_limit_header_yield_proofs() {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    l.insert(Entry::Header(header(&k, &a, 3, 900, 1)))
        .expect("first");
    let r = l.insert(Entry::Header(header(&k, &a, 5, 800, 2)));
    assert!(matches!(
        r,
        Ok(Inserted::Conflict(ConflictProof::Rewind { .. }))
    ));
    let (k2, a2) = wallet(2);
    l.insert(Entry::Allowance(a2.clone())).expect("allowance");
    let r = l.insert(Entry::Header(header(&k2, &a2, 1, 100_001, 1)));
    assert!(matches!(
        r,
        Ok(Inserted::Conflict(ConflictProof::OverLimit { .. }))
    ));
    assert!(l.has_conflict(&a2.id));
}

#[test]
fn sync_brings_two_ledgers_to_their_union_and_detects_a_fork_across_them() {
    let (k, a) = wallet(1);
    let mut left = with_wallets(1, &[1]);
    let mut right = with_wallets(2, &[1]);
    // Honest history known to both sides, then the same sequence spent at
    // two payees that cannot see each other.
    left.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h1");
    right
        .insert(Entry::Header(header(&k, &a, 2, 200, 2)))
        .expect("h2");
    left.insert(Entry::Header(header(&k, &a, 3, 300, 3)))
        .expect("h3 at left");
    right
        .insert(Entry::Header(header(&k, &a, 3, 300, 4)))
        .expect("h3 at right");
    assert!(!left.has_conflict(&a.id) && !right.has_conflict(&a.id));

    let (sl, sr) = sync(&mut left, &mut right);
    assert_eq!(left.digest(), right.digest());
    assert!(left.has_conflict(&a.id) && right.has_conflict(&a.id));
    assert!(!sl.new_proofs.is_empty() || !sr.new_proofs.is_empty());
    // Both forked headers are held (automerge keeps concurrent writes to
    // one key), and every proof verifies.
    assert_eq!(left.headers(&a.id).len(), 4);
    for p in left.proofs() {
        p.verify(&a).expect("proof verifies");
    }
    assert_eq!(left.entries(), right.entries());
}

#[test]
fn peers_already_in_sync_exchange_under_one_kilobyte() {
    let (k, a) = wallet(1);
    let mut left = with_wallets(1, &[1]);
    for seq in 1..=500u32 {
        left.insert(Entry::Header(header(&k, &a, seq, u64::from(seq) * 100, 1)))
            .expect("insert");
    }
    // Same entries, other history: a copy under another actor.
    let mut right = copy(&mut left, 2);
    let (sl, sr) = sync(&mut left, &mut right);
    assert!(
        sl.bytes_sent + sr.bytes_sent <= 1024,
        "{} bytes",
        sl.bytes_sent + sr.bytes_sent
    );
    assert_eq!(sl.rounds_received + sr.rounds_received, 0);
}

#[test]
fn a_second_session_after_more_payments_sends_only_the_difference() {
    let (k, a) = wallet(1);
    let mut left = with_wallets(1, &[1]);
    let mut right = with_wallets(2, &[1]);
    for seq in 1..=200u32 {
        left.insert(Entry::Header(header(&k, &a, seq, u64::from(seq) * 100, 1)))
            .expect("insert");
    }
    let (first, _) = sync(&mut left, &mut right);
    for seq in 201..=210u32 {
        left.insert(Entry::Header(header(&k, &a, seq, u64::from(seq) * 100, 1)))
            .expect("insert");
    }
    let (second, _) = sync(&mut left, &mut right);
    assert_eq!(left.digest(), right.digest());
    assert!(
        second.bytes_sent * 5 < first.bytes_sent,
        "second {} vs first {}",
        second.bytes_sent,
        first.bytes_sent
    );
}

#[test]
fn every_frame_size_gives_the_same_result() {
    let (k, a) = wallet(1);
    let (k2, a2) = wallet(2);
    let mut base_left = with_wallets(1, &[1, 2]);
    let mut base_right = with_wallets(2, &[1, 2]);
    for seq in 1..=40u32 {
        base_left
            .insert(Entry::Header(header(&k, &a, seq, u64::from(seq) * 100, 1)))
            .expect("insert");
        base_right
            .insert(Entry::Header(header(
                &k2,
                &a2,
                seq,
                u64::from(seq) * 100,
                2,
            )))
            .expect("insert");
    }
    base_right
        .insert(Entry::Header(header(&k, &a, 7, 700, 9)))
        .expect("a fork of seq 7");
    let mut results = Vec::new();
    for max_frame in [20, 185, 244, 512, 65_536] {
        let mut left = copy(&mut base_left, 1);
        let mut right = copy(&mut base_right, 2);
        let config = SyncConfig {
            max_frame,
            ..SyncConfig::default()
        };
        let (sl, _) = sync_with(&mut left, &mut right, config).expect("sync");
        assert_eq!(left.digest(), right.digest());
        assert!(left.has_conflict(&a.id));
        // Frames never exceed the size.
        assert!(sl.frames_sent * max_frame as u64 >= sl.bytes_sent);
        results.push(left.entries());
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn save_load_and_incremental_saves_round_trip() {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    l.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h1");
    let mut stored = l.save();
    l.insert(Entry::Header(header(&k, &a, 2, 200, 1)))
        .expect("h2");
    stored.extend(l.save_incremental());
    l.insert(Entry::Header(header(&k, &a, 2, 200, 2)))
        .expect("fork");
    stored.extend(l.save_incremental());
    let back = Ledger::load(&stored, 0, &[1; 16], trust()).expect("loads");
    assert_eq!(back.digest(), l.digest());
    assert_eq!(back.entries(), l.entries());
    assert!(back.has_conflict(&a.id));
}

/// What a node must store before a sync message leaves (protocol.md 9.7):
/// its own writes, not what it received.
#[test]
fn own_writes_are_unsaved_until_a_save_and_received_ones_never_are() {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    assert!(l.has_unsaved_own_writes(), "the allowance was written");
    let stored = l.save();
    assert!(!l.has_unsaved_own_writes());
    let mut back = Ledger::load(&stored, 0, &[1; 16], trust()).expect("loads");
    assert!(!back.has_unsaved_own_writes(), "a load is saved");
    l.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h1");
    assert!(l.has_unsaved_own_writes());
    let _ = l.save_incremental();
    assert!(!l.has_unsaved_own_writes());
    // Another node's changes arriving in a session are not its own.
    let mut peer = ledger(2);
    let _ = peer.save();
    sync_with(&mut peer, &mut l, SyncConfig::default()).expect("sync");
    assert_eq!(peer.digest(), l.digest());
    assert!(!peer.has_unsaved_own_writes(), "received changes only");
    // The reloaded copy that writes again has its own change to store.
    back.insert(Entry::Header(header(&k, &a, 2, 200, 1)))
        .expect("h2");
    assert!(back.has_unsaved_own_writes());
}

/// A ledger holding wallet 1's allowance and headers `1..=n` of it, one
/// change each.
fn with_headers(node: u8, n: u32) -> Ledger {
    let (k, a) = wallet(1);
    let mut l = with_wallets(node, &[1]);
    for seq in 1..=n {
        l.insert(Entry::Header(header(&k, &a, seq, 100 * u64::from(seq), 1)))
            .expect("header");
    }
    l
}

/// Peers' changes are staged: in the map, the digest and the clock, and
/// sent on to other peers, before automerge applies them (its apply walks
/// every key of the map once per call, so the replica applies many at
/// once). A full save applies them. An incremental save may leave them
/// out: a node that restarts from it lacks them, and a peer sends them
/// again (protocol.md 9.7).
#[test]
fn peers_changes_are_staged_sent_on_and_stored_by_a_full_save() {
    let mut x = with_headers(1, 20);
    let mut y = ledger(2);
    let base = y.save();
    sync(&mut x, &mut y);
    assert_eq!(y.digest(), x.digest());
    assert_eq!(y.all_headers().len(), 20);
    assert_eq!(y.replica().staged_len(), 21, "allowance and 20 headers");
    assert_eq!(y.replica().doc().get_changes(&[]).len(), 0);

    // A third node gets everything from y alone, staged changes included.
    let mut z = ledger(3);
    sync(&mut y, &mut z);
    assert_eq!(z.digest(), x.digest());
    assert_eq!(z.all_headers().len(), 20);

    // An incremental save leaves them out; x sends them again.
    let mut stored = base.clone();
    stored.extend(y.save_incremental());
    let mut restarted = Ledger::load(&stored, 0, &[2; 16], trust()).expect("loads");
    assert!(restarted.all_headers().is_empty());
    sync(&mut x, &mut restarted);
    assert_eq!(restarted.digest(), x.digest());

    // A full save applies them and stores them.
    let full = y.save();
    assert_eq!(y.replica().staged_len(), 0);
    assert_eq!(y.replica().doc().get_changes(&[]).len(), 21);
    let back = Ledger::load(&full, 0, &[2; 16], trust()).expect("loads");
    assert_eq!(back.digest(), x.digest());
    assert_eq!(back.all_headers().len(), 20);
}

/// A write of the node's own that rests on a staged entry (a payment's
/// header on an allowance a peer sent, which the write then leaves out)
/// applies the staged changes first: every save that holds the write
/// holds the allowance too, and loads.
#[test]
fn an_own_write_on_a_staged_allowance_is_stored_with_it() {
    let (k, a) = wallet(1);
    let mut x = with_wallets(1, &[1]);
    let mut y = ledger(2);
    let base = y.save();
    sync(&mut x, &mut y);
    assert_eq!(y.replica().staged_len(), 1);
    y.insert_payment(a.clone(), header(&k, &a, 1, 100, 1))
        .expect("payment");
    assert_eq!(y.replica().staged_len(), 0);
    let mut stored = base;
    stored.extend(y.save_incremental());
    let back = Ledger::load(&stored, 0, &[2; 16], trust()).expect("loads");
    assert_eq!(back.all_headers().len(), 1);
    assert_eq!(back.digest(), y.digest());
}

/// Staged changes are applied once they reach an eighth of the keys (at
/// least 64): a large backlog does not stay out of the document.
#[test]
fn staged_changes_are_applied_at_the_limit() {
    let mut x = with_headers(1, 150);
    let mut y = ledger(2);
    sync(&mut x, &mut y);
    assert_eq!(y.digest(), x.digest());
    let staged = y.replica().staged_len();
    let applied = y.replica().doc().get_changes(&[]).len();
    assert!(staged < 64, "{staged} staged");
    assert!(applied >= 64, "{applied} applied");
    assert_eq!(staged + applied, 151);
}

#[test]
fn damaged_saved_bytes_are_an_error() {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    l.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h1");
    let bytes = l.save();
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        assert!(Ledger::load(&bytes[..cut], 0, &[1; 16], trust()).is_err());
    }
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xFF;
    assert!(Ledger::load(&flipped, 0, &[1; 16], trust()).is_err());
    // Loading with another trust root refuses the allowance.
    assert!(Ledger::load(&bytes, 0, &[1; 16], TrustStore::new(key(9).public())).is_err());
}

#[test]
fn rotation_drops_what_settled_and_keeps_the_rest() {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    let mut ids = Vec::new();
    for seq in 1..=10u32 {
        let h = header(&k, &a, seq, u64::from(seq) * 100, 1);
        ids.push(h.id());
        l.insert(Entry::Header(h)).expect("insert");
    }
    let ack = SettlementAck::sign(
        SettlementAckTerms {
            serial: 1,
            issued_at: NOW,
            issuer: issuer().public(),
            outcomes: ids[..8].iter().map(|id| (*id, Outcome::Settled)).collect(),
        },
        &issuer(),
    );
    l.insert(Entry::Ack(ack)).expect("ack");
    let before = l.len();
    let rotation = l.rotate_epoch(NOW, &RetentionPolicy::default());
    assert_eq!(l.epoch(), 1);
    // The settled headers leave the document, not the ledger: held aside,
    // they still catch the wallet spending one of their numbers again.
    assert_eq!(rotation.dropped, 0);
    assert_eq!(l.len(), before - 8);
    assert_eq!(l.aside_len(), 8);
    assert_eq!(l.headers(&a.id).len(), 10);
    assert!(matches!(
        l.insert(Entry::Header(header(&k, &a, 3, 300, 2))),
        Ok(Inserted::Conflict(_))
    ));
    assert!(l.is_settled(&ids[0]));
    // Allowance still there: the wallet can keep paying.
    assert!(l.allowance(&a.id).is_some());
    // A clock run a month ahead, with no issuer-signed time that recent
    // (the allowance's issue and the acknowledgement are the newest),
    // drops nothing more: the rotation judges at most a week past them.
    let ahead = NOW.plus(30 * 86_400);
    l.rotate_epoch(ahead, &RetentionPolicy::default());
    assert!(l.allowance(&a.id).is_some());
    assert_eq!(l.headers(&a.id).len(), 10);
    // A week and a day later, with an acknowledgement of that day held,
    // everything expired goes too.
    let later = NOW.plus(9 * 86_400);
    l.insert(Entry::Ack(ack_at(2, &[], later)))
        .expect("later ack");
    l.rotate_epoch(later, &RetentionPolicy::default());
    assert!(l.allowance(&a.id).is_none());
}

// ---------------------------------------------------------------------------
// Hostile peers: each ends in the right error and no change to the ledger.

/// Feeds `frames` to a fresh session on `victim`; returns the first error.
fn feed(victim: &mut Ledger, frames: &[Vec<u8>], config: SyncConfig) -> SyncError {
    let mut s = SyncSession::new(victim, PeerState::new(), config, Millis(0));
    for (i, f) in frames.iter().enumerate() {
        if let Err(e) = s.handle_frame(victim, f, Millis(i as u64)) {
            assert!(s.is_failed());
            assert_eq!(
                s.handle_frame(victim, f, Millis(0)),
                Err(SyncError::AlreadyFailed)
            );
            return e;
        }
    }
    panic!("no error from hostile frames");
}

fn message_frames(m: &SyncMessage, max_frame: usize) -> Vec<Vec<u8>> {
    meshpay_proto::sync::frame::split(&m.encode(), max_frame)
}

fn victim() -> Ledger {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    l.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h1");
    l
}

#[test]
fn garbage_frames_are_refused_and_change_nothing() {
    let mut l = victim();
    let before = l.entries();
    let e = feed(&mut l, &[vec![]], SyncConfig::default());
    assert_eq!(e, SyncError::Frame(FrameError::Malformed));
    let e = feed(&mut l, &[vec![7, 1, 2, 3]], SyncConfig::default());
    assert_eq!(e, SyncError::Frame(FrameError::Malformed));
    let e = feed(
        &mut l,
        &[vec![1, 0xde, 0xad, 0xbe, 0xef]],
        SyncConfig::default(),
    );
    assert!(matches!(e, SyncError::Decode(_)));
    // A well-framed reconcile message that is not a clock message, after
    // a hello of the same epoch.
    let reconcile = message_frames(&SyncMessage::Reconcile(vec![0x42, 1, 2, 3]), 512);
    let hello = message_frames(
        &SyncMessage::Hello {
            epoch: l.epoch(),
            digest: Hash::tagged(b"other", b"ledger"),
            entries: 1,
        },
        512,
    );
    let frames: Vec<Vec<u8>> = hello.iter().chain(&reconcile).cloned().collect();
    let e = feed(&mut l, &frames, SyncConfig::default());
    assert!(
        matches!(e, SyncError::Ledger(LedgerError::Replica(_))),
        "{e:?}"
    );
    // Without the hello, which names the epoch, it is not even looked at.
    let e = feed(&mut l, &reconcile, SyncConfig::default());
    assert_eq!(e, SyncError::Unexpected("reconcile before hello"));
    assert_eq!(l.entries(), before);
}

#[test]
fn oversized_frames_and_messages_are_refused() {
    let mut l = victim();
    let before = l.entries();
    let config = SyncConfig {
        max_frame: 185,
        max_message: 1_000,
        ..SyncConfig::default()
    };
    let e = feed(&mut l, &[vec![1; 186]], config);
    assert_eq!(
        e,
        SyncError::Frame(FrameError::Oversized { len: 186, max: 185 })
    );
    let big = SyncMessage::Reconcile(vec![0; 5_000]);
    let e = feed(&mut l, &message_frames(&big, 185), config);
    assert_eq!(
        e,
        SyncError::Frame(FrameError::MessageTooLarge { max: 1_000 })
    );
    assert_eq!(l.entries(), before);
}

#[test]
fn endless_rounds_hit_the_cap() {
    let mut l = victim();
    let before = l.entries();
    // A peer that keeps opening fresh automerge conversations.
    let mut other = with_wallets(2, &[1]);
    let mut frames = message_frames(
        &SyncMessage::Hello {
            epoch: 0,
            digest: Hash([0; 32]),
            entries: 0,
        },
        512,
    );
    for _ in 0..20 {
        let m = other
            .sync_message(&mut PeerState::new())
            .expect("a fresh state always has a message");
        frames.extend(message_frames(&SyncMessage::Reconcile(m), 512));
    }
    let config = SyncConfig {
        max_rounds: 8,
        ..SyncConfig::default()
    };
    assert_eq!(feed(&mut l, &frames, config), SyncError::TooManyRounds(8));
    // What the honest-looking rounds carried (wallet 1's allowance, which
    // the victim had) changed nothing.
    assert_eq!(l.entries(), before);
}

#[test]
fn stalled_and_slow_peers_time_out() {
    let mut l = victim();
    let config = SyncConfig {
        stall_ms: 1_000,
        max_duration_ms: 5_000,
        ..SyncConfig::default()
    };
    let mut s = SyncSession::new(&l, PeerState::new(), config, Millis(0));
    assert_eq!(s.poll_timeout(), Some(Millis(1_000)));
    assert_eq!(s.handle_timeout(Millis(999)), Ok(()));
    assert_eq!(
        s.handle_timeout(Millis(1_000)),
        Err(SyncError::Stalled(1_000))
    );
    // A peer that dribbles a frame every 900 ms still hits the total cap.
    let mut s = SyncSession::new(&l, PeerState::new(), config, Millis(0));
    let mut t = 0;
    let dribble = loop {
        t += 900;
        if let Err(e) = s.handle_frame(&mut l, &[0x00, 0x01], Millis(t)) {
            break e;
        }
        if let Err(e) = s.handle_timeout(Millis(t)) {
            break e;
        }
    };
    assert_eq!(dribble, SyncError::TimedOut(5_000));
}

/// The message a hostile automerge document sends once it has heard the
/// victim's opening message (its clock): it carries the document's
/// changes.
fn hostile_message(victim: &mut Ledger, doc: &mut automerge::Automerge) -> Vec<u8> {
    let opening = victim.sync_message(&mut PeerState::new()).expect("opening");
    let opening = ClockMessage::decode(&opening).expect("decodes");
    assert!(opening.changes.is_empty(), "an opening carries no changes");
    ClockMessage {
        changes: doc
            .get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect(),
        ..ClockMessage::default()
    }
    .encode()
}

/// A hostile message carrying a raw document holding `puts`.
fn raw_message(victim: &mut Ledger, puts: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut doc = automerge::Automerge::new().with_actor(automerge::ActorId::from(&[9u8; 16][..]));
    let mut tx = doc.transaction();
    for (k, v) in puts {
        tx.put(
            automerge::ROOT,
            *k,
            automerge::ScalarValue::Bytes(v.clone()),
        )
        .expect("put");
    }
    tx.commit();
    hostile_message(victim, &mut doc)
}

fn reconcile_frames(message: Vec<u8>) -> Vec<Vec<u8>> {
    let mut frames = message_frames(
        &SyncMessage::Hello {
            epoch: 0,
            digest: Hash([1; 32]),
            entries: 1,
        },
        244,
    );
    frames.extend(message_frames(&SyncMessage::Reconcile(message), 244));
    frames
}

#[test]
fn forged_headers_from_a_peer_are_refused_and_change_nothing() {
    let (k, a) = wallet(1);
    let (stranger_key, stranger_allowance) = wallet(3);
    let mut l = victim();
    let before = (l.entries(), l.digest());

    // A header of a held allowance signed by the wrong key, among good ones.
    let forged = header(&stranger_key, &a, 2, 200, 1);
    let good = header(&k, &a, 3, 300, 1);
    let m = raw_message(
        &mut l,
        &[
            (
                &meshpay_proto::ledger::header_key(&a.id, 2),
                Entry::Header(forged.clone()).encode_value(),
            ),
            (
                &meshpay_proto::ledger::header_key(&a.id, 3),
                Entry::Header(good.clone()).encode_value(),
            ),
        ],
    );
    let e = feed(&mut l, &reconcile_frames(m), SyncConfig::default());
    assert!(
        matches!(
            e,
            SyncError::Ledger(LedgerError::BadHeaderSignature { seq: 2, .. })
        ),
        "{e:?}"
    );

    // A header for an allowance nobody sent.
    let orphan = header(&stranger_key, &stranger_allowance, 1, 100, 1);
    let m = raw_message(
        &mut l,
        &[(
            &meshpay_proto::ledger::header_key(&stranger_allowance.id, 1),
            Entry::Header(orphan.clone()).encode_value(),
        )],
    );
    let e = feed(&mut l, &reconcile_frames(m), SyncConfig::default());
    assert!(
        matches!(e, SyncError::Ledger(LedgerError::UnknownAllowance(_))),
        "{e:?}"
    );

    // A header moved to another sequence number: the key is part of what
    // was signed, so the moved header no longer verifies.
    let m = raw_message(
        &mut l,
        &[(
            &meshpay_proto::ledger::header_key(&a.id, 9),
            Entry::Header(good.clone()).encode_value(),
        )],
    );
    let e = feed(&mut l, &reconcile_frames(m), SyncConfig::default());
    assert!(
        matches!(
            e,
            SyncError::Ledger(LedgerError::BadHeaderSignature { seq: 9, .. })
        ),
        "{e:?}"
    );
    // A value that is not a header under a header key, and a key the
    // ledger does not know.
    let m = raw_message(
        &mut l,
        &[(&meshpay_proto::ledger::header_key(&a.id, 4), vec![1, 2, 3])],
    );
    let e = feed(&mut l, &reconcile_frames(m), SyncConfig::default());
    assert!(
        matches!(e, SyncError::Ledger(LedgerError::Entry(_))),
        "{e:?}"
    );
    let m = raw_message(&mut l, &[("zzz", vec![1, 2, 3])]);
    let e = feed(&mut l, &reconcile_frames(m), SyncConfig::default());
    assert!(
        matches!(e, SyncError::Ledger(LedgerError::Entry(_))),
        "{e:?}"
    );

    assert_eq!((l.entries(), l.digest()), before);
}

#[test]
fn forbidden_operations_from_a_peer_are_refused() {
    use automerge::transaction::Transactable;
    let mut l = victim();
    let before = l.entries();
    let mut doc = automerge::Automerge::new().with_actor(automerge::ActorId::from(&[9u8; 16][..]));
    let mut tx = doc.transaction();
    tx.put_object(automerge::ROOT, "nested", automerge::ObjType::Map)
        .expect("object");
    tx.commit();
    let m = hostile_message(&mut l, &mut doc);
    let e = feed(&mut l, &reconcile_frames(m), SyncConfig::default());
    assert!(
        matches!(
            e,
            SyncError::Ledger(LedgerError::Replica(
                meshpay_proto::ledger::ReplicaError::ForbiddenOperation(_)
            ))
        ),
        "{e:?}"
    );
    assert_eq!(l.entries(), before);
}

#[test]
fn a_forged_urgent_proof_is_refused() {
    let (k, a) = wallet(1);
    let mut l = victim();
    let before = l.entries();
    // Two headers that do not conflict dressed up as a fork.
    let h1 = header(&k, &a, 2, 200, 1);
    let h2 = header(&k, &a, 3, 300, 1);
    let (first, second) = if h1.id() < h2.id() {
        (h1, h2)
    } else {
        (h2, h1)
    };
    let fake = ConflictProof::Fork { first, second };
    let frames = message_frames(
        &SyncMessage::Urgent {
            proofs: vec![(a, fake)],
            revocations: None,
        },
        244,
    );
    let e = feed(&mut l, &frames, SyncConfig::default());
    assert!(
        matches!(e, SyncError::Ledger(LedgerError::Proof(_))),
        "{e:?}"
    );
    assert_eq!(l.entries(), before);
}

/// The messages a session sends until `stop` says so, decoded.
fn messages_until(
    s: &mut SyncSession,
    mut stop: impl FnMut(&SyncMessage) -> bool,
) -> Vec<SyncMessage> {
    let mut r = meshpay_proto::sync::frame::Reassembler::new(65_536, 1 << 20);
    let mut out = Vec::new();
    while let Some(f) = s.poll_transmit() {
        if let Some(m) = r.push(&f).expect("frame") {
            let m = SyncMessage::decode(&m).expect("message");
            let done = stop(&m);
            out.push(m);
            if done {
                break;
            }
        }
    }
    out
}

/// A ledger holding a proof against wallet 1's allowance (a fork at
/// sequence number 1), and that allowance.
fn convicting_wallet_1() -> (Ledger, Allowance) {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    l.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h1");
    l.insert(Entry::Header(header(&k, &a, 1, 100, 2)))
        .expect("fork → proof");
    (l, a)
}

#[test]
fn proofs_travel_first() {
    let (left, a) = convicting_wallet_1();
    let mut right = ledger(2);
    let mut sl = SyncSession::new(&left, PeerState::new(), SyncConfig::default(), Millis(0));
    let sent = messages_until(&mut sl, |_| true);
    assert!(
        matches!(sent[0], SyncMessage::Urgent { ref proofs, .. } if proofs.len() == 1),
        "{sent:?}"
    );
    assert!(sl.stats().urgent_bytes_sent > 0);
    // And a node that never saw the wallet takes the proof (with its
    // allowance) from that message alone.
    let mut sr = SyncSession::new(&right, PeerState::new(), SyncConfig::default(), Millis(0));
    for f in message_frames(&sent[0], 65_536) {
        sr.handle_frame(&mut right, &f, Millis(1))
            .expect("urgent accepted");
    }
    assert!(right.has_conflict(&a.id));
}

#[test]
fn urgent_carries_the_most_recent_convictions_and_reconciliation_the_rest() {
    use meshpay_proto::ledger::MAX_URGENT_PROOFS;
    let n = MAX_URGENT_PROOFS as u32 + 8;
    let wallets: Vec<u32> = (1..=n).collect();
    let mut left = with_wallets(1, &wallets);
    for &w in &wallets {
        let (k, a) = wallet(w);
        left.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
            .expect("first");
        assert!(matches!(
            left.insert(Entry::Header(header(&k, &a, 1, 100, 2))),
            Ok(Inserted::Conflict(_))
        ));
    }
    // One proof for each of the last MAX_URGENT_PROOFS convictions: the
    // message stays bounded however many the ledger holds.
    let (proofs, _) = left.urgent();
    assert_eq!(proofs.len(), MAX_URGENT_PROOFS);
    let newest: Vec<AllowanceId> = wallets[8..].iter().map(|&w| wallet(w).1.id).collect();
    let mut sent: Vec<AllowanceId> = proofs.iter().map(|p| p.allowance()).collect();
    sent.sort();
    let mut expected = newest.clone();
    expected.sort();
    assert_eq!(sent, expected);
    // A stranger gets the older ones by reconciliation.
    let mut right = ledger(2);
    sync(&mut left, &mut right);
    for &w in &wallets {
        assert!(right.has_conflict(&wallet(w).1.id), "wallet {w}");
    }
}

#[test]
fn proofs_are_not_sent_again_to_a_peer_known_to_hold_them() {
    let (mut left, _) = convicting_wallet_1();
    let mut right = ledger(2);
    let (first, _) = sync(&mut left, &mut right);
    assert!(first.urgent_bytes_sent > 0);
    // Both agreed while holding the proof: each side records the urgent
    // digest of that moment. New payments make the ledgers differ, so
    // they reconcile, but neither sends the proof again.
    let agreed = (left.urgent_digest(), right.urgent_digest());
    assert_eq!(agreed.0, agreed.1);
    let (k2, a2) = wallet(2);
    left.insert(Entry::Allowance(a2.clone()))
        .expect("allowance");
    left.insert(Entry::Header(header(&k2, &a2, 1, 100, 1)))
        .expect("payment");
    let (l, r) = run_knowing(&mut left, &mut right, (Some(agreed.0), Some(agreed.1)));
    assert_eq!((l.urgent_bytes_sent, r.urgent_bytes_sent), (0, 0));
    assert_eq!(left.digest(), right.digest());
    // A new conflict on one side changes its urgent digest: that side
    // sends what it holds first; the other, unchanged, does not.
    let agreed = left.urgent_digest();
    right
        .insert(Entry::Header(header(&k2, &a2, 1, 100, 9)))
        .expect("fork → proof");
    let (l, r) = run_knowing(&mut left, &mut right, (Some(agreed), Some(agreed)));
    assert_eq!(l.urgent_bytes_sent, 0);
    assert!(r.urgent_bytes_sent > 0);
    assert!(left.has_conflict(&a2.id));
}

/// A whole session between strangers whose sides know the urgent digests
/// they last agreed on; both sides' stats.
fn run_knowing(
    a: &mut Ledger,
    b: &mut Ledger,
    known: (Option<Hash>, Option<Hash>),
) -> (SyncStats, SyncStats) {
    let states = (PeerState::new(), PeerState::new());
    let (sa, sb) = run_session(a, b, states, known, SyncConfig::default()).expect("honest");
    (sa.stats().clone(), sb.stats().clone())
}

// ---------------------------------------------------------------------------
// Convergence and merge laws.

#[derive(Debug, Clone)]
enum Op {
    /// Node pays from wallet: an honest next payment.
    Pay { node: usize, wallet: u32 },
    /// The wallet spends its current sequence again at another node.
    DoubleSpend { node: usize, wallet: u32 },
    /// Two nodes meet.
    Sync { a: usize, b: usize },
}

/// The entries of `l` other than proofs, as a set: the values under one
/// forked header key come in an order that depends on automerge's history,
/// not only on which values are held.
fn fact_set(l: &Ledger) -> std::collections::BTreeSet<(String, Vec<u8>)> {
    l.entries()
        .into_iter()
        .filter(|e| !matches!(e, Entry::Proof(_)))
        .map(|e| (e.key(), e.encode_value()))
        .collect()
}

fn arb_ops(nodes: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0..nodes, 0u32..3).prop_map(|(node, wallet)| Op::Pay { node, wallet }),
        1 => (0..nodes, 0u32..3).prop_map(|(node, wallet)| Op::DoubleSpend { node, wallet }),
        3 => (0..nodes, 0..nodes).prop_map(|(a, b)| Op::Sync { a, b }),
    ];
    proptest::collection::vec(op, 1..40)
}

fn pair(ledgers: &mut [Ledger], a: usize, b: usize) -> (&mut Ledger, &mut Ledger) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = ledgers.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = ledgers.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random inserts (with double spends) and random meetings; once
    /// everyone has met everyone, all ledgers hold the same entries and
    /// every double-spent allowance has a proof at every node.
    #[test]
    fn random_schedules_converge_and_spread_every_proof(nodes in 3usize..6, ops in arb_ops(5)) {
        let mut ledgers: Vec<Ledger> = (0..nodes).map(|i| with_wallets(i as u8 + 1, &[0, 1, 2])).collect();
        let mut next_seq = [1u32; 3];
        let mut nonce = 0u8;
        let mut cheated = std::collections::BTreeSet::new();
        for op in ops {
            match op {
                Op::Pay { node, wallet: w } | Op::DoubleSpend { node, wallet: w } => {
                    let node = node % nodes;
                    let (k, a) = wallet(w);
                    let double = matches!(op, Op::DoubleSpend { .. }) && next_seq[w as usize] > 1;
                    let seq = if double { next_seq[w as usize] - 1 } else { next_seq[w as usize] };
                    nonce = nonce.wrapping_add(1);
                    let h = header(&k, &a, seq, u64::from(seq) * 100, nonce);
                    if double {
                        cheated.insert(a.id);
                    } else {
                        next_seq[w as usize] += 1;
                    }
                    let _ = ledgers[node].insert(Entry::Header(h)).expect("insert");
                }
                Op::Sync { a, b } => {
                    let (a, b) = (a % nodes, b % nodes);
                    if a != b {
                        let (x, y) = pair(&mut ledgers, a, b);
                        sync(x, y);
                        prop_assert_eq!(x.digest(), y.digest());
                    }
                }
            }
        }
        // Connect everyone: a chain there and back.
        for i in 0..nodes - 1 {
            let (x, y) = pair(&mut ledgers, i, i + 1);
            sync(x, y);
        }
        for i in (0..nodes - 1).rev() {
            let (x, y) = pair(&mut ledgers, i, i + 1);
            sync(x, y);
        }
        // Proofs are derived: which pair of headers a node turned into a
        // proof depends on the order it learnt them. Every other entry, and
        // which allowances stand convicted, is the same everywhere.
        let facts = |l: &Ledger| fact_set(l);
        let convicted = |l: &Ledger| l.proofs().iter().map(ConflictProof::allowance).collect::<std::collections::BTreeSet<_>>();
        for l in &ledgers {
            prop_assert_eq!(facts(l), facts(&ledgers[0]));
            prop_assert_eq!(convicted(l), convicted(&ledgers[0]));
            prop_assert_eq!(&convicted(l), &cheated);
            for id in &cheated {
                prop_assert!(l.has_conflict(id), "allowance {} has no proof", id);
            }
        }
    }

    /// Merge is commutative, associative and idempotent (as entry sets).
    #[test]
    fn merge_is_commutative_associative_and_idempotent(
        seqs in proptest::collection::vec((0usize..3, 1u32..6, any::<u8>()), 1..12)
    ) {
        let mut base: Vec<Ledger> = (0..3).map(|i| with_wallets(i as u8 + 1, &[0])).collect();
        let (k, a) = wallet(0);
        for (node, seq, n) in seqs {
            let _ = base[node].insert(Entry::Header(header(&k, &a, seq, u64::from(seq) * 100, n % 3)));
        }
        // (A ∪ B) ∪ C
        let mut ab = copy(&mut base[0], 11);
        let mut b = copy(&mut base[1], 12);
        sync(&mut ab, &mut b);
        let mut c = copy(&mut base[2], 13);
        sync(&mut ab, &mut c);
        // A ∪ (B ∪ C), merged the other way round
        let mut bc = copy(&mut base[1], 21);
        let mut c2 = copy(&mut base[2], 22);
        sync(&mut c2, &mut bc);
        let mut a2 = copy(&mut base[0], 23);
        sync(&mut bc, &mut a2);
        // Equal as sets of facts (proofs are derived, see above) and in
        // which allowances stand convicted.
        let facts = |l: &Ledger| fact_set(l);
        let convicted = |l: &Ledger| l.proofs().iter().map(ConflictProof::allowance).collect::<std::collections::BTreeSet<_>>();
        prop_assert_eq!(facts(&ab), facts(&bc));
        prop_assert_eq!(convicted(&ab), convicted(&bc));
        // Idempotent: merging with what it already holds changes nothing.
        let before = (ab.entries(), ab.digest());
        let mut same = copy(&mut ab, 31);
        sync(&mut ab, &mut same);
        prop_assert_eq!((ab.entries(), ab.digest()), before);
    }
}

#[test]
fn import_merges_a_saved_ledger_and_refuses_a_forged_one() {
    let (k, a) = wallet(1);
    let mut mine = with_wallets(1, &[1]);
    mine.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h1");
    let mut theirs = with_wallets(2, &[1]);
    theirs
        .insert(Entry::Header(header(&k, &a, 1, 100, 2)))
        .expect("fork");
    theirs
        .insert(Entry::Header(header(&k, &a, 2, 200, 2)))
        .expect("h2");
    let proofs = mine.import(&theirs.save()).expect("import");
    assert_eq!(proofs.len(), 1, "the fork across the two is found");
    assert_eq!(mine.headers(&a.id).len(), 3);

    // A saved document with a forged header is refused whole.
    use automerge::transaction::Transactable;
    let mut doc = automerge::Automerge::new();
    let mut tx = doc.transaction();
    let (other, _) = wallet(2);
    let forged = header(&other, &a, 3, 300, 1);
    tx.put(
        automerge::ROOT,
        meshpay_proto::ledger::header_key(&a.id, 3),
        automerge::ScalarValue::Bytes(Entry::Header(forged.clone()).encode_value()),
    )
    .expect("put");
    tx.commit();
    let before = (mine.entries(), mine.digest());
    assert!(matches!(
        mine.import(&doc.save()),
        Err(LedgerError::BadHeaderSignature { seq: 3, .. })
    ));
    assert_eq!((mine.entries(), mine.digest()), before);
}

// ---------------------------------------------------------------------------
// Review follow-ups.

#[test]
fn an_altered_copy_of_a_held_allowance_is_refused() {
    let (k, a) = wallet(1);
    let mut l = victim();
    let before = (l.entries(), l.digest());
    // Same id, other terms, an invalid signature: no keys needed to send it.
    let mut altered = a.clone();
    altered.terms.amount = 999_999_999;
    let key = meshpay_proto::ledger::allowance_key(&a.id);
    let m = raw_message(&mut l, &[(&key, altered.encode())]);
    let e = feed(&mut l, &reconcile_frames(m), SyncConfig::default());
    assert_eq!(e, SyncError::Ledger(LedgerError::KeyTaken(key.clone())));
    // Through the urgent path, with a genuine proof beside it.
    let h1 = header(&k, &a, 1, 100, 1);
    let h1b = header(&k, &a, 1, 100, 9);
    let proof = meshpay_proto::conflict::detect(&h1, &h1b).expect("fork");
    let frames = message_frames(
        &SyncMessage::Urgent {
            proofs: vec![(altered, proof)],
            revocations: None,
        },
        244,
    );
    let e = feed(&mut l, &frames, SyncConfig::default());
    assert_eq!(e, SyncError::Ledger(LedgerError::KeyTaken(key)));
    assert_eq!((l.entries(), l.digest()), before);
    // And the node still reloads what it saved.
    let back = Ledger::load(&l.save(), 0, &[1; 16], trust()).expect("reloads");
    assert_eq!(back.digest(), l.digest());
}

#[test]
fn urgent_entries_are_taken_all_or_nothing() {
    let (k, a) = wallet(1);
    let (k2, a2) = wallet(2);
    let mut l = ledger(5);
    let good =
        meshpay_proto::conflict::detect(&header(&k, &a, 1, 100, 1), &header(&k, &a, 1, 100, 2))
            .expect("fork");
    let h1 = header(&k2, &a2, 2, 200, 1);
    let h2 = header(&k2, &a2, 3, 300, 1);
    let (first, second) = if h1.id() < h2.id() {
        (h1, h2)
    } else {
        (h2, h1)
    };
    let fake = ConflictProof::Fork { first, second };
    let frames = message_frames(
        &SyncMessage::Urgent {
            proofs: vec![(a, good), (a2, fake)],
            revocations: None,
        },
        512,
    );
    let e = feed(&mut l, &frames, SyncConfig::default());
    assert!(
        matches!(e, SyncError::Ledger(LedgerError::Proof(_))),
        "{e:?}"
    );
    assert!(
        l.is_empty(),
        "nothing of the message entered: {:?}",
        l.entries()
    );
}

#[test]
fn an_ack_serial_reused_with_other_content_is_refused() {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    let h = header(&k, &a, 1, 100, 1);
    l.insert(Entry::Header(h.clone())).expect("h");
    let ack = |outcome| {
        SettlementAck::sign(
            SettlementAckTerms {
                serial: 7,
                issued_at: NOW,
                issuer: issuer().public(),
                outcomes: [(h.id(), outcome)].into_iter().collect(),
            },
            &issuer(),
        )
    };
    l.insert(Entry::Ack(ack(Outcome::Settled))).expect("first");
    let before = (l.entries(), l.digest());
    assert!(matches!(
        l.insert(Entry::Ack(ack(Outcome::Refused(Refusal::Conflicted)))),
        Err(LedgerError::KeyTaken(_))
    ));
    assert_eq!((l.entries(), l.digest()), before);
}

/// An acknowledgement settling `ids`.
fn ack_of(serial: u64, ids: &[TransferId]) -> SettlementAck {
    ack_at(serial, ids, NOW)
}

/// An acknowledgement settling `ids`, issued at `at`.
fn ack_at(serial: u64, ids: &[TransferId], at: Timestamp) -> SettlementAck {
    SettlementAck::sign(
        SettlementAckTerms {
            serial,
            issued_at: at,
            issuer: issuer().public(),
            outcomes: ids.iter().map(|id| (*id, Outcome::Settled)).collect(),
        },
        &issuer(),
    )
}

#[test]
fn peers_in_different_epochs_exchange_urgent_entries_but_do_not_reconcile() {
    let (k, a) = wallet(1);
    let mut left = with_wallets(1, &[1]);
    let mut right = with_wallets(2, &[1]);
    for seq in 1..=5u32 {
        left.insert(Entry::Header(header(&k, &a, seq, u64::from(seq) * 100, 1)))
            .expect("h");
    }
    sync(&mut left, &mut right);
    let policy = RetentionPolicy::default();
    let day = meshpay_proto::ledger::epoch_of(NOW);
    left.advance(NOW, &policy).expect("rotates");
    assert_eq!(left.epoch(), day);
    assert_eq!(
        left.advance(NOW, &policy),
        None,
        "already in the epoch of now"
    );
    // A fork that right alone holds: its proof crosses all the same.
    right
        .insert(Entry::Header(header(&k, &a, 5, 500, 2)))
        .expect("fork");
    assert!(right.has_conflict(&a.id));
    // Both sides send at once; each then reads the other's frames.
    let config = SyncConfig::default();
    let mut sl = SyncSession::new(&left, PeerState::new(), config, Millis(0));
    let mut sr = SyncSession::new(&right, PeerState::new(), config, Millis(0));
    let from_left: Vec<Vec<u8>> = std::iter::from_fn(|| sl.poll_transmit()).collect();
    let from_right: Vec<Vec<u8>> = std::iter::from_fn(|| sr.poll_transmit()).collect();
    let left_saw = from_right
        .iter()
        .map(|f| sl.handle_frame(&mut left, f, Millis(1)))
        .find_map(Result::err);
    let right_saw = from_left
        .iter()
        .map(|f| sr.handle_frame(&mut right, f, Millis(1)))
        .find_map(Result::err);
    assert_eq!(
        left_saw,
        Some(SyncError::EpochMismatch {
            ours: day,
            theirs: 0
        })
    );
    assert_eq!(
        right_saw,
        Some(SyncError::EpochMismatch {
            ours: 0,
            theirs: day
        })
    );
    assert!(sl.is_failed() && sr.is_failed());
    assert!(left.has_conflict(&a.id), "urgent entries cross epochs");
    // Once right rotates too, they reconcile.
    right.advance(NOW, &policy).expect("rotates");
    sync(&mut left, &mut right);
    assert_eq!(left.digest(), right.digest());
}

#[test]
fn a_rotation_writes_back_only_what_the_node_wrote_and_holds_the_rest_aside() {
    let (k, a) = wallet(1);
    let policy = RetentionPolicy::default();
    // Left is the payee that wrote headers 1-5; right learnt them.
    let mut left = ledger(1);
    for seq in 1..=5u32 {
        left.insert_payment(a.clone(), header(&k, &a, seq, u64::from(seq) * 100, 1))
            .expect("payment");
    }
    let mut right = ledger(2);
    sync(&mut left, &mut right);
    let settled = [
        header(&k, &a, 1, 100, 1).id(),
        header(&k, &a, 2, 200, 1).id(),
    ];
    // Settlement's acknowledgement reaches right, then left.
    right.insert(Entry::Ack(ack_of(1, &settled))).expect("ack");
    sync(&mut left, &mut right);
    let l = left.advance(NOW, &policy).expect("left rotates");
    let r = right.advance(NOW, &policy).expect("right rotates");
    // Kept by both: the allowance, the five headers and the
    // acknowledgement.
    assert_eq!((l.kept, l.dropped), (7, 0));
    assert_eq!((r.kept, r.dropped), (7, 0));
    // Left wrote the allowance and the unsettled headers 3-5 (the settled
    // ones stay aside); right the acknowledgement.
    assert_eq!((l.written, left.len(), left.aside_len()), (4, 4, 3));
    assert_eq!((r.written, right.len(), right.aside_len()), (1, 1, 6));
    // Right still checks and compares against what it holds aside.
    assert_eq!(right.headers(&a.id).len(), 5);
    assert!(right.allowance(&a.id).is_some());
    assert!(matches!(
        right.insert(Entry::Header(header(&k, &a, 4, 400, 2))),
        Ok(Inserted::Conflict(_))
    ));
    // Each side receives only what the other wrote in the new epoch: the
    // kept entries do not travel again.
    let mut again = ledger(2);
    again.insert(Entry::Ack(ack_of(1, &settled))).expect("ack");
    again.advance(NOW, &policy).expect("rotates");
    let (sl, sa) = sync(&mut left, &mut again);
    assert_eq!(left.digest(), again.digest());
    assert_eq!(again.len(), 5);
    assert_eq!(again.aside_len(), 0, "the writes arrived: nothing aside");
    assert!(
        sl.bytes_sent < 2_000 && sa.bytes_sent < 1_000,
        "only the two rewrites travel: {} and {} bytes",
        sl.bytes_sent,
        sa.bytes_sent
    );
    // The aside part is stored beside the document and comes back.
    let saved = left.save();
    let back = Ledger::load_with_aside(&saved, &left.save_aside(), left.epoch(), &[1; 16], trust())
        .expect("reload");
    assert_eq!(back.digest(), left.digest());
    assert_eq!(back.held_len(), left.held_len());
}

#[test]
fn a_header_written_after_a_rotation_brings_its_allowance_into_the_new_document() {
    let (k, a) = wallet(1);
    let policy = RetentionPolicy::default();
    let mut payer_side = ledger(1);
    payer_side
        .insert_payment(a.clone(), header(&k, &a, 1, 100, 1))
        .expect("payment");
    let mut payee = ledger(2);
    sync(&mut payer_side, &mut payee);
    payee.advance(NOW, &policy).expect("rotates");
    assert_eq!(payee.len(), 0, "nothing of its own to write back");
    // The payee takes a new payment: the allowance is only aside, so the
    // write carries it.
    payee
        .insert(Entry::Header(header(&k, &a, 2, 200, 1)))
        .expect("header");
    assert_eq!(payee.len(), 2);
    // A node new to the epoch, that never held the allowance, checks the
    // header.
    let mut stranger = ledger(3);
    stranger.advance(NOW, &policy).expect("rotates");
    sync(&mut payee, &mut stranger);
    assert_eq!(stranger.headers(&a.id).len(), 1);
    assert!(stranger.allowance(&a.id).is_some());
}

#[test]
fn rotation_keeps_one_value_per_forked_key_and_its_proof() {
    let (k, a) = wallet(1);
    let mut left = with_wallets(1, &[1]);
    let mut right = with_wallets(2, &[1]);
    left.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h");
    right
        .insert(Entry::Header(header(&k, &a, 1, 100, 2)))
        .expect("fork");
    sync(&mut left, &mut right);
    assert_eq!(left.headers(&a.id).len(), 2);
    left.rotate_epoch(NOW, &RetentionPolicy::default());
    assert_eq!(left.headers(&a.id).len(), 1);
    assert!(left.has_conflict(&a.id));
    let back = Ledger::load_with_aside(
        &left.save(),
        &left.save_aside(),
        left.epoch(),
        &[1; 16],
        trust(),
    )
    .expect("reload");
    assert_eq!(back.digest(), left.digest());
    assert_eq!(back.held_len(), left.held_len());
    assert_eq!(back.headers(&a.id).len(), 1);
    assert!(back.has_conflict(&a.id));
}

#[test]
fn rotation_drops_headers_whose_allowance_it_drops() {
    let (k, a) = wallet(1);
    let mut l = with_wallets(1, &[1]);
    l.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h");
    // Settlement's word that a month has passed (an acknowledgement of
    // that day).
    let later = NOW.plus(30 * 86_400);
    l.insert(Entry::Ack(ack_at(1, &[], later))).expect("ack");
    l.rotate_epoch(later, &RetentionPolicy::default());
    assert!(
        l.entries().iter().all(|e| matches!(e, Entry::Ack(_))),
        "{:?}",
        l.entries()
    );
    Ledger::load(&l.save(), l.epoch(), &[1; 16], trust()).expect("reloads");
}

/// `message` (a reconciliation message) with its changes replaced by
/// `changes`, as a peer whose Bloom filter gave a false positive sends it.
fn with_changes(message: &[u8], changes: &[&automerge::Change]) -> Vec<u8> {
    let mut m = ClockMessage::decode(message).expect("decodes");
    m.changes = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
    m.encode()
}

/// The changes of `l`'s document, oldest first.
fn changes_of(l: &Ledger) -> Vec<automerge::Change> {
    l.replica().doc().get_changes(&[])
}

#[test]
fn a_header_sent_before_its_allowance_waits_for_it_within_the_session() {
    let (k, a) = wallet(1);
    // One writer wrote the allowance, another the header.
    let mut first = with_wallets(1, &[1]);
    let mut sender = copy(&mut first, 3);
    let h = header(&k, &a, 1, 100, 1);
    sender.insert(Entry::Header(h.clone())).expect("header");
    let changes = changes_of(&sender);
    assert_eq!(
        changes.len(),
        2,
        "one change for the allowance, one for the header"
    );

    let mut receiver = ledger(2);
    let (mut s_state, mut r_state) = (PeerState::new(), PeerState::new());
    let opening = receiver.sync_message(&mut r_state).expect("opening");
    sender
        .receive(&mut s_state, &opening)
        .expect("opening accepted");
    let full = sender.sync_message(&mut s_state).expect("changes");
    // The allowance's change is left out, as a receiver that dropped its
    // held-back changes, or a message cut between the two, would see.
    let only_header = with_changes(&full, &[&changes[1]]);
    let proofs = receiver
        .receive(&mut r_state, &only_header)
        .expect("a header whose allowance is missing is held, not refused");
    assert!(proofs.is_empty());
    assert_eq!(receiver.len(), 0, "nothing is visible before its allowance");
    assert_eq!(receiver.waiting_units(), 1);

    // The receiver asks for the missing change; the sender sends it.
    let ask = receiver.sync_message(&mut r_state).expect("asks");
    let asked = ClockMessage::decode(&ask).expect("decodes");
    assert_eq!(asked.need, vec![changes[0].hash().0]);
    sender.receive(&mut s_state, &ask).expect("ask accepted");
    let answer = sender.sync_message(&mut s_state).expect("answer");
    receiver
        .receive(&mut r_state, &answer)
        .expect("allowance arrives");
    assert_eq!(receiver.waiting_units(), 0);
    assert_eq!(receiver.all_headers(), vec![h]);
    assert_eq!(receiver.digest(), sender.digest());
}

#[test]
fn an_entry_written_here_while_a_peers_change_with_it_waits_is_counted_once() {
    let (k, a) = wallet(1);
    // The sender's change holding wallet 1's allowance depends on an
    // earlier change (wallet 2's allowance, by another writer).
    let mut first = with_wallets(1, &[2]);
    let mut sender = copy(&mut first, 3);
    sender
        .insert_payment(a.clone(), header(&k, &a, 1, 100, 1))
        .expect("payment");
    let changes = changes_of(&sender);
    assert_eq!(changes.len(), 2);
    let mut receiver = ledger(2);
    let (mut s_state, mut r_state) = (PeerState::new(), PeerState::new());
    let opening = receiver.sync_message(&mut r_state).expect("opening");
    sender.receive(&mut s_state, &opening).expect("opening");
    let full = sender.sync_message(&mut s_state).expect("changes");
    receiver
        .receive(&mut r_state, &with_changes(&full, &[&changes[1]]))
        .expect("held back");
    assert_eq!(receiver.waiting_units(), 1);
    // Meanwhile the receiver takes a payment from the same wallet: its
    // own change writes the allowance too.
    receiver
        .insert_payment(a.clone(), header(&k, &a, 2, 200, 1))
        .expect("payment");
    // Once the waiting change is applied, the allowance is still one
    // entry: the two ledgers agree.
    sync(&mut sender, &mut receiver);
    assert_eq!(receiver.waiting_units(), 0);
    assert_eq!(receiver.len(), receiver.entries().len());
    assert_eq!(receiver.digest(), sender.digest());
}

#[test]
fn a_forged_change_waiting_on_an_honest_one_is_dropped_when_that_one_arrives() {
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;
    let (_, a) = wallet(1);
    let (stranger, _) = wallet(3);
    let mut honest = with_wallets(1, &[1]);
    let allowance_change = changes_of(&honest).remove(0);

    // An attacker builds on the honest change a header of that allowance
    // that its wallet never signed, and sends it alone.
    let mut evil = honest
        .replica()
        .doc()
        .fork()
        .with_actor(automerge::ActorId::from(&[9u8; 16][..]));
    let forged = header(&stranger, &a, 1, 100, 1);
    let mut tx = evil.transaction();
    tx.put(
        automerge::ROOT,
        meshpay_proto::ledger::header_key(&a.id, 1),
        automerge::ScalarValue::Bytes(Entry::Header(forged).encode_value()),
    )
    .expect("put");
    tx.commit();
    let forged_change = evil.get_last_local_change().expect("change").clone();
    assert_eq!(forged_change.deps(), &[allowance_change.hash()]);

    let mut victim = ledger(2);
    let mut state = PeerState::new();
    let opening = victim.sync_message(&mut state).expect("opening");
    let carrier = with_changes(&opening, &[&forged_change]);
    victim
        .receive(&mut state, &carrier)
        .expect("held: it cannot be checked yet");
    assert_eq!(victim.waiting_units(), 1);
    // Saving leaves the unchecked change out: a reload cannot apply it.
    let reloaded = Ledger::load(&victim.save(), 0, &[2; 16], trust()).expect("reload");
    assert_eq!(reloaded.replica().doc().get_changes(&[]).len(), 0);
    // Nor does a save that kept it (as older versions saved): loading drops
    // what waits.
    let old_style = victim.replica().doc().save();
    let reloaded = Ledger::load(&old_style, 0, &[2; 16], trust()).expect("reload");
    assert!(reloaded.replica().doc().get_missing_deps(&[]).is_empty());
    assert!(!victim.replica().doc().get_missing_deps(&[]).is_empty());

    // The honest change arrives: the forged one would become ready, fails
    // its check, and is dropped; the honest one is taken.
    sync(&mut honest, &mut victim);
    assert_eq!(victim.waiting_units(), 0);
    assert!(victim.all_headers().is_empty());
    assert_eq!(victim.digest(), honest.digest());
    assert!(
        victim
            .replica()
            .doc()
            .get_change_by_hash(&forged_change.hash())
            .is_none()
    );
}

/// An honest session to its end from the given peer states; the states it
/// leaves.
fn session_with_states(
    x: &mut Ledger,
    y: &mut Ledger,
    states: (PeerState, PeerState),
) -> (PeerState, PeerState) {
    let (sx, sy) = run_session(x, y, states, (None, None), SyncConfig::default()).expect("honest");
    (sx.into_peer_state(), sy.into_peer_state())
}

#[test]
fn a_peer_state_kept_in_memory_does_not_keep_a_change_from_being_sent_again() {
    let (k, a) = wallet(1);
    let mut x = with_wallets(1, &[1]);
    // History enough that one new change is a small part of it (automerge
    // sends the whole document instead when a third of it is missing).
    for seq in 1..=12 {
        x.insert(Entry::Header(header(&k, &a, seq, u64::from(seq) * 100, 1)))
            .expect("header");
    }
    let mut y = copy(&mut x, 2);
    let (px, py) = session_with_states(&mut x, &mut y, (PeerState::new(), PeerState::new()));

    // x learns a payment and sends it to y, but y dies before it answers or
    // stores its ledger: it comes back as it was.
    x.insert(Entry::Header(header(&k, &a, 13, 1_300, 1)))
        .expect("header");
    let mut lost = copy(&mut y, 3);
    let config = SyncConfig::default();
    let mut sx = SyncSession::new(&x, px, config, Millis(0));
    let mut sy = SyncSession::new(&lost, py.clone(), config, Millis(0));
    while lost.all_headers().len() < 13 {
        let f = sx.poll_transmit().expect("x has more to send");
        sy.handle_frame(&mut lost, &f, Millis(0)).expect("honest");
        if let Some(f) = sy.poll_transmit() {
            sx.handle_frame(&mut x, &f, Millis(0)).expect("honest");
        }
    }
    let px = sx.into_peer_state();

    // Next meeting: x still holds in memory the state that says it sent the
    // change. It is sent again all the same.
    session_with_states(&mut x, &mut y, (px, py));
    assert_eq!(y.digest(), x.digest());
    assert_eq!(y.all_headers().len(), 13);
}

/// The actors that wrote the changes of a ledger's replica (a full save
/// first applies the staged ones).
fn writers(l: &mut Ledger) -> std::collections::BTreeSet<Vec<u8>> {
    let _ = l.save();
    l.replica()
        .doc()
        .get_changes_meta(&[])
        .iter()
        .map(|m| m.actor.to_bytes().to_vec())
        .collect()
}

#[test]
fn a_proof_learnt_from_urgent_is_not_written_again_by_its_receiver() {
    let (mut left, a) = convicting_wallet_1();
    let mut right = ledger(2);
    let (first, _) = sync(&mut left, &mut right);
    assert!(first.urgent_bytes_sent > 0, "the proof went first");
    // The right side learnt the proof from the Urgent message, then got
    // the left side's own write of it by reconciliation: it holds that
    // one, and wrote nothing itself (a copy of its own would be one more
    // change for every node to receive).
    assert!(right.has_conflict(&a.id));
    assert_eq!(right.proofs(), left.proofs());
    assert_eq!(right.aside_len(), 0);
    assert_eq!(right.digest(), left.digest());
    assert_eq!(
        writers(&mut right),
        [[1u8; 16].to_vec()].into_iter().collect(),
        "every change in the right replica is the left side's"
    );
}

#[test]
fn a_proof_held_aside_is_sent_on_survives_a_reload_and_leaves_when_its_write_arrives() {
    let (mut left, a) = convicting_wallet_1();
    let mut right = ledger(2);
    // Only the Urgent message reaches the right side (the link is lost).
    let mut sl = SyncSession::new(&left, PeerState::new(), SyncConfig::default(), Millis(0));
    let sent = messages_until(&mut sl, |_| true);
    let mut sr = SyncSession::new(&right, PeerState::new(), SyncConfig::default(), Millis(0));
    for f in message_frames(&sent[0], 65_536) {
        sr.handle_frame(&mut right, &f, Millis(1))
            .expect("urgent accepted");
    }
    assert!(right.has_conflict(&a.id));
    assert_eq!(right.aside_len(), 2, "the proof and its allowance");
    assert!(right.is_empty(), "nothing written into the replica");
    assert_eq!(right.proofs(), left.proofs());
    // A reload keeps it (the node stores the aside bytes beside the ledger).
    let mut right = Ledger::load_with_aside(
        &right.save(),
        &right.save_aside(),
        right.epoch(),
        &[2; 16],
        trust(),
    )
    .expect("reload");
    assert!(right.has_conflict(&a.id));
    assert_eq!(right.proofs(), left.proofs());
    // Damaged aside bytes are an error, not a panic.
    assert!(Ledger::load_with_aside(&right.save(), b"\xff\xff", 0, &[2; 16], trust()).is_err());
    // The right side passes it on first to a third that never met the left.
    let mut third = ledger(3);
    let (from_right, _) = sync(&mut right, &mut third);
    assert!(from_right.urgent_bytes_sent > 0);
    assert!(third.has_conflict(&a.id));
    // Once the left side's own write arrives, nothing is held aside.
    sync(&mut left, &mut right);
    assert_eq!(right.aside_len(), 0);
    assert_eq!(right.proofs(), left.proofs());
    assert_eq!(right.digest(), left.digest());
    assert!(!writers(&mut right).contains([2u8; 16].as_slice()));
}

#[test]
fn a_payment_and_its_new_allowance_are_one_change() {
    let (k, a) = wallet(1);
    let mut l = ledger(1);
    let changes = |l: &Ledger| l.replica().doc().get_changes_meta(&[]).len();
    let r = l
        .insert_payment(a.clone(), header(&k, &a, 1, 100, 1))
        .expect("payment");
    assert_eq!(r, Inserted::New);
    assert_eq!(
        (l.len(), changes(&l)),
        (2, 1),
        "allowance and header, one change"
    );
    // The allowance is held now: the next payment writes its header alone.
    l.insert_payment(a.clone(), header(&k, &a, 2, 200, 1))
        .expect("payment");
    assert_eq!((l.len(), changes(&l)), (3, 2));
    // A fork still gives a proof, and a peer checks what it receives.
    let r = l
        .insert_payment(a.clone(), header(&k, &a, 2, 200, 2))
        .expect("fork");
    assert!(matches!(r, Inserted::Conflict(_)), "{r:?}");
    let mut other = ledger(2);
    sync(&mut l, &mut other);
    assert_eq!(fact_set(&l), fact_set(&other));
    assert!(other.has_conflict(&a.id));
    // A header whose allowance is new is refused with the allowance if its
    // signature is bad, and a forged allowance is refused outright.
    let (k2, a2) = wallet(2);
    let mut bad = header(&k2, &a2, 1, 100, 1);
    bad.signature = header(&k2, &a2, 1, 100, 2).signature;
    let before = l.len();
    assert!(l.insert_payment(a2.clone(), bad).is_err());
    assert_eq!(l.len(), before + 1, "the allowance, checked, is kept");
    let (k3, a3) = wallet(3);
    let mut terms = a3.terms.clone();
    terms.issuer = key(9).public();
    let forged = Allowance::sign(terms, &key(9));
    assert!(matches!(
        l.insert_payment(forged.clone(), header(&k3, &forged, 1, 100, 1)),
        Err(LedgerError::Allowance(PaymentError::UntrustedIssuer))
    ));
    assert_eq!(l.len(), before + 1);
}

/// Reconciliation messages stay bounded however much one side lacks: a
/// ledger of more than `MAX_CHANGE_BYTES` of changes reaches an empty
/// one in several messages, each within the bound, and the two end equal.
#[test]
fn a_ledger_larger_than_one_message_syncs_in_bounded_messages() {
    use meshpay_proto::ledger::MAX_CHANGE_BYTES;
    let mut left = ledger(1);
    for w in 1..=10u32 {
        let (k, a) = wallet(w);
        left.insert(Entry::Allowance(a.clone())).expect("allowance");
        for seq in 1..=500u32 {
            left.insert(Entry::Header(header(&k, &a, seq, u64::from(seq) * 100, 1)))
                .expect("header");
        }
    }
    // Loaded from storage, so every change is read from the document (none
    // is at hand from having just been received).
    let mut left = copy(&mut left, 1);
    let mut right = ledger(2);
    let (mut ls, mut rs) = (PeerState::new(), PeerState::new());
    let opening = right.sync_message(&mut rs).expect("opening");
    left.receive(&mut ls, &opening).expect("opening accepted");
    let mut carrying = 0;
    let mut total = 0;
    while let Some(m) = left.sync_message(&mut ls) {
        let parsed = ClockMessage::decode_limited(&m, usize::MAX).expect("decodes");
        let change_bytes: usize = parsed.changes.iter().map(Vec::len).sum();
        assert!(change_bytes <= MAX_CHANGE_BYTES, "{change_bytes} bytes");
        total += change_bytes;
        carrying += usize::from(!parsed.changes.is_empty());
        right.receive(&mut rs, &m).expect("honest");
        assert_eq!(right.waiting_units(), 0, "every message is causally closed");
    }
    assert!(total > MAX_CHANGE_BYTES, "the test ledger is too small");
    assert!(carrying >= 2, "{carrying} messages");
    assert_eq!(right.len(), left.len());
    assert_eq!(right.digest(), left.digest());
    // Nothing more to say either way.
    assert!(right.sync_message(&mut rs).is_none());
}

#[test]
fn malformed_clocks_are_refused_and_change_nothing() {
    let mut l = victim();
    let before = l.entries();
    let bad = [
        vec![(vec![2u8; 16], 1), (vec![1u8; 16], 1)],
        vec![(vec![1u8; 16], 1), (vec![1u8; 16], 2)],
        vec![(vec![1u8; 16], 0)],
        vec![(Vec::new(), 1)],
        vec![(vec![1u8; meshpay_proto::ledger::MAX_ACTOR_LEN + 1], 1)],
    ];
    let mut messages: Vec<ClockMessage> = bad
        .into_iter()
        .map(|clock| ClockMessage {
            covers: u32::MAX,
            clock,
            ..ClockMessage::default()
        })
        .collect();
    // An entry in a bucket the message does not say it covers.
    messages.push(ClockMessage {
        covers: 0,
        clock: vec![(vec![1u8; 16], 1)],
        ..ClockMessage::default()
    });
    // A summary with the wrong number of buckets.
    messages.push(ClockMessage {
        summary: vec![[0u8; 8]; meshpay_proto::ledger::CLOCK_BUCKETS - 1],
        ..ClockMessage::default()
    });
    for m in messages {
        let e = l
            .receive(&mut PeerState::new(), &m.encode())
            .expect_err("refused");
        assert!(
            matches!(
                e,
                LedgerError::Replica(meshpay_proto::ledger::ReplicaError::Malformed(_))
            ),
            "{m:?}: {e:?}"
        );
    }
    assert_eq!(l.entries(), before);
}

/// A ledger with `n` writers besides its own: writer `w` (actor `[w; 16]`)
/// wrote wallet `w`'s allowance.
fn with_writers(node: u8, n: u8) -> Ledger {
    let mut l = ledger(node);
    for w in 1..=n {
        let mut writer = with_wallets(w, &[u32::from(w)]);
        l.import(&writer.save()).expect("import");
    }
    l
}

/// With many writers, peers exchange a summary of their clocks and then
/// only the buckets that differ: less than their whole clocks, however
/// many writers they share.
#[test]
fn many_writers_sync_by_clock_summary() {
    use meshpay_proto::ledger::SMALL_CLOCK;
    let mut base = with_writers(200, 100);
    let mut left = copy(&mut base, 201);
    let mut right = copy(&mut base, 202);
    assert!(left.replica().clock(u32::MAX).len() > SMALL_CLOCK);
    // Each side learns something of its own.
    let (k, a) = wallet(1);
    left.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("header");
    let mut newcomer = with_wallets(150, &[150]);
    right.import(&newcomer.save()).expect("import");
    let whole_clocks: usize = [&left, &right]
        .iter()
        .map(|l| {
            ClockMessage {
                covers: u32::MAX,
                clock: l.replica().clock(u32::MAX),
                ..ClockMessage::default()
            }
            .encode()
            .len()
        })
        .sum();
    let (sl, sr) = sync(&mut left, &mut right);
    assert_eq!(left.digest(), right.digest());
    assert_eq!(left.len(), base.len() + 2);
    let total = sl.bytes_sent + sr.bytes_sent;
    assert!(
        (total as usize) < whole_clocks,
        "{total} bytes in all, the two clocks alone are {whole_clocks}"
    );
    // A stranger with nothing (a small clock) gets everything from a
    // summary-sending peer.
    let mut empty = ledger(203);
    sync(&mut left, &mut empty);
    assert_eq!(empty.digest(), left.digest());
    assert_eq!(empty.len(), left.len());
}

/// `n` empty changes written by `actor`, oldest first.
fn empty_changes(actor: &[u8], n: usize) -> Vec<automerge::Change> {
    let mut doc = automerge::Automerge::new().with_actor(automerge::ActorId::from(actor));
    for _ in 0..n {
        doc.empty_commit(automerge::transaction::CommitOptions::default().with_time(0));
    }
    doc.get_changes(&[])
}

fn carrying(changes: &[&automerge::Change]) -> Vec<u8> {
    ClockMessage {
        changes: changes.iter().map(|c| c.raw_bytes().to_vec()).collect(),
        ..ClockMessage::default()
    }
    .encode()
}

/// automerge 0.12 panics on a change whose writer's previous change it
/// lacks, or that reuses a writer's sequence number: such changes are left
/// out or refused before they reach it.
#[test]
fn changes_out_of_their_writers_order_never_reach_automerge() {
    let writer = [7u8; 16];
    let mut l = victim();
    let before = l.entries();
    let ours = empty_changes(&writer, 2);
    // The second change alone: left out, nothing applied.
    l.receive(&mut PeerState::new(), &carrying(&[&ours[1]]))
        .expect("left out, not refused");
    assert!(
        !l.replica()
            .clock(u32::MAX)
            .iter()
            .any(|(a, _)| a[..] == writer)
    );
    // Both, in order: taken.
    l.receive(&mut PeerState::new(), &carrying(&[&ours[0], &ours[1]]))
        .expect("taken");
    assert!(l.replica().clock(u32::MAX).contains(&(writer.to_vec(), 2)));
    // Another first change by the same writer: a forked writer, refused.
    let mut other = automerge::Automerge::new().with_actor(automerge::ActorId::from(&writer[..]));
    let mut tx = other.transaction();
    use automerge::transaction::Transactable;
    tx.put(automerge::ROOT, "x", automerge::ScalarValue::Bytes(vec![1]))
        .expect("put");
    tx.commit();
    let fork = other.get_changes(&[]);
    let e = l
        .receive(&mut PeerState::new(), &carrying(&[&fork[0]]))
        .expect_err("refused");
    assert!(
        matches!(
            e,
            LedgerError::Replica(meshpay_proto::ledger::ReplicaError::Malformed(_))
        ),
        "{e:?}"
    );
    // A writer id longer than any clock may carry: refused.
    let long = empty_changes(&[1u8; meshpay_proto::ledger::MAX_ACTOR_LEN + 1], 1);
    assert!(
        l.receive(&mut PeerState::new(), &carrying(&[&long[0]]))
            .is_err()
    );
    assert_eq!(l.entries(), before);
}

/// When a forged change makes the receiver drop everything it held back,
/// honest changes the sender already sent go with it; the receiver's next
/// message says so (`resend`), and the sender sends them again within the
/// same session.
#[test]
fn honest_changes_dropped_with_a_forged_one_are_sent_again_in_the_session() {
    use automerge::transaction::Transactable;
    let (k, a) = wallet(1);
    let (stranger, _) = wallet(3);
    let mut first = with_wallets(1, &[1]);
    let mut honest = copy(&mut first, 3);
    let h = header(&k, &a, 1, 100, 1);
    honest.insert(Entry::Header(h.clone())).expect("header");
    let changes = changes_of(&honest);
    let (allowance_change, header_change) = (&changes[0], &changes[1]);

    // A forged header built on the allowance's change.
    let mut evil = first
        .replica()
        .doc()
        .fork()
        .with_actor(automerge::ActorId::from(&[9u8; 16][..]));
    let mut tx = evil.transaction();
    tx.put(
        automerge::ROOT,
        meshpay_proto::ledger::header_key(&a.id, 2),
        automerge::ScalarValue::Bytes(
            Entry::Header(header(&stranger, &a, 2, 200, 2)).encode_value(),
        ),
    )
    .expect("put");
    tx.commit();
    let forged = evil.get_last_local_change().expect("change").clone();

    let mut victim = ledger(2);
    let (mut h_state, mut v_state) = (PeerState::new(), PeerState::new());
    let opening = victim.sync_message(&mut v_state).expect("opening");
    honest.receive(&mut h_state, &opening).expect("opening");
    let full = honest.sync_message(&mut h_state).expect("both changes");
    // The header's change arrives alone and waits; so does the forged one.
    victim
        .receive(&mut v_state, &with_changes(&full, &[header_change]))
        .expect("held");
    victim
        .receive(&mut PeerState::new(), &carrying(&[&forged]))
        .expect("held");
    assert_eq!(victim.waiting_units(), 2);
    // The allowance arrives: the forged change fails its check, everything
    // held back is dropped, the allowance is taken alone.
    victim
        .receive(&mut v_state, &with_changes(&full, &[allowance_change]))
        .expect("taken");
    assert_eq!(victim.waiting_units(), 0);
    assert!(victim.all_headers().is_empty());

    // Same session: the victim asks, the honest side sends the header again.
    let ask = victim.sync_message(&mut v_state).expect("asks again");
    assert!(ClockMessage::decode(&ask).expect("decodes").resend);
    honest.receive(&mut h_state, &ask).expect("ask");
    let again = honest.sync_message(&mut h_state).expect("sends again");
    victim.receive(&mut v_state, &again).expect("header");
    assert_eq!(victim.all_headers(), vec![h]);
    assert_eq!(victim.digest(), honest.digest());
}

/// A hostile writer's change 2 that does not descend from its change 1,
/// sent after it while change 1 waits for a dependency: automerge would
/// apply change 2 first and panic. It is left out instead, and change 1
/// still waits.
#[test]
fn a_writers_change_that_skips_its_own_history_is_left_out() {
    let writer = automerge::ActorId::from(&[7u8; 16][..]);
    // Change 1 depends on a change the victim lacks.
    let mut doc = automerge::Automerge::new().with_actor(automerge::ActorId::from(&[8u8; 16][..]));
    doc.empty_commit(automerge::transaction::CommitOptions::default().with_time(0));
    let mut doc = doc.with_actor(writer.clone());
    doc.empty_commit(automerge::transaction::CommitOptions::default().with_time(0));
    let first = doc.get_last_local_change().expect("change").clone();
    assert_eq!(first.seq(), 1);
    assert_eq!(first.deps().len(), 1);
    // Change 2 names no dependency at all.
    let second: automerge::Change = automerge::ExpandedChange {
        operations: Vec::new(),
        actor_id: writer,
        hash: None,
        seq: 2,
        start_op: core::num::NonZeroU64::new(1).expect("1"),
        time: 0,
        message: None,
        deps: Vec::new(),
        extra_bytes: Vec::new(),
        author: None,
    }
    .into();
    let mut l = victim();
    let before = l.entries();
    l.receive(&mut PeerState::new(), &carrying(&[&first, &second]))
        .expect("change 2 left out, change 1 held back");
    assert_eq!(l.waiting_units(), 1);
    assert!(
        !l.replica()
            .clock(u32::MAX)
            .iter()
            .any(|(a, _)| a[..] == [7u8; 16])
    );
    assert_eq!(l.entries(), before);
}

#[test]
fn a_nodes_own_change_that_comes_back_from_a_peer_is_its_own_again() {
    use meshpay_proto::ledger::Replica;
    let (k, a) = wallet(1);
    let mut node = with_wallets(1, &[1]);
    let saved = node.save();
    node.insert(Entry::Header(header(&k, &a, 1, 100, 1)))
        .expect("h1");
    let mut peer = ledger(2);
    sync(&mut node, &mut peer);
    // The node's save lost its last write; the peer sends it back.
    let mut node = Ledger::load(&saved, 0, &[1; 16], trust()).expect("reload");
    let key = meshpay_proto::ledger::header_key(&a.id, 1);
    let own_keys = |l: &Ledger| -> Vec<String> {
        l.replica()
            .own_entries()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert!(!own_keys(&node).contains(&key));
    sync(&mut peer, &mut node);
    assert!(own_keys(&node).contains(&key), "what it wrote is its own");
    // So a rotation writes it again rather than holding it aside.
    node.rotate_epoch(NOW, &RetentionPolicy::default());
    assert!(own_keys(&node).contains(&key), "written in the new epoch");
}
