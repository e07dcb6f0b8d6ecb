//! The simulator's memo of signature verifications changes no outcome: a
//! run with it gives the same report as a run without, and a bad
//! signature is still refused once a good one under the same key is
//! remembered. (Its own test binary: the memo is process-wide.)

mod common;

use chacha20::ChaCha8Rng;
use meshpay_proto::crypto::SecretKey;
use rand::SeedableRng;

#[test]
fn the_memo_changes_no_outcome() {
    let mut s = common::load("cabin");
    s.adversaries.double_spenders = 0.2;
    let json = |r: &meshpay_sim::report::Report| serde_json::to_string(r).expect("serialises");
    assert!(!meshpay_proto::verify_memo::is_enabled());
    let without = json(&common::run(s.clone(), 4));
    meshpay_proto::verify_memo::enable();
    assert!(meshpay_proto::verify_memo::is_enabled());
    let with = json(&common::run(s, 4));
    assert_eq!(without, with, "same seed, same report, memo or not");

    // Remembered or not, a signature only verifies over its own message.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let key = SecretKey::generate(&mut rng);
    let public = key.public();
    let sig = key.sign(b"tag", b"message");
    for _ in 0..2 {
        assert!(public.verify(b"tag", b"message", &sig));
        assert!(!public.verify(b"tag", b"other message", &sig));
        assert!(!public.verify(b"other tag", b"message", &sig));
    }
    let other = SecretKey::generate(&mut rng).public();
    assert!(!other.verify(b"tag", b"message", &sig));
}
