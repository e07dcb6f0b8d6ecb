//! The wallet key file, plain or sealed with a passphrase.
//!
//! A plain file holds the 32-byte Ed25519 seed as 64 hex digits. A sealed
//! file is one line:
//!
//! ```text
//! meshpay-key-v1:argon2id:m=65536,t=3,p=1:<salt hex>:<nonce hex>:<sealed seed hex>
//! ```
//!
//! The passphrase is stretched with Argon2id (RFC 9106) into a 32-byte key
//! that seals the seed with ChaCha20-Poly1305 (RFC 8439). Everything before
//! the salt is the associated data, so the parameters cannot be changed
//! without the tag failing. The parameters a file may ask for are bounded,
//! so that a crafted file cannot make `open` allocate gigabytes.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const MAGIC: &str = "meshpay-key-v1";

/// Argon2id cost: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
}

impl Cost {
    /// 64 MiB, 3 passes, 1 lane: RFC 9106's second recommended option with
    /// one lane, about a third of a second on a small machine.
    pub const DEFAULT: Cost = Cost {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 1,
    };
    /// The largest cost a file may ask for.
    const MAX: Cost = Cost {
        memory_kib: 1024 * 1024,
        passes: 16,
        lanes: 8,
    };
    /// The smallest: below this a passphrase is too cheap to guess.
    const MIN: Cost = Cost {
        memory_kib: 8 * 1024,
        passes: 1,
        lanes: 1,
    };

    fn within_bounds(&self) -> bool {
        (Self::MIN.memory_kib..=Self::MAX.memory_kib).contains(&self.memory_kib)
            && (Self::MIN.passes..=Self::MAX.passes).contains(&self.passes)
            && (Self::MIN.lanes..=Self::MAX.lanes).contains(&self.lanes)
    }
}

/// Why a key file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Neither 64 hex digits nor a sealed key.
    #[error("not a wallet key: expected 64 hex digits or a sealed `{MAGIC}` key")]
    Format,
    /// The file is sealed and no passphrase was given.
    #[error(
        "the wallet key is sealed with a passphrase: set MESHPAY_PASSPHRASE, pass --passphrase-file FILE, or run on a terminal to be asked"
    )]
    NeedPassphrase,
    /// The passphrase is wrong, or the file was altered.
    #[error("wrong passphrase, or the sealed key was altered")]
    Unseal,
    /// The file asks for an Argon2 cost outside the accepted bounds.
    #[error("Argon2 cost out of bounds (memory 8 MiB to 1 GiB, 1 to 16 passes, 1 to 8 lanes)")]
    Cost,
    /// An empty passphrase was given to seal a key.
    #[error("an empty passphrase protects nothing")]
    EmptyPassphrase,
}

/// Whether `text` is a sealed key.
pub fn is_sealed(text: &str) -> bool {
    text.trim_start().starts_with(MAGIC)
}

/// Seals `seed` under `passphrase` with fresh `salt` and `nonce`.
pub fn seal(
    seed: &[u8; 32],
    passphrase: &[u8],
    cost: Cost,
    salt: [u8; 16],
    nonce: [u8; 12],
) -> Result<String, KeyFileError> {
    if passphrase.is_empty() {
        return Err(KeyFileError::EmptyPassphrase);
    }
    let header = header(cost);
    let key = stretch(passphrase, &salt, cost)?;
    let sealed = ChaCha20Poly1305::new(&key)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: seed,
                aad: header.as_bytes(),
            },
        )
        .map_err(|_| KeyFileError::Unseal)?;
    Ok(format!(
        "{header}:{}:{}:{}\n",
        hex::encode(salt),
        hex::encode(nonce),
        hex::encode(sealed)
    ))
}

