//! An emulated BLE connection with a deterministic virtual clock: the
//! test transport, the benchmark's link and the simulator's link model.
//!
//! The model follows the link layer closely enough to get latency and
//! throughput right, and no further:
//!
//! - Connection events every `interval_us`, starting at `start_us`. In an
//!   event the central and the peripheral take turns: one PDU from the
//!   central, one back (an empty 10-byte PDU when it has nothing), 150 us
//!   apart, until the event's air time or `packets_per_event` runs out.
//! - A packet handed over between events waits for the next event; a
//!   packet received in an event is answered in the next one at the
//!   earliest (stacks do not turn GATT traffic around within an event).
//! - One ATT packet of `n` bytes travels as L2CAP (4 bytes header) over
//!   link-layer PDUs of at most 251 bytes (Data Length Extension), each
//!   with 10 bytes of preamble, access address, header and CRC, at
//!   `phy_bps`.
//! - `loss` is the chance a PDU fails its CRC; the link layer sends it
//!   again (so loss costs time, never data).
//! - `disconnect_after_bytes` drops the connection when the ATT payload
//!   carried (both ways) would pass that many bytes: the packet that
//!   would cross it and everything after it are never delivered, as when
//!   a phone walks out of range.
//!
//! Everything is a function of the configuration and the seed, so tests
//! and benchmarks are reproducible.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::framing::{ATT_HEADER, FramingConfig};
use super::link::{FramedLink, PacketPort};
use crate::transport::{LinkError, Wait};

/// Link-layer overhead of one PDU: preamble 1, access address 4,
/// header 2, CRC 3.
const LL_OVERHEAD: u64 = 10;
/// L2CAP basic header.
const L2CAP_HEADER: usize = 4;
/// Largest link-layer payload with Data Length Extension.
const LL_MAX_PAYLOAD: usize = 251;
/// Inter-frame space.
const IFS_US: u64 = 150;

/// Parameters of an emulated connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmulatedConfig {
    /// Negotiated ATT MTU (23..=517).
    pub mtu: u16,
    /// Connection interval in microseconds (7,500 to 4,000,000).
    pub interval_us: u64,
    /// PHY bit rate (1,000,000 for LE 1M, 2,000,000 for LE 2M).
    pub phy_bps: u64,
    /// Most PDUs each side sends in one connection event.
    pub packets_per_event: u32,
    /// Chance that a PDU fails its CRC and is sent again (0.0 to 1.0).
    pub loss: f64,
    /// Drop the connection once this many ATT payload bytes are carried.
    pub disconnect_after_bytes: Option<u64>,
    /// Seed of the loss draws.
    pub seed: u64,
    /// Framing window in packets (see [`FramingConfig::window`]).
    pub window: u16,
    /// Virtual time of the first connection event.
    pub start_us: u64,
}

impl EmulatedConfig {
    /// A phone-like connection at `mtu`: 15 ms interval (the iOS minimum),
    /// LE 1M, up to 16 PDUs per event, no loss.
    pub fn phone(mtu: u16) -> Self {
        EmulatedConfig {
            mtu,
            interval_us: 15_000,
            phy_bps: 1_000_000,
            packets_per_event: 16,
            loss: 0.0,
            disconnect_after_bytes: None,
            seed: 1,
            window: 32,
            start_us: 0,
        }
    }

    /// The framing this connection uses.
    pub fn framing(&self) -> FramingConfig {
        FramingConfig {
            window: self.window,
            ..FramingConfig::with_mtu(self.mtu)
        }
    }

    fn air_us(&self, bytes: u64) -> u64 {
        (bytes * 8 * 1_000_000).div_ceil(self.phy_bps.max(1))
    }

    /// Link-layer PDUs one ATT packet of `packet` bytes (ATT header
    /// excluded) takes.
    fn fragments(packet: usize) -> u32 {
        (packet + ATT_HEADER + L2CAP_HEADER).div_ceil(LL_MAX_PAYLOAD) as u32
    }

