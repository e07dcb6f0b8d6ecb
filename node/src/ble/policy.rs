//! When to connect: a cap on simultaneous links, an RSSI threshold,
//! exponential backoff after failures (projects that shipped BLE meshes
//! report batteries drained by reconnect loops), and one link per pair of
//! nodes even when both see each other.
//!
//! One link per pair: both nodes advertise and scan, and of two nodes
//! that need to talk, the one with the smaller short id connects; the
//! other waits to be connected to. A payer is the exception: it connects
//! to the payee it chose whatever the ids, and an incoming connection
//! from a node already linked is turned away ([`ConnectionPolicy::admit`]).
//!
//! Sans-I/O: times are milliseconds on a caller's monotonic clock.

use std::collections::{HashMap, HashSet};

use super::advert::Advertisement;

/// Policy parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Most simultaneous links (older Android stacks allow 7 in all).
    pub max_links: usize,
    /// Weakest signal worth a connection, dBm.
    pub rssi_min: i16,
    /// Wait after a first failure, ms.
    pub backoff_initial_ms: u64,
    /// Longest wait between attempts, ms.
    pub backoff_max_ms: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            max_links: 4,
            rssi_min: -85,
            backoff_initial_ms: 2_000,
            backoff_max_ms: 300_000,
        }
    }
}

/// This node's side of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnState {
    /// This node's short id.
    pub node: [u8; 4],
    /// Its ledger digest's first 4 bytes.
    pub digest: [u8; 4],
    /// It has urgent proofs to spread.
    pub urgent: bool,
    /// It wants to pay a payee that advertises an invoice.
    pub paying: bool,
}

/// Why a seen node is not connected to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// This node's own advertisement.
    Myself,
    /// Too weak a signal.
    Weak {
        /// Its RSSI, dBm.
        rssi: i16,
    },
    /// Equal digests and nothing urgent: nothing to exchange.
    InSync,
    /// Already linked.
    Linked,
    /// The other node connects (smaller id).
    PeerConnects,
    /// At the cap of simultaneous links.
    AtCapacity,
    /// Recent failures: not before this time.
    BackingOff {
        /// When the next attempt is allowed, ms.
        until_ms: u64,
    },
}

/// What to do about a node seen advertising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Connect to it now.
    Connect,
    /// Leave it.
    Skip(Skip),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    until_ms: u64,
}

/// The connection policy of one node.
#[derive(Debug)]
pub struct ConnectionPolicy {
    config: PolicyConfig,
    links: HashSet<[u8; 4]>,
    failures: HashMap<[u8; 4], Failures>,
}

impl ConnectionPolicy {
    /// A policy with no links yet.
    pub fn new(config: PolicyConfig) -> Self {
        ConnectionPolicy {
            config,
            links: HashSet::new(),
            failures: HashMap::new(),
        }
    }

    /// Links open now.
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Whether to connect to a node seen advertising `seen` at `rssi`.
    pub fn decide(&self, own: &OwnState, seen: &Advertisement, rssi: i16, now_ms: u64) -> Decision {
        let skip = Decision::Skip;
        if seen.node == own.node {
            return skip(Skip::Myself);
        }
        if self.links.contains(&seen.node) {
            return skip(Skip::Linked);
        }
        if rssi < self.config.rssi_min {
            return skip(Skip::Weak { rssi });
        }
        let paying = own.paying && seen.flags.invoice;
        if !paying && seen.digest == own.digest && !seen.flags.urgent && !own.urgent {
            return skip(Skip::InSync);
        }
        if !paying && seen.node < own.node {
            return skip(Skip::PeerConnects);
        }
        if self.links.len() >= self.config.max_links {
            return skip(Skip::AtCapacity);
        }
        if let Some(f) = self.failures.get(&seen.node)
            && now_ms < f.until_ms
        {
            return skip(Skip::BackingOff {
                until_ms: f.until_ms,
            });
        }
        Decision::Connect
    }

    /// A link to `peer` opened (either way). Returns `false`, and the
    /// caller closes the new link, when one is already open or the cap is
    /// reached: one link per pair.
    pub fn admit(&mut self, peer: [u8; 4]) -> bool {
        if self.links.len() >= self.config.max_links {
            return false;
        }
        self.links.insert(peer)
    }

    /// The link to `peer` closed; `clean` if the exchange finished (which
    /// clears its failures), otherwise it counts as a failure.
    pub fn closed(&mut self, peer: [u8; 4], clean: bool, now_ms: u64) {
        self.links.remove(&peer);
        if clean {
            self.failures.remove(&peer);
        } else {
            self.failed(peer, now_ms);
        }
    }

    /// A connection attempt to `peer` failed: wait before the next one,
    /// twice as long after each failure in a row, up to the cap, with up
    /// to a quarter more drawn from the peer's id so that nodes that
    /// failed together do not retry together.
    pub fn failed(&mut self, peer: [u8; 4], now_ms: u64) {
        let f = self.failures.entry(peer).or_insert(Failures {
            count: 0,
            until_ms: 0,
        });
        f.count = f.count.saturating_add(1);
        let doubling = 1u64 << (f.count - 1).min(20);
        let base = self
            .config
            .backoff_initial_ms
            .saturating_mul(doubling)
            .min(self.config.backoff_max_ms);
        let jitter = base / 4 * u64::from(peer[3]) / 255;
        f.until_ms = now_ms.saturating_add(base + jitter);
    }

