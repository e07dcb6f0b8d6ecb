//! The canonical binary encoding.
//!
//! Every object on the wire or in storage is one version byte
//! ([`FORMAT_VERSION`]) followed by the object in postcard's format
//! (varint integers, length-prefixed sequences, raw fixed-size arrays).
//!
//! Decoding is strict: an empty input, an unknown version, bytes left over,
//! or any encoding that does not re-encode to exactly the same bytes (an
//! over-long varint, a set out of order or with duplicates, a boolean that
//! is not 0 or 1) is refused. So every object has one encoding, and hashes
//! and signatures over encodings are well defined.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format version this code writes and the only one it reads.
pub const FORMAT_VERSION: u8 = 1;

/// Upper bound on any single encoded object, checked before parsing.
pub const MAX_OBJECT_SIZE: usize = 1 << 20;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// More than [`MAX_OBJECT_SIZE`] bytes.
    #[error("object of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first byte names a format this code does not know.
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    /// The bytes do not parse as the expected object.
    #[error("malformed {kind}: {reason}")]
    Malformed {
        /// The object kind that was expected.
        kind: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// The object parsed but bytes were left after it.
    #[error("{count} trailing bytes after {kind}")]
    TrailingBytes {
        /// The object kind.
        kind: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// The object parsed but its encoding is not the canonical one.
    #[error("non-canonical encoding of {kind}")]
    NonCanonical {
        /// The object kind.
        kind: &'static str,
    },
}

/// An object with a canonical encoding.
pub trait Encode: Serialize + DeserializeOwned {
    /// Name used in errors ("allowance", "transfer", ...).
    const KIND: &'static str;

    /// Canonical bytes: the version byte, then the body.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        out.extend_from_slice(&self.encode_body());
        out
    }

    /// The body without the version byte (what hashes and signatures cover).
    fn encode_body(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail: postcard only errors
        // on types it does not support (maps with non-fixed keys are fine,
        // `serialize_any` is not used by our types).
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Strict decoding; see the module docs.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_limited(bytes, MAX_OBJECT_SIZE)
    }

    /// Strict decoding with another size limit than [`MAX_OBJECT_SIZE`]
    /// (sync messages, whose limit is the session's).
    fn decode_limited(bytes: &[u8], max: usize) -> Result<Self, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if bytes.len() > max {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        Self::decode_body(body)
    }

    /// Strict decoding of a body without the version byte.
    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let (value, rest) =
            postcard::take_from_bytes::<Self>(body).map_err(|e| DecodeError::Malformed {
                kind: Self::KIND,
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes {
                kind: Self::KIND,
                count: rest.len(),
            });
        }
        if value.encode_body() != body {
            return Err(DecodeError::NonCanonical { kind: Self::KIND });
        }
        Ok(value)
    }
}