    /// What this connection can carry one way, in ATT payload bytes per
    /// second, with full packets and an idle return direction: the lower
    /// bound any transfer is measured against.
    pub fn capacity_bytes_per_sec(&self) -> f64 {
        let packet = self.framing().max_packet();
        let frags = u64::from(Self::fragments(packet));
        let sdu = (packet + ATT_HEADER + L2CAP_HEADER) as u64;
        let pdu = sdu.div_ceil(frags) + LL_OVERHEAD;
        let exchange = self.air_us(pdu) + IFS_US + self.air_us(LL_OVERHEAD) + IFS_US;
        let budget = self.interval_us.saturating_sub(IFS_US);
        let per_event = (budget / exchange).min(u64::from(self.packets_per_event));
        let packets_per_event = per_event as f64 / frags as f64;
        packets_per_event * packet as f64 / (self.interval_us as f64 / 1e6)
    }
}

/// Counters of the emulated radio.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RadioStats {
    /// Connection events that carried at least one data PDU.
    pub busy_events: u64,
    /// Data PDUs sent per direction (0: central to peripheral).
    pub pdus: [u64; 2],
    /// PDUs sent again after a CRC failure.
    pub retransmissions: u64,
    /// ATT payload bytes delivered per direction.
    pub payload_bytes: [u64; 2],
}

#[derive(Debug)]
struct Queued {
    packet: Vec<u8>,
    fragments_left: u32,
}

#[derive(Debug)]
struct Radio {
    config: EmulatedConfig,
    now_us: u64,
    next_event_us: u64,
    /// `queues[i]`: packets end `i` has handed over, not yet delivered.
    queues: [VecDeque<Queued>; 2],
    /// `inbox[i]`: packets delivered to end `i`, with their arrival time.
    inbox: [VecDeque<(u64, Vec<u8>)>; 2],
    carried: u64,
    lost_at: Option<u64>,
    rng: u64,
    stats: RadioStats,
}

impl Radio {
    fn draw(&mut self) -> f64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn is_lost(&self) -> bool {
        self.lost_at.is_some_and(|t| t <= self.now_us)
    }

    fn pdu_bytes(&self, dir: usize, sent: u32) -> Option<u64> {
        if sent >= self.config.packets_per_event {
            return None;
        }
        let q = self.queues[dir].front()?;
        let sdu = q.packet.len() + ATT_HEADER + L2CAP_HEADER;
        let frags = EmulatedConfig::fragments(q.packet.len());
        Some(sdu.div_ceil(frags as usize) as u64 + LL_OVERHEAD)
    }

    /// One PDU of direction `dir`'s head packet, ending at `at`.
    fn transmit(&mut self, dir: usize, at: u64) {
        self.stats.pdus[dir] += 1;
        if self.config.loss > 0.0 && self.draw() < self.config.loss {
            self.stats.retransmissions += 1;
            return;
        }
        let Some(head) = self.queues[dir].front_mut() else {
            return;
        };
        head.fragments_left -= 1;
        if head.fragments_left > 0 {
            return;
        }
        let Some(done) = self.queues[dir].pop_front() else {
            return;
        };
        let len = done.packet.len() as u64;
        if self
            .config
            .disconnect_after_bytes
            .is_some_and(|limit| self.carried + len > limit)
        {
            self.lost_at = Some(at);
            self.queues = Default::default();
            return;
        }
        self.carried += len;
        self.stats.payload_bytes[dir] += len;
        self.inbox[1 - dir].push_back((at, done.packet));
    }

