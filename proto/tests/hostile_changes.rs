//! A peer's automerge changes, damaged with their checksums made right
//! again, so that automerge's parser and apply see them rather than the
//! checksum refusing them. Whatever the damage, receiving them never
//! panics, a refused message changes nothing, and no entry reaches the
//! ledger that an honest writer did not sign.

mod common;

use std::collections::BTreeSet;

use common::*;
use meshpay_proto::encoding::Encode;
use meshpay_proto::ledger::{ClockMessage, ClockPeer, Entry, PartialLedger};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

type Ledger = PartialLedger;
/// A ledger's entries other than proofs, as (key, value).
type Facts = BTreeSet<(String, Vec<u8>)>;

/// Where automerge's chunk header ends: magic (4), checksum (4), chunk
/// type (1), then the body length as unsigned LEB128.
fn body_start(chunk: &[u8]) -> Option<usize> {
    let mut at = 9;
    loop {
        let byte = *chunk.get(at)?;
        at += 1;
        if byte & 0x80 == 0 {
            return Some(at);
        }
    }
}

/// The chunk with its checksum computed again: the first four bytes of
/// SHA-256 over the chunk type, the length and the body.
fn with_checksum(mut chunk: Vec<u8>) -> Vec<u8> {
    let sum = Sha256::digest(&chunk[8..]);
    chunk[4..8].copy_from_slice(&sum[..4]);
    chunk
}

/// The victim (wallet 1's allowance and a first header, written by the
/// victim's node) and a message from node 2 carrying six changes it lacks: wallet 2's
/// allowance and headers of both wallets.
fn setup() -> (Ledger, Vec<u8>, Facts) {
    let (k1, a1) = wallet(1);
    let (k2, a2) = wallet(2);
    let mut victim = Ledger::new(&[1; 16], trust());
    victim
        .insert(Entry::Allowance(a1.clone()))
        .expect("allowance");
    victim
        .insert(Entry::Header(header(&k1, &a1, 1, 100, 1)))
        .expect("h1");
    let mut source = Ledger::load(&victim.save(), victim.epoch(), &[2; 16], trust()).expect("copy");
    source.insert(Entry::Allowance(a2.clone())).expect("a2");
    for (k, a, seq, total) in [
        (&k1, &a1, 2, 250),
        (&k1, &a1, 3, 400),
        (&k2, &a2, 1, 700),
        (&k2, &a2, 2, 900),
        (&k2, &a2, 3, 1200),
    ] {
        source
            .insert(Entry::Header(header(k, a, seq, total, 1)))
            .expect("header");
    }
    let opening = victim.sync_message(&mut ClockPeer::new()).expect("opening");
    let mut at_source = ClockPeer::new();
    source.receive(&mut at_source, &opening).expect("opening");
    let message = source.sync_message(&mut at_source).expect("changes");
    let signed = facts(&source);
    (victim, message, signed)
}

fn facts(l: &Ledger) -> Facts {
    l.entries()
        .into_iter()
        .filter(|e| !matches!(e, Entry::Proof(_)))
        .map(|e| (e.key(), e.encode_value()))
        .collect()
}

/// Feeds `message` to a fresh copy of the victim and checks what must
/// hold whatever the message is.
fn receive_checked(saved: &[u8], message: &[u8], signed: &Facts) -> bool {
    let mut victim = Ledger::load(saved, 0, &[1; 16], trust()).expect("victim");
    let before = (facts(&victim), victim.digest());
    let accepted = victim.receive(&mut ClockPeer::new(), message).is_ok();
    let after = facts(&victim);
    if accepted {
        assert!(
            after.is_superset(&before.0),
            "an accepted message lost entries"
        );
        assert!(
            after.is_subset(signed),
            "an entry no honest writer signed got in: {:?}",
            after.difference(signed).collect::<Vec<_>>()
        );
    } else {
        assert_eq!(
            (after.clone(), victim.digest()),
            before,
            "a refused message changed the ledger"
        );
    }
    // What the victim holds still saves and loads as it is.
    let back = Ledger::load(&victim.save(), 0, &[1; 16], trust()).expect("reloads");
    assert_eq!(facts(&back), after);
    accepted
}

