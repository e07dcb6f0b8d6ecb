//! Framing over GATT: whole messages cut into packets that fit the
//! negotiated ATT MTU, put back together with a size limit, and
//! credit-based flow control so that a fast sender never overruns a slow
//! receiver.
//!
//! Sans-I/O: [`Framing::send_message`] and [`Framing::poll_packet`] on the
//! way out, [`Framing::handle_packet`] and [`Framing::poll_message`] on the
//! way in. One packet is one GATT write-without-response (central to
//! peripheral) or one notification (peripheral to central), at most
//! `ATT_MTU - 3` bytes.
//!
//! ```text
//! packet   = header payload
//! header   = version << 4 | kind          (version 1)
//! kind 0   DATA  more packets of this message follow; payload = bytes
//! kind 1   END   last packet of a message; payload = bytes (may be empty)
//! kind 2   CREDIT the sender may send `n` more data packets; payload = n (u16 LE)
//! ```
//!
//! Flow control: each side may send [`INITIAL_CREDITS`] data packets
//! before hearing anything; a receiver with a larger window grants the
//! rest in its first CREDIT packet. A data packet costs one credit; the
//! receiver grants credits back as the application consumes packets (in
//! batches of half its window). Credit packets cost no credit. A peer that
//! sends data without credit, an oversized packet or a message over the
//! limit breaks the framing: the link is closed with a [`FramingError`].

use std::collections::VecDeque;

/// Framing version carried in every packet's high nibble.
pub const VERSION: u8 = 1;
/// Data packets each side may send before the peer grants any.
pub const INITIAL_CREDITS: u16 = 8;
/// Smallest ATT MTU (the BLE default).
pub const MIN_MTU: u16 = 23;
/// Largest ATT MTU (Android asks for 517; attribute values cap at 512).
pub const MAX_MTU: u16 = 517;
/// Bytes of ATT header in a write or notification (opcode, handle).
pub const ATT_HEADER: usize = 3;
/// Largest message by default: one 64 KiB sync frame and its channel byte.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 + 64;

const DATA: u8 = 0;
const END: u8 = 1;
const CREDIT: u8 = 2;

/// Why a packet or message was refused. After any of these the link is
/// closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// A packet with no header byte.
    #[error("empty packet")]
    Empty,
    /// A packet of another framing version.
    #[error("framing version {0}, expected {VERSION}")]
    Version(u8),
    /// A packet kind this version does not know.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// A packet longer than the MTU allows.
    #[error("packet of {len} bytes exceeds {max} (ATT MTU less 3)")]
    Oversized {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A credit packet of the wrong length.
    #[error("malformed credit packet")]
    MalformedCredit,
    /// The peer granted more credit than can ever be outstanding.
    #[error("peer granted more than 65535 outstanding credits")]
    CreditOverflow,
    /// The peer sent a data packet without credit.
    #[error("peer sent beyond its credit (window {window} packets)")]
    Overrun {
        /// This side's window.
        window: u16,
    },
    /// A message outgrew the limit while being put together.
    #[error("message exceeds {max} bytes")]
    MessageTooLarge {
        /// The limit.
        max: usize,
    },
}

/// Framing parameters of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingConfig {
    /// Negotiated ATT MTU (clamped to 23..=517).
    pub mtu: u16,
    /// Data packets this side buffers before the application consumes
    /// them (at least [`INITIAL_CREDITS`]).
    pub window: u16,
    /// Largest message sent or accepted.
    pub max_message: usize,
}

impl FramingConfig {
    /// A link at `mtu` with the default window (32 packets) and message
    /// limit.
    pub fn with_mtu(mtu: u16) -> Self {
        FramingConfig {
            mtu,
            window: 32,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }

    /// Largest packet: ATT MTU less the ATT header.
    pub fn max_packet(&self) -> usize {
        usize::from(self.mtu.clamp(MIN_MTU, MAX_MTU)) - ATT_HEADER
    }

    /// Message bytes per data packet.
    pub fn payload_per_packet(&self) -> usize {
        self.max_packet() - 1
    }
}

/// Counters of one framing endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FramingStats {
    /// Data packets sent.
    pub data_packets_sent: u64,
    /// Credit packets sent.
    pub credit_packets_sent: u64,
    /// Packet bytes sent (headers included).
    pub bytes_sent: u64,
    /// Messages delivered to the application.
    pub messages_received: u64,
    /// Times the sender had data queued and no credit.
    pub credit_stalls: u64,
}

/// One side's framing state.
#[derive(Debug)]
pub struct Framing {
    config: FramingConfig,
    window: u16,
    /// Data packets ready to go, in order.
    outgoing: VecDeque<Vec<u8>>,
    /// Credit packets (sent first, free of credit).
    control: VecDeque<Vec<u8>>,
    /// Data packets the peer may still be sent.
    credits: u32,
    stalled: bool,
    /// Data packets received, not yet consumed.
    inbound: VecDeque<Vec<u8>>,
    /// The message being put together.
    partial: Vec<u8>,
    /// Packets consumed and not yet granted back.
    ungranted: u16,
    stats: FramingStats,
}

