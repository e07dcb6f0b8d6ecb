//! What a message costs on a modelled link: airtime, turns and loss.
//!
//! A link is half-duplex at the level the protocol sees it: one side sends
//! a burst of frames, the other answers. Each turn of direction waits for
//! the next connection event (BLE) or one latency (LAN); each frame takes
//! its bytes over the link's throughput; a lost frame is sent again at the
//! next connection event (BLE's link layer retransmits) or after four
//! latencies (LAN), so the protocol above sees a reliable, in-order stream
//! that is slower and costs more radio bytes.

use rand::RngExt;

use crate::scenario::Scenario;

/// The kind of a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// Bluetooth LE.
    Ble,
    /// Local network.
    Lan,
}

impl LinkKind {
    /// The name in trace files.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Ble => "ble",
            LinkKind::Lan => "lan",
        }
    }
}

/// Timing of one link kind, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct LinkModel {
    /// Largest frame the protocol sends (MTU less the ATT header on BLE).
    pub max_frame: usize,
    /// Wait for the next chance to send when the direction turns.
    turn_us: f64,
    /// Microseconds per byte.
    us_per_byte: f64,
    /// Delay before a lost frame is sent again.
    retry_us: f64,
    /// Connection set-up before the first byte.
    setup_us: f64,
    loss: f64,
}

impl LinkModel {
    /// The model of `kind` in `scenario`.
    pub fn new(kind: LinkKind, scenario: &Scenario) -> LinkModel {
        match kind {
            LinkKind::Ble => {
                let ci = scenario.ble.connection_interval_ms * 1000.0;
                LinkModel {
                    max_frame: scenario.ble.mtu as usize - 3,
                    turn_us: ci,
                    us_per_byte: 8_000.0 / scenario.ble.bandwidth_kbps,
                    retry_us: ci,
                    // Advertising seen, connection request, MTU exchange.
                    setup_us: 3.0 * ci,
                    loss: scenario.ble.loss,
                }
            }
            LinkKind::Lan => {
                let lat = scenario.lan.latency_ms * 1000.0;
                LinkModel {
                    max_frame: 64 * 1024,
                    turn_us: lat,
                    us_per_byte: 8.0 / scenario.lan.bandwidth_mbps,
                    retry_us: 4.0 * lat.max(1.0),
                    setup_us: 0.0,
                    loss: scenario.lan.loss,
                }
            }
        }
    }

    /// Time to open a connection.
    pub fn setup_us(&self) -> f64 {
        self.setup_us
    }

    /// Time for one turn of direction.
    pub fn turn_us(&self) -> f64 {
        self.turn_us
    }

    /// Sends one frame of `len` bytes: its airtime, and the radio bytes
    /// spent including resends.
    pub fn frame<R: rand::Rng + ?Sized>(&self, len: usize, rng: &mut R) -> (f64, u64) {
        let mut time = len as f64 * self.us_per_byte;
        let mut bytes = len as u64;
        // At most a few resends: the loss model is per attempt, bounded so
        // that a pathological setting cannot loop for ever.
        for _ in 0..16 {
            if self.loss == 0.0 || !rng.random_bool(self.loss) {
                break;
            }
            time += self.retry_us + len as f64 * self.us_per_byte;
            bytes += len as u64;
        }
        (time, bytes)
    }
}