#[test]
fn the_undamaged_message_is_taken_whole() {
    let (mut victim, message, signed) = setup();
    let decoded = ClockMessage::decode(&message).expect("decodes");
    assert_eq!(decoded.changes.len(), 6, "one change per insert");
    let saved = victim.save();
    assert!(receive_checked(&saved, &message, &signed));
    victim
        .receive(&mut ClockPeer::new(), &message)
        .expect("honest");
    assert_eq!(facts(&victim), signed);
}

/// Every byte of every change's body, set to a value that differs from
/// it, one at a time: a sweep that covers each field automerge parses.
#[test]
fn every_single_byte_of_a_change_damaged_is_safe() {
    let (mut victim, message, signed) = setup();
    let saved = victim.save();
    let decoded = ClockMessage::decode(&message).expect("decodes");
    let mut refused = 0;
    let mut tried = 0;
    for (c, change) in decoded.changes.iter().enumerate() {
        let start = body_start(change).expect("a chunk header");
        for at in start..change.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = change.clone();
                damaged[at] ^= flip;
                let mut m = decoded.clone();
                m.changes[c] = with_checksum(damaged);
                tried += 1;
                if !receive_checked(&saved, &m.encode(), &signed) {
                    refused += 1;
                }
            }
        }
    }
    // Most damage is refused; some lands in fields that change no entry
    // (the change's time or message) and is taken.
    assert!(refused > tried / 2, "{refused} of {tried} refused");
}

/// 256 cases, or `PROPTEST_CASES` for a longer search by hand.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Several bytes at once, anywhere after the checksum (type and length
    /// included), and changes cut short or grown.
    #[test]
    fn changes_damaged_in_many_places_are_safe(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        which in any::<prop::sample::Index>(),
        resize in -40i32..40,
    ) {
        let (mut victim, message, signed) = setup();
        let saved = victim.save();
        let mut decoded = ClockMessage::decode(&message).expect("decodes");
        let c = which.index(decoded.changes.len());
        let mut damaged = decoded.changes[c].clone();
        for (at, value) in &edits {
            let i = 8 + at.index(damaged.len() - 8);
            damaged[i] = *value;
        }
        let len = (damaged.len() as i32 + resize).max(9) as usize;
        damaged.resize(len, 0x42);
        decoded.changes[c] = with_checksum(damaged);
        receive_checked(&saved, &decoded.encode(), &signed);
    }
}

/// A stored ledger damaged on disk (checksums made right again, so that
/// automerge parses it): every byte flipped, one at a time. Loading gives
/// the ledger or a clear error, never a panic, and what loads is checked
/// like any peer's entries.
#[test]
fn a_damaged_stored_ledger_loads_or_is_an_error() {
    let (_, message, signed) = setup();
    let (mut victim, _, _) = setup();
    victim
        .receive(&mut ClockPeer::new(), &message)
        .expect("honest");
    let saved = victim.save();
    let start = body_start(&saved).expect("a chunk header");
    let chunk_end = start + {
        // The body length, LEB128 after the chunk type.
        let mut len = 0usize;
        for (i, b) in saved[9..start].iter().enumerate() {
            len |= usize::from(b & 0x7f) << (7 * i);
        }
        len
    };
    assert_eq!(chunk_end, saved.len(), "one document chunk");
    let (mut loaded, mut refused) = (0, 0);
    for at in start..saved.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut damaged = saved.clone();
            damaged[at] ^= flip;
            match Ledger::load(&with_checksum(damaged), 0, &[1; 16], trust()) {
                Ok(l) => {
                    assert!(facts(&l).is_subset(&signed), "an unsigned entry loaded");
                    loaded += 1;
                }
                Err(_) => refused += 1,
            }
        }
    }
    eprintln!("{refused} refused, {loaded} loaded");
    assert!(refused > loaded, "{refused} refused, {loaded} loaded");
}