impl Framing {
    /// A fresh endpoint; queues the grant beyond [`INITIAL_CREDITS`] if the
    /// window is larger.
    pub fn new(config: FramingConfig) -> Self {
        let window = config.window.max(INITIAL_CREDITS);
        let mut f = Framing {
            config,
            window,
            outgoing: VecDeque::new(),
            control: VecDeque::new(),
            credits: u32::from(INITIAL_CREDITS),
            stalled: false,
            inbound: VecDeque::new(),
            partial: Vec::new(),
            ungranted: 0,
            stats: FramingStats::default(),
        };
        if window > INITIAL_CREDITS {
            f.grant(window - INITIAL_CREDITS);
        }
        f
    }

    /// The configuration.
    pub fn config(&self) -> &FramingConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> &FramingStats {
        &self.stats
    }

    fn grant(&mut self, n: u16) {
        let mut p = Vec::with_capacity(3);
        p.push(VERSION << 4 | CREDIT);
        p.extend_from_slice(&n.to_le_bytes());
        self.control.push_back(p);
    }

    /// Queues a whole message.
    pub fn send_message(&mut self, message: &[u8]) -> Result<(), FramingError> {
        if message.len() > self.config.max_message {
            return Err(FramingError::MessageTooLarge {
                max: self.config.max_message,
            });
        }
        let payload = self.config.payload_per_packet();
        let mut chunks = message.chunks(payload).peekable();
        if chunks.peek().is_none() {
            self.outgoing.push_back(vec![VERSION << 4 | END]);
        }
        while let Some(chunk) = chunks.next() {
            let kind = if chunks.peek().is_some() { DATA } else { END };
            let mut p = Vec::with_capacity(chunk.len() + 1);
            p.push(VERSION << 4 | kind);
            p.extend_from_slice(chunk);
            self.outgoing.push_back(p);
        }
        Ok(())
    }

    /// The next packet to send, if any is ready and allowed: credit grants
    /// first, then data while credit lasts.
    pub fn poll_packet(&mut self) -> Option<Vec<u8>> {
        if let Some(p) = self.control.pop_front() {
            self.stats.credit_packets_sent += 1;
            self.stats.bytes_sent += p.len() as u64;
            return Some(p);
        }
        if self.outgoing.is_empty() {
            return None;
        }
        if self.credits == 0 {
            if !self.stalled {
                self.stalled = true;
                self.stats.credit_stalls += 1;
            }
            return None;
        }
        let p = self.outgoing.pop_front()?;
        self.credits -= 1;
        self.stats.data_packets_sent += 1;
        self.stats.bytes_sent += p.len() as u64;
        Some(p)
    }

    /// Whether anything waits to be sent (with or without credit).
    pub fn has_unsent(&self) -> bool {
        !self.outgoing.is_empty() || !self.control.is_empty()
    }

    /// Takes one packet from the peer.
    pub fn handle_packet(&mut self, packet: &[u8]) -> Result<(), FramingError> {
        let max = self.config.max_packet();
        if packet.len() > max {
            return Err(FramingError::Oversized {
                len: packet.len(),
                max,
            });
        }
        let (&header, payload) = packet.split_first().ok_or(FramingError::Empty)?;
        if header >> 4 != VERSION {
            return Err(FramingError::Version(header >> 4));
        }
        match header & 0x0f {
            CREDIT => {
                let n: [u8; 2] = payload
                    .try_into()
                    .map_err(|_| FramingError::MalformedCredit)?;
                self.credits += u32::from(u16::from_le_bytes(n));
                if self.credits > u32::from(u16::MAX) {
                    return Err(FramingError::CreditOverflow);
                }
                self.stalled = false;
                Ok(())
            }
            DATA | END => {
                if self.inbound.len() >= usize::from(self.window) {
                    return Err(FramingError::Overrun {
                        window: self.window,
                    });
                }
                self.inbound.push_back(packet.to_vec());
                Ok(())
            }
            kind => Err(FramingError::UnknownKind(kind)),
        }
    }

