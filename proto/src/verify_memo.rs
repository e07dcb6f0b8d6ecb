//! An opt-in, process-wide memo of signature verifications, for simulators.
//!
//! A simulator runs hundreds of devices in one process, and each of them
//! checks the same signatures as they spread: the same header's signature
//! is verified once per device that receives it. An Ed25519 verification
//! is a pure function of (key, message, signature), so remembering its
//! result changes no outcome; it only saves the simulator's CPU (on the
//! devices themselves every check still costs what it costs).
//!
//! The memo is **off** unless [`enable`] is called, and nothing in this
//! crate or the node calls it: a node verifies every signature it meets.
//! `meshpay-sim` turns it on at start-up.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Remembered results by (key, signature), with the message they were
/// over (a different message under the same pair is verified afresh).
type Memo = HashMap<([u8; 32], [u8; 64]), (Vec<u8>, bool)>;

static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();

/// Most results remembered before the memo starts over (bounds memory).
const MAX_ENTRIES: usize = 4_000_000;

/// Turns the memo on for the rest of the process. For simulators only.
pub fn enable() {
    let _ = MEMO.set(Mutex::new(HashMap::new()));
}

/// Whether [`enable`] was called.
pub fn is_enabled() -> bool {
    MEMO.get().is_some()
}

/// `verify()`, or its remembered result for the same key, signature and
/// message when the memo is on.
pub(crate) fn remembered(
    key: &[u8; 32],
    signature: &[u8; 64],
    message: &[u8],
    verify: impl FnOnce() -> bool,
) -> bool {
    let Some(memo) = MEMO.get() else {
        return verify();
    };
    let id = (*key, *signature);
    if let Ok(memo) = memo.lock()
        && let Some((m, ok)) = memo.get(&id)
        && m == message
    {
        return *ok;
    }
    let ok = verify();
    if let Ok(mut memo) = memo.lock() {
        if memo.len() >= MAX_ENTRIES {
            memo.clear();
        }
        memo.insert(id, (message.to_vec(), ok));
    }
    ok
}