/// Reads a key file's text: the seed, unsealed with `passphrase` if the
/// file is sealed.
pub fn open(text: &str, passphrase: Option<&[u8]>) -> Result<[u8; 32], KeyFileError> {
    let text = text.trim();
    if !is_sealed(text) {
        return hex32(text).ok_or(KeyFileError::Format);
    }
    let parts: Vec<&str> = text.split(':').collect();
    let [magic, algorithm, params, salt, nonce, sealed] = parts[..] else {
        return Err(KeyFileError::Format);
    };
    if magic != MAGIC || algorithm != "argon2id" {
        return Err(KeyFileError::Format);
    }
    let cost = parse_cost(params).ok_or(KeyFileError::Format)?;
    if header(cost) != format!("{magic}:{algorithm}:{params}") {
        // Only the canonical spelling is accepted, so the associated data
        // is exactly what `seal` wrote.
        return Err(KeyFileError::Format);
    }
    if !cost.within_bounds() {
        return Err(KeyFileError::Cost);
    }
    let salt: [u8; 16] = hex_array(salt).ok_or(KeyFileError::Format)?;
    let nonce: [u8; 12] = hex_array(nonce).ok_or(KeyFileError::Format)?;
    let sealed = hex::decode(sealed).map_err(|_| KeyFileError::Format)?;
    let passphrase = passphrase.ok_or(KeyFileError::NeedPassphrase)?;
    let key = stretch(passphrase, &salt, cost)?;
    let seed = ChaCha20Poly1305::new(&key)
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &sealed,
                aad: header(cost).as_bytes(),
            },
        )
        .map_err(|_| KeyFileError::Unseal)?;
    seed.try_into().map_err(|_| KeyFileError::Format)
}

fn header(cost: Cost) -> String {
    format!(
        "{MAGIC}:argon2id:m={},t={},p={}",
        cost.memory_kib, cost.passes, cost.lanes
    )
}

fn parse_cost(params: &str) -> Option<Cost> {
    let mut it = params.split(',');
    let mut field = |name: &str| -> Option<u32> {
        it.next()?
            .strip_prefix(name)?
            .strip_prefix('=')?
            .parse()
            .ok()
    };
    let cost = Cost {
        memory_kib: field("m")?,
        passes: field("t")?,
        lanes: field("p")?,
    };
    it.next().is_none().then_some(cost)
}

fn stretch(passphrase: &[u8], salt: &[u8; 16], cost: Cost) -> Result<Key, KeyFileError> {
    let params = Params::new(cost.memory_kib, cost.passes, cost.lanes, Some(32))
        .map_err(|_| KeyFileError::Cost)?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut key)
        .map_err(|_| KeyFileError::Cost)?;
    Ok(Key::from(key))
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    hex_array(text)
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    hex::decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Cost = Cost::MIN;

    fn sealed() -> String {
        seal(&[7; 32], b"correct horse", CHEAP, [1; 16], [2; 12]).expect("seal")
    }

    #[test]
    fn a_sealed_key_opens_with_its_passphrase_only() {
        let text = sealed();
        assert!(is_sealed(&text));
        assert_eq!(open(&text, Some(b"correct horse")), Ok([7; 32]));
        assert_eq!(
            open(&text, Some(b"correct horsE")),
            Err(KeyFileError::Unseal)
        );
        assert_eq!(open(&text, None), Err(KeyFileError::NeedPassphrase));
    }

    #[test]
    fn a_plain_key_needs_no_passphrase() {
        let text = hex::encode([9u8; 32]);
        assert_eq!(open(&text, None), Ok([9; 32]));
        assert_eq!(open(&text, Some(b"ignored")), Ok([9; 32]));
        assert_eq!(open("abc", None), Err(KeyFileError::Format));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let text = sealed();
        let text = text.trim();
        for i in 0..text.len() {
            let mut bytes = text.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let altered = String::from_utf8(bytes).expect("ascii");
            if altered == text {
                continue;
            }
            let r = open(&altered, Some(b"correct horse"));
            assert!(r.is_err(), "altered at {i}: {altered}");
        }
    }

    #[test]
    fn costs_out_of_bounds_are_refused_before_any_work() {
        let huge = format!(
            "{MAGIC}:argon2id:m=4194304,t=3,p=1:{}:{}:{}",
            hex::encode([0u8; 16]),
            hex::encode([0u8; 12]),
            hex::encode([0u8; 48])
        );
        assert_eq!(open(&huge, Some(b"x")), Err(KeyFileError::Cost));
        let odd = sealed().replace("m=8192", "m=08192");
        assert_eq!(open(&odd, Some(b"x")), Err(KeyFileError::Format));
    }

    #[test]
    fn an_empty_passphrase_is_refused() {
        assert_eq!(
            seal(&[7; 32], b"", CHEAP, [1; 16], [2; 12]),
            Err(KeyFileError::EmptyPassphrase)
        );
    }
}