    /// The next whole message, if one has arrived. Consuming packets
    /// grants their credit back to the peer.
    pub fn poll_message(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        while let Some(packet) = self.inbound.pop_front() {
            self.ungranted += 1;
            if self.ungranted >= self.window / 2 {
                self.grant(self.ungranted);
                self.ungranted = 0;
            }
            let (&header, payload) = packet.split_first().ok_or(FramingError::Empty)?;
            if self.partial.len() + payload.len() > self.config.max_message {
                return Err(FramingError::MessageTooLarge {
                    max: self.config.max_message,
                });
            }
            self.partial.extend_from_slice(payload);
            if header & 0x0f == END {
                self.stats.messages_received += 1;
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
        }
        Ok(None)
    }

    /// Bytes of an unfinished incoming message (received packets of it,
    /// consumed or not): what a lost connection throws away.
    pub fn partial_len(&self) -> usize {
        self.partial.len() + self.inbound.iter().map(|p| p.len() - 1).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pump(from: &mut Framing, to: &mut Framing) -> usize {
        let mut n = 0;
        while let Some(p) = from.poll_packet() {
            to.handle_packet(&p).expect("in a test");
            n += 1;
        }
        n
    }

    #[test]
    fn message_fits_mtu_and_comes_back_whole() {
        for mtu in [23u16, 185, 244, 517] {
            let mut a = Framing::new(FramingConfig::with_mtu(mtu));
            let mut b = Framing::new(FramingConfig::with_mtu(mtu));
            let message: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
            a.send_message(&message).expect("in a test");
            a.send_message(&[]).expect("in a test");
            let mut got = Vec::new();
            for _ in 0..1000 {
                while let Some(p) = a.poll_packet() {
                    assert!(p.len() <= usize::from(mtu) - 3);
                    b.handle_packet(&p).expect("in a test");
                }
                while let Some(m) = b.poll_message().expect("in a test") {
                    got.push(m);
                }
                pump(&mut b, &mut a);
                if got.len() == 2 {
                    break;
                }
            }
            assert_eq!(got, vec![message, Vec::new()], "mtu {mtu}");
        }
    }

    #[test]
    fn test_vectors_of_docs_ble_md() {
        // A window of 32 announces the 24 packets beyond the initial 8.
        let mut a = Framing::new(FramingConfig::with_mtu(23));
        a.send_message(b"meshpay over BLE, framed").expect("fits");
        let packets: Vec<String> = std::iter::from_fn(|| a.poll_packet())
            .map(hex::encode)
            .collect();
        assert_eq!(
            packets,
            [
                "121800",
                "106d657368706179206f76657220424c452c2066",
                "1172616d6564"
            ]
        );
    }

    #[test]
    fn sender_stops_at_the_window_until_credit_returns() {
        let config = FramingConfig {
            window: 8,
            ..FramingConfig::with_mtu(23)
        };
        let mut a = Framing::new(config);
        let mut b = Framing::new(config);
        a.send_message(&[7u8; 19 * 20]).expect("in a test");
        // Only the initial credit's worth leaves before the receiver reads.
        assert_eq!(pump(&mut a, &mut b), 8);
        assert_eq!(a.poll_packet(), None);
        assert_eq!(a.stats().credit_stalls, 1);
        assert_eq!(b.poll_message().expect("in a test"), None);
        // Consuming eight packets grants eight back, in two batches of four.
        assert_eq!(pump(&mut b, &mut a), 2);
        assert_eq!(pump(&mut a, &mut b), 8);
    }

    #[test]
    fn data_beyond_credit_is_refused() {
        let config = FramingConfig {
            window: 8,
            ..FramingConfig::with_mtu(23)
        };
        let mut b = Framing::new(config);
        let data = [VERSION << 4 | DATA, 1, 2];
        for _ in 0..8 {
            b.handle_packet(&data).expect("in a test");
        }
        assert_eq!(
            b.handle_packet(&data),
            Err(FramingError::Overrun { window: 8 })
        );
    }

    #[test]
    fn bad_packets_are_typed_errors() {
        let mut b = Framing::new(FramingConfig::with_mtu(23));
        assert_eq!(b.handle_packet(&[]), Err(FramingError::Empty));
        assert_eq!(b.handle_packet(&[0x20]), Err(FramingError::Version(2)));
        assert_eq!(b.handle_packet(&[0x17]), Err(FramingError::UnknownKind(7)));
        assert_eq!(
            b.handle_packet(&[0x12, 1]),
            Err(FramingError::MalformedCredit)
        );
        assert_eq!(
            b.handle_packet(&[0x12, 0xff, 0xff]),
            Err(FramingError::CreditOverflow)
        );
        assert_eq!(
            b.handle_packet(&[0x10; 21]),
            Err(FramingError::Oversized { len: 21, max: 20 })
        );
    }

    #[test]
    fn message_over_the_limit_is_refused_both_ways() {
        let config = FramingConfig {
            max_message: 100,
            ..FramingConfig::with_mtu(185)
        };
        let mut a = Framing::new(config);
        assert_eq!(
            a.send_message(&[0; 101]),
            Err(FramingError::MessageTooLarge { max: 100 })
        );
        let mut b = Framing::new(config);
        b.handle_packet(&[VERSION << 4 | DATA; 90])
            .expect("in a test");
        b.handle_packet(&[VERSION << 4 | END; 20])
            .expect("in a test");
        assert_eq!(
            b.poll_message(),
            Err(FramingError::MessageTooLarge { max: 100 })
        );
    }
}
