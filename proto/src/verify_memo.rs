//! An opt-in, process-wide memo of pure results (mostly cryptographic),
//! for simulators.
//!
//! A simulator runs hundreds of devices in one process, and each of them
//! does the same work on the same entries as they spread: the same
//! header's signature is verified once per device that receives it, the
//! same allowance's keys are decompressed, the same entry is mapped to its
//! ledger digest element. Each of these is a pure function of its input
//! (an Ed25519 verification of (key, message, signature), a point
//! decompression of 32 bytes, a hash-to-point of 64 bytes, whether an
//! automerge change named by its SHA-256 hash is in automerge's own
//! encoding), so remembering
//! its result changes no outcome; it only saves the simulator's CPU (on
//! the devices themselves every check still costs what it costs).
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
    let _ = KEYS.set(Mutex::new(HashMap::new()));
    let _ = POINTS.set(Mutex::new(HashMap::new()));
    let _ = CANONICAL.set(Mutex::new(HashMap::new()));
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

/// Decoded public keys by their 32 bytes (pure: the same bytes always
/// decode to the same key or fail the same way).
type KeyMemo = HashMap<[u8; 32], Result<crate::crypto::PublicKey, crate::crypto::KeyError>>;

static KEYS: OnceLock<Mutex<KeyMemo>> = OnceLock::new();

/// Ledger digest elements by the 64-byte hash they are mapped from.
static POINTS: OnceLock<Mutex<HashMap<[u8; 64], curve25519_dalek::RistrettoPoint>>> =
    OnceLock::new();

/// `compute()`, or the result remembered in `memo` for `key`.
fn memoised<K, V>(memo: &OnceLock<Mutex<HashMap<K, V>>>, key: K, compute: impl FnOnce() -> V) -> V
where
    K: std::hash::Hash + Eq,
    V: Clone,
{
    let Some(memo) = memo.get() else {
        return compute();
    };
    if let Ok(memo) = memo.lock()
        && let Some(v) = memo.get(&key)
    {
        return v.clone();
    }
    let v = compute();
    if let Ok(mut memo) = memo.lock() {
        if memo.len() >= MAX_ENTRIES {
            memo.clear();
        }
        memo.insert(key, v.clone());
    }
    v
}

/// A public key's decoding, remembered when the memo is on.
pub(crate) fn key(
    bytes: &[u8; 32],
    decode: impl FnOnce() -> Result<crate::crypto::PublicKey, crate::crypto::KeyError>,
) -> Result<crate::crypto::PublicKey, crate::crypto::KeyError> {
    memoised(&KEYS, *bytes, decode)
}

/// A ledger digest element (a hash mapped to a Ristretto point),
/// remembered when the memo is on.
pub(crate) fn point(
    wide: &[u8; 64],
    map: impl FnOnce() -> curve25519_dalek::RistrettoPoint,
) -> curve25519_dalek::RistrettoPoint {
    memoised(&POINTS, *wide, map)
}

/// Whether an automerge change (named by its hash, SHA-256 over its
/// bytes) is in automerge's own encoding.
static CANONICAL: OnceLock<Mutex<HashMap<[u8; 32], bool>>> = OnceLock::new();

/// Whether the change of hash `hash` is in automerge's own encoding,
/// remembered when the memo is on.
pub(crate) fn canonical(hash: &[u8; 32], check: impl FnOnce() -> bool) -> bool {
    memoised(&CANONICAL, *hash, check)
}