    /// Of the payees in range advertising an invoice, the nearest (smallest
    /// path loss), if it is strong enough: the payer's "tap".
    pub fn nearest_payee<'a>(
        &self,
        seen: impl IntoIterator<Item = (&'a Advertisement, i16)>,
    ) -> Option<&'a Advertisement> {
        seen.into_iter()
            .filter(|(a, rssi)| a.flags.invoice && *rssi >= self.config.rssi_min)
            .min_by_key(|(a, rssi)| a.path_loss(*rssi))
            .map(|(a, _)| a)
    }
}

#[cfg(test)]
mod tests {
    use super::super::advert::AdvertFlags;
    use super::*;

    fn advert(node: u8, digest: u8, flags: AdvertFlags) -> Advertisement {
        Advertisement {
            node: [node; 4],
            digest: [digest; 4],
            flags,
            tx_power: 0,
        }
    }

    fn own(node: u8, digest: u8) -> OwnState {
        OwnState {
            node: [node; 4],
            digest: [digest; 4],
            urgent: false,
            paying: false,
        }
    }

    #[test]
    fn exactly_one_side_of_a_pair_connects() {
        let p = ConnectionPolicy::new(PolicyConfig::default());
        let (a, b) = (own(1, 10), own(2, 20));
        let seen_b = advert(2, 20, AdvertFlags::default());
        let seen_a = advert(1, 10, AdvertFlags::default());
        assert_eq!(p.decide(&a, &seen_b, -60, 0), Decision::Connect);
        assert_eq!(
            p.decide(&b, &seen_a, -60, 0),
            Decision::Skip(Skip::PeerConnects)
        );
    }

    #[test]
    fn equal_digests_weak_signals_and_full_slots_are_skipped() {
        let mut p = ConnectionPolicy::new(PolicyConfig {
            max_links: 1,
            ..PolicyConfig::default()
        });
        let me = own(1, 10);
        let none = AdvertFlags::default();
        assert_eq!(
            p.decide(&me, &advert(2, 10, none), -60, 0),
            Decision::Skip(Skip::InSync)
        );
        let urgent = AdvertFlags {
            urgent: true,
            ..none
        };
        assert_eq!(
            p.decide(&me, &advert(2, 10, urgent), -60, 0),
            Decision::Connect
        );
        assert_eq!(
            p.decide(&me, &advert(2, 20, none), -90, 0),
            Decision::Skip(Skip::Weak { rssi: -90 })
        );
        assert!(p.admit([3; 4]));
        assert!(!p.admit([3; 4]), "a second link to the same node");
        assert_eq!(
            p.decide(&me, &advert(2, 20, none), -60, 0),
            Decision::Skip(Skip::AtCapacity)
        );
    }

    #[test]
    fn failures_back_off_exponentially_and_success_resets() {
        let mut p = ConnectionPolicy::new(PolicyConfig::default());
        let me = own(1, 10);
        let peer = advert(2, 20, AdvertFlags::default());
        let mut waits = Vec::new();
        let mut now = 0;
        for _ in 0..12 {
            p.failed(peer.node, now);
            let Decision::Skip(Skip::BackingOff { until_ms }) = p.decide(&me, &peer, -60, now)
            else {
                panic!("expected backoff");
            };
            waits.push(until_ms - now);
            assert_eq!(p.decide(&me, &peer, -60, until_ms), Decision::Connect);
            now = until_ms;
        }
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(waits[1] >= 2 * waits[0] - 1);
        let cap = 300_000 + 300_000 / 4;
        assert!(*waits.last().expect("in a test") <= cap);
        assert!(*waits.last().expect("in a test") >= 300_000);
        assert!(p.admit(peer.node));
        p.closed(peer.node, true, now);
        assert_eq!(p.decide(&me, &peer, -60, now), Decision::Connect);
    }

    #[test]
    fn payer_picks_the_nearest_invoice_and_connects_whatever_the_ids() {
        let p = ConnectionPolicy::new(PolicyConfig::default());
        let invoice = AdvertFlags {
            invoice: true,
            ..AdvertFlags::default()
        };
        let far = advert(0, 1, invoice);
        let near = Advertisement {
            tx_power: -20,
            ..advert(0, 2, invoice)
        };
        let idle = advert(0, 3, AdvertFlags::default());
        // near: -20 - (-70) = 50 dB of path loss; far: 0 - (-60) = 60 dB.
        let seen = [(&far, -60), (&near, -70), (&idle, -40)];
        assert_eq!(p.nearest_payee(seen), Some(&near));
        let payer = OwnState {
            paying: true,
            ..own(9, 2)
        };
        // A smaller id and an equal digest do not stop a payer.
        assert_eq!(p.decide(&payer, &near, -70, 0), Decision::Connect);
    }
}
