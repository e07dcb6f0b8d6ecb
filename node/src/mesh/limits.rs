//! Per-peer rate limits on what a peer asks of this node.
//!
//! Two token buckets per peer, one counting requests and one counting
//! bytes, refilled continuously. A request that finds either bucket empty
//! is refused (the peer is told, and nothing is done for it); a peer that
//! keeps asking while refused is disconnected. The buckets are forgotten
//! when the peer's last connection closes, so a table of them stays as
//! small as the set of connected peers; a reconnect costs the peer a new
//! noise handshake, which is slower than the refill.

use std::collections::HashMap;
use std::hash::Hash;

use libp2p::PeerId;

/// How much a single peer may ask of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Requests (payment messages, sync rounds, urgent pushes) per second,
    /// sustained.
    pub requests_per_sec: u64,
    /// Requests allowed in a burst.
    pub request_burst: u64,
    /// Bytes per second, sustained.
    pub bytes_per_sec: u64,
    /// Bytes allowed in a burst (at least one largest message).
    pub byte_burst: u64,
    /// Refusals in a row after which the peer is disconnected.
    pub strikes: u32,
}

impl Default for PeerLimits {
    /// Far above what honest peers use: a sync session is a handful of
    /// rounds every sync interval and a payment is one request; a large
    /// first sync of 100,000 headers is about 8 MB.
    fn default() -> Self {
        PeerLimits {
            requests_per_sec: 100,
            request_burst: 400,
            bytes_per_sec: 8 << 20,
            byte_burst: 64 << 20,
            strikes: 50,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Allow,
    /// Refuse it; the peer may slow down and retry.
    Refuse,
    /// Refuse it and disconnect the peer: it ignores refusals.
    Disconnect,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens times 1,000 (refilled per millisecond).
    milli: u64,
    at_ms: u64,
}

impl Bucket {
    fn full(burst: u64, now_ms: u64) -> Self {
        Bucket {
            milli: burst.saturating_mul(1_000),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64, per_sec: u64, burst: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(per_sec))
            .min(burst.saturating_mul(1_000));
        self.at_ms = self.at_ms.max(now_ms);
    }

    fn has(&self, cost: u64) -> bool {
        self.milli >= cost.saturating_mul(1_000)
    }

    fn take(&mut self, cost: u64) {
        self.milli -= cost.saturating_mul(1_000).min(self.milli);
    }
}

#[derive(Debug, Clone, Copy)]
struct PeerBuckets {
    requests: Bucket,
    bytes: Bucket,
    strikes: u32,
}

/// The buckets of every connected peer (or, for the settlement service,
/// every client address).
#[derive(Debug)]
pub struct RateLimiter<K = PeerId> {
    limits: PeerLimits,
    peers: HashMap<K, PeerBuckets>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// A limiter applying `limits` to each peer.
    pub fn new(limits: PeerLimits) -> Self {
        RateLimiter {
            limits,
            peers: HashMap::new(),
        }
    }

    /// Charges `peer` one request of `bytes` at `now_ms`.
    pub fn check(&mut self, peer: K, bytes: u64, now_ms: u64) -> Verdict {
        let l = self.limits;
        let p = self.peers.entry(peer).or_insert_with(|| PeerBuckets {
            requests: Bucket::full(l.request_burst, now_ms),
            bytes: Bucket::full(l.byte_burst, now_ms),
            strikes: 0,
        });
        p.requests
            .refill(now_ms, l.requests_per_sec, l.request_burst);
        p.bytes.refill(now_ms, l.bytes_per_sec, l.byte_burst);
        if p.requests.has(1) && p.bytes.has(bytes) {
            p.requests.take(1);
            p.bytes.take(bytes);
            p.strikes = 0;
            return Verdict::Allow;
        }
        p.strikes = p.strikes.saturating_add(1);
        if p.strikes >= l.strikes {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }

    /// Forgets a peer whose connections all closed.
    pub fn forget(&mut self, peer: &K) {
        self.peers.remove(peer);
    }

    /// Peers with buckets.
    pub fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PeerLimits {
        PeerLimits {
            requests_per_sec: 10,
            request_burst: 5,
            bytes_per_sec: 1_000,
            byte_burst: 2_000,
            strikes: 3,
        }
    }

    #[test]
    fn a_burst_is_served_then_refused_then_disconnected() {
        let mut r = RateLimiter::new(small());
        let p = PeerId::random();
        for _ in 0..5 {
            assert_eq!(r.check(p, 10, 0), Verdict::Allow);
        }
        assert_eq!(r.check(p, 10, 0), Verdict::Refuse);
        assert_eq!(r.check(p, 10, 0), Verdict::Refuse);
        assert_eq!(r.check(p, 10, 0), Verdict::Disconnect);
    }

    #[test]
    fn the_buckets_refill_at_the_sustained_rate() {
        let mut r = RateLimiter::new(small());
        let p = PeerId::random();
        for _ in 0..5 {
            r.check(p, 1, 0);
        }
        assert_eq!(r.check(p, 1, 0), Verdict::Refuse);
        // 10 per second: one token every 100 ms.
        assert_eq!(r.check(p, 1, 99), Verdict::Refuse);
        assert_eq!(r.check(p, 1, 100), Verdict::Allow);
        // A served request clears the strikes.
        assert_eq!(r.check(p, 1, 100), Verdict::Refuse);
        assert_eq!(r.check(p, 1, 100), Verdict::Refuse);
        assert_eq!(r.check(p, 1, 300), Verdict::Allow);
        // Refill never exceeds the burst.
        for _ in 0..5 {
            assert_eq!(r.check(p, 1, 100_000), Verdict::Allow);
        }
        assert_eq!(r.check(p, 1, 100_000), Verdict::Refuse);
    }

    #[test]
    fn bytes_are_limited_apart_from_requests() {
        let mut r = RateLimiter::new(small());
        let p = PeerId::random();
        assert_eq!(r.check(p, 2_000, 0), Verdict::Allow);
        assert_eq!(r.check(p, 1, 0), Verdict::Refuse);
        // 1,000 bytes per second.
        assert_eq!(r.check(p, 500, 500), Verdict::Allow);
        // Larger than the burst: never served.
        assert_eq!(r.check(p, 2_001, 1_000_000), Verdict::Refuse);
    }

    #[test]
    fn peers_are_apart_and_forgotten() {
        let mut r = RateLimiter::new(small());
        let (a, b) = (PeerId::random(), PeerId::random());
        for _ in 0..5 {
            r.check(a, 1, 0);
        }
        assert_eq!(r.check(a, 1, 0), Verdict::Refuse);
        assert_eq!(r.check(b, 1, 0), Verdict::Allow);
        assert_eq!(r.tracked(), 2);
        r.forget(&a);
        assert_eq!(r.tracked(), 1);
        assert_eq!(r.check(a, 1, 0), Verdict::Allow);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut r = RateLimiter::new(small());
        let p = PeerId::random();
        for _ in 0..5 {
            r.check(p, 1, 1_000);
        }
        assert_eq!(r.check(p, 1, 0), Verdict::Refuse);
        assert_eq!(r.check(p, 1, 1_050), Verdict::Refuse);
    }
}