    fn run_event(&mut self, t: u64) {
        let budget = self.config.interval_us.saturating_sub(IFS_US);
        let mut offset = 0;
        let mut sent = [0u32; 2];
        let mut busy = false;
        while self.lost_at.is_none() {
            let m = self.pdu_bytes(0, sent[0]);
            let s = self.pdu_bytes(1, sent[1]);
            if m.is_none() && s.is_none() {
                break;
            }
            let m_air = self.config.air_us(m.unwrap_or(LL_OVERHEAD));
            let s_air = self.config.air_us(s.unwrap_or(LL_OVERHEAD));
            if offset + m_air + s_air + 2 * IFS_US > budget {
                break;
            }
            busy = true;
            if m.is_some() {
                sent[0] += 1;
                self.transmit(0, t + offset + m_air);
            }
            offset += m_air + IFS_US;
            if s.is_some() && self.lost_at.is_none() {
                sent[1] += 1;
                self.transmit(1, t + offset + s_air);
            }
            offset += s_air + IFS_US;
        }
        if busy {
            self.stats.busy_events += 1;
        }
    }

    fn wait(&mut self, deadline_us: Option<u64>) -> Result<Wait, LinkError> {
        loop {
            let now = self.now_us;
            if self
                .inbox
                .iter()
                .any(|q| q.front().is_some_and(|(t, _)| *t <= now))
            {
                return Ok(Wait::Ready);
            }
            if self.is_lost() && self.inbox.iter().all(VecDeque::is_empty) {
                return Err(LinkError::Lost { partial: 0 });
            }
            if deadline_us.is_some_and(|d| d <= now) {
                return Ok(Wait::Deadline);
            }
            let queued = self.queues.iter().any(|q| !q.is_empty());
            let event = (queued && self.lost_at.is_none()).then_some(self.next_event_us);
            let arrival = self
                .inbox
                .iter()
                .filter_map(|q| q.front().map(|(t, _)| *t))
                .min();
            let lost = self.lost_at.filter(|t| *t > now);
            let next = [event, arrival, lost, deadline_us]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else {
                return Ok(Wait::Idle);
            };
            self.now_us = next.max(now);
            if event == Some(next) {
                self.run_event(next);
                self.next_event_us += self.config.interval_us;
            } else if !queued {
                // Idle events in between carried nothing; skip them.
                let behind = self.now_us.saturating_sub(self.next_event_us);
                let skip = behind / self.config.interval_us + 1;
                if self.next_event_us <= self.now_us {
                    self.next_event_us += skip * self.config.interval_us;
                }
            }
        }
    }
}

/// One end of an emulated connection (0: central, 1: peripheral).
#[derive(Debug)]
pub struct EmulatedPort {
    radio: Rc<RefCell<Radio>>,
    end: usize,
}

impl EmulatedPort {
    /// The radio's counters (shared by both ends).
    pub fn stats(&self) -> RadioStats {
        self.radio.borrow().stats.clone()
    }

    /// The connection's parameters.
    pub fn config(&self) -> EmulatedConfig {
        self.radio.borrow().config
    }

    /// Drops the connection now, as a walk out of range would.
    pub fn disconnect(&self) {
        let mut r = self.radio.borrow_mut();
        r.lost_at = Some(r.now_us);
        r.queues = Default::default();
    }
}

impl PacketPort for EmulatedPort {
    fn send_packet(&mut self, packet: Vec<u8>) -> Result<(), LinkError> {
        let mut r = self.radio.borrow_mut();
        if r.is_lost() {
            return Err(LinkError::Lost { partial: 0 });
        }
        // Handed over before the drop is noticed, never delivered.
        if r.lost_at.is_some() {
            return Ok(());
        }
        let fragments_left = EmulatedConfig::fragments(packet.len());
        r.queues[self.end].push_back(Queued {
            packet,
            fragments_left,
        });
        Ok(())
    }

    fn try_recv_packet(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        let mut r = self.radio.borrow_mut();
        let now = r.now_us;
        if r.inbox[self.end].front().is_some_and(|(t, _)| *t <= now) {
            return Ok(r.inbox[self.end].pop_front().map(|(_, p)| p));
        }
        if r.is_lost() {
            return Err(LinkError::Lost { partial: 0 });
        }
        Ok(None)
    }

