//! Framing that fits any link: a message is cut into frames of at most
//! `max_frame` bytes, each a one-byte header then payload; the receiver
//! puts them back together in order (the link is reliable and in order:
//! a TCP stream, a GATT characteristic with acknowledged writes).
//!
//! Frame header: `0x00` more fragments follow, `0x01` last fragment.

/// Smallest frame: the default BLE ATT MTU (23) less its 3-byte header.
pub const MIN_FRAME: usize = 20;
/// Largest frame.
pub const MAX_FRAME: usize = 65_536;

const MORE: u8 = 0x00;
const LAST: u8 = 0x01;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Empty frame, or a header byte other than 0 or 1.
    #[error("malformed frame")]
    Malformed,
    /// A frame longer than the agreed frame size.
    #[error("frame of {len} bytes exceeds the frame size {max}")]
    Oversized {
        /// Its length.
        len: usize,
        /// The frame size.
        max: usize,
    },
    /// The message being reassembled outgrew the limit.
    #[error("message exceeds {max} bytes")]
    MessageTooLarge {
        /// The limit.
        max: usize,
    },
}

/// Cuts `message` into frames of at most `max_frame` bytes.
pub fn split(message: &[u8], max_frame: usize) -> Vec<Vec<u8>> {
    let payload = max_frame.clamp(MIN_FRAME, MAX_FRAME) - 1;
    if message.is_empty() {
        return vec![vec![LAST]];
    }
    let n = message.len().div_ceil(payload);
    message
        .chunks(payload)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = Vec::with_capacity(chunk.len() + 1);
            f.push(if i + 1 == n { LAST } else { MORE });
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// Puts frames back together.
#[derive(Debug)]
pub struct Reassembler {
    max_frame: usize,
    max_message: usize,
    buffer: Vec<u8>,
}

impl Reassembler {
    /// Accepts frames up to `max_frame` bytes and messages up to
    /// `max_message` bytes.
    pub fn new(max_frame: usize, max_message: usize) -> Self {
        Reassembler {
            max_frame: max_frame.clamp(MIN_FRAME, MAX_FRAME),
            max_message,
            buffer: Vec::new(),
        }
    }

    /// Takes one frame; returns a whole message when this frame ends one.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        if frame.len() > self.max_frame {
            return Err(FrameError::Oversized {
                len: frame.len(),
                max: self.max_frame,
            });
        }
        let (&header, payload) = frame.split_first().ok_or(FrameError::Malformed)?;
        if header != MORE && header != LAST {
            return Err(FrameError::Malformed);
        }
        if self.buffer.len() + payload.len() > self.max_message {
            return Err(FrameError::MessageTooLarge {
                max: self.max_message,
            });
        }
        self.buffer.extend_from_slice(payload);
        Ok((header == LAST).then(|| std::mem::take(&mut self.buffer)))
    }

    /// Whether a message is partly received.
    pub fn is_mid_message(&self) -> bool {
        !self.buffer.is_empty()
    }
}