    fn now_us(&self) -> u64 {
        self.radio.borrow().now_us
    }

    fn wait(&mut self, deadline_us: Option<u64>) -> Result<Wait, LinkError> {
        self.radio.borrow_mut().wait(deadline_us)
    }
}

/// A message link over an emulated connection.
pub type EmulatedLink = FramedLink<EmulatedPort>;

/// A connected pair: `(central, peripheral)`.
pub fn pair(config: EmulatedConfig) -> (EmulatedLink, EmulatedLink) {
    let radio = Rc::new(RefCell::new(Radio {
        config,
        now_us: config.start_us,
        next_event_us: config.start_us,
        queues: Default::default(),
        inbox: Default::default(),
        carried: 0,
        lost_at: None,
        rng: config.seed,
        stats: RadioStats::default(),
    }));
    let framing = config.framing();
    (
        FramedLink::new(
            EmulatedPort {
                radio: radio.clone(),
                end: 0,
            },
            framing,
        ),
        FramedLink::new(EmulatedPort { radio, end: 1 }, framing),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Link;

    fn transfer(config: EmulatedConfig, bytes: usize) -> (Vec<u8>, u64) {
        let (mut a, mut b) = pair(config);
        let message: Vec<u8> = (0..bytes).map(|i| (i * 7) as u8).collect();
        a.send(&message).expect("in a test");
        loop {
            if let Some(m) = b.try_recv().expect("in a test") {
                return (m, b.now_us());
            }
            a.try_recv().expect("in a test");
            assert_ne!(a.wait(None).expect("in a test"), Wait::Idle);
        }
    }

    #[test]
    fn a_short_message_arrives_in_the_first_event() {
        let (m, t) = transfer(EmulatedConfig::phone(185), 100);
        assert_eq!(m.len(), 100);
        // Both initial credit grants, then the one data packet: 1.6 ms of
        // air, in the connection's first event.
        assert!(t < 15_000, "{t} us");
    }

    #[test]
    fn bulk_transfer_runs_near_capacity_and_loss_slows_it() {
        let config = EmulatedConfig::phone(244);
        let (m, t) = transfer(config, 60_000);
        assert_eq!(m.len(), 60_000);
        let bound_us = 60_000.0 / config.capacity_bytes_per_sec() * 1e6;
        assert!(
            (t as f64) >= bound_us * 0.9,
            "{t} us is below the lower bound {bound_us}"
        );
        let lossy = EmulatedConfig {
            loss: 0.2,
            ..config
        };
        let (m2, t2) = transfer(lossy, 60_000);
        assert_eq!(m2, m);
        assert!(t2 > t, "loss must cost time: {t2} vs {t}");
    }

    #[test]
    fn disconnect_drops_the_rest_and_reports_the_partial_message() {
        let config = EmulatedConfig {
            disconnect_after_bytes: Some(1_000),
            ..EmulatedConfig::phone(185)
        };
        let (mut a, mut b) = pair(config);
        a.send(&[1u8; 300]).expect("in a test");
        a.send(&[2u8; 3_000]).expect("in a test");
        let mut got = Vec::new();
        let err = loop {
            match b.try_recv() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => {
                    let _ = a.try_recv();
                    let _ = a.wait(None);
                }
                Err(e) => break e,
            }
        };
        // The first message whole, none of the second, and the error
        // counts what of the second had arrived (whole packets of 181).
        assert_eq!(got, vec![vec![1u8; 300]]);
        let LinkError::Lost { partial } = err else {
            panic!("expected a lost link, got {err:?}");
        };
        assert!(partial > 0 && partial < 3_000, "{partial}");
        assert_eq!(partial % 181, 0);
        assert!(b.try_recv().is_err());
    }
}
