//! The discrete-event loop: payments at their instants, a tick per sync
//! interval (contacts, sessions, uplinks), replays; one seeded random
//! stream, so the same seed gives the same run on any machine. The sessions
//! of a sync round that share no device, and the rotations at midnight, run
//! on several threads when asked (`Simulation::threads`), with the same
//! result as on one.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use chacha20::ChaCha8Rng;
use meshpay_proto::prelude::*;
use rand::{RngExt, SeedableRng};

use crate::devices::{Behaviour, LedgerDevice, Wallet};
use crate::limit::{ContactHistory, Windows};
use crate::link::{LinkKind, LinkModel};
use crate::payment::{self, PaymentEnd};
use crate::push::{self, PushCounts};
use crate::scenario::Scenario;
use crate::session::{self, SessionEnd};
use crate::settle;
use crate::world::{Contact, DeviceId, SimTime, World, hours_ms};
use meshpay_proto::ledger::{Entry, RetentionPolicy};
use meshpay_proto::settlement_ack::{Outcome, SettlementAck, SettlementAckTerms};

/// A payment as it happened.
#[derive(Debug, Clone)]
pub struct PaymentRecord {
    /// When it started.
    pub t: SimTime,
    /// The paying wallet.
    pub wallet: u32,
    /// Whether the wallet is an adversary.
    pub culprit: bool,
    /// The payee.
    pub payee: DeviceId,
    /// Amount.
    pub amount: u64,
    /// The header, if a transfer was signed.
    pub header: Option<TransferHeader>,
    /// Whether the payee accepted it.
    pub accepted: bool,
    /// The rule named by a refusal.
    pub refused: Option<Rule>,
    /// Protocol time, microseconds.
    pub protocol_us: f64,
    /// When a gateway uploaded its receipt.
    pub settled: Option<SimTime>,
    /// The receipt, while it waits for settlement (dropped once settled).
    pub receipt: Option<Box<Receipt>>,
    /// What settlement decided (the final outcome after the run, as
    /// [`Simulation::read_outcomes`] reads it back).
    pub outcome: Option<Outcome>,
}

/// The first two conflicting headers of one allowance, as the world
/// produced them (ground truth, kept outside every device).
#[derive(Debug, Clone)]
pub struct ConflictFact {
    /// The allowance.
    pub allowance: AllowanceId,
    /// The payee holding the earlier header, and since when.
    pub first: (DeviceId, SimTime),
    /// The payee shown the later header, and when.
    pub second: (DeviceId, SimTime),
    /// When a gateway holding its proof was in an uplink window.
    pub reported: Option<SimTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Tick,
    Pay { wallet: u32, tries: u32 },
    Replay,
}

/// An urgent message on its way to LAN peers.
struct InFlight {
    entries: Vec<meshpay_proto::ledger::Entry>,
    /// Deliveries still to come.
    left: usize,
    /// The LAN's gossip, or BLE connections made for the urgent flag.
    via: LinkKind,
}

/// Counters of sync sessions.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionCounts {
    /// Sessions by how they ended.
    pub by_end: BTreeMap<SessionEnd, u64>,
    /// Contacts where both ledgers had equal digests: no session (the
    /// digest travels in the advertisement / hello).
    pub skipped_in_sync: u64,
    /// Contacts left out because a device was at its connection limit.
    pub skipped_busy: u64,
    /// Contacts left out because an earlier session with that peer failed
    /// (back-off).
    pub skipped_backoff: u64,
    /// Sessions between two honest devices that one side refused, by the
    /// error's kind: each is a protocol finding, not an attack.
    pub honest_refusals: BTreeMap<String, u64>,
    /// Bytes of the `Urgent` messages (all proofs held, left out while the
    /// sender's urgent digest is the one of its last agreed session with
    /// that peer), both sides.
    pub urgent_bytes: u64,
}

/// A run in progress, and afterwards everything the report needs.
pub struct Simulation {
    /// The scenario.
    pub scenario: Scenario,
    /// The seed.
    pub seed: u64,
    rng: ChaCha8Rng,
    world: World,
    trace: Option<BTreeMap<SimTime, Vec<Contact>>>,
    /// Ledger devices.
    pub devices: Vec<LedgerDevice>,
    /// Wallets (clones after the originals).
    pub wallets: Vec<Wallet>,
    ble: LinkModel,
    lan: LinkModel,
    queue: BinaryHeap<Reverse<(SimTime, u64, Event)>>,
    seq: u64,
    /// Contacts, for the limit.
    pub history: ContactHistory,
    /// Every payment.
    pub payments: Vec<PaymentRecord>,
    pending: Vec<usize>,
    /// Every header shown to a payee, per allowance (up to 64 each), with
    /// the payee and when: what the limit of a conflict is computed from.
    pub presented: BTreeMap<AllowanceId, Vec<(SignedHeader, DeviceId, SimTime)>>,
    /// Conflicts, by allowance.
    pub conflicts: BTreeMap<AllowanceId, ConflictFact>,
    naive_last: Vec<u64>,
    /// Bytes naive flooding would have sent, remembering per peer what it
    /// forwarded (once per message and peer).
    pub naive_bytes: u64,
    /// Bytes stateless naive flooding would have sent (every message held,
    /// at every contact, both ways).
    pub naive_stateless_bytes: u64,
    /// Per ordered pair: ticks to skip after a failed session, and the
    /// current back-off.
    backoff: BTreeMap<(DeviceId, DeviceId), (SimTime, u32)>,
    /// Sync sessions.
    pub sessions: SessionCounts,
    /// The push of urgent entries: LAN gossip, and the BLE urgent flag.
    pub push: PushCounts,
    in_flight: BTreeMap<u64, InFlight>,
    next_push: u64,
    /// While a sync round runs: each device's BLE contacts of the tick, in
    /// contact order (empty between rounds).
    round_ble: BTreeMap<DeviceId, Vec<DeviceId>>,
    /// Copies of pushed messages on their way: (arrival, order, message,
    /// receiver). Kept apart from the event queue so that the sessions of
    /// a tick, which run one after the other, see what arrived before each
    /// starts.
    deliveries: BinaryHeap<Reverse<(SimTime, u64, u64, DeviceId)>>,
    /// Replayed transfers by what the payee said.
    pub replays: BTreeMap<String, u64>,
    recent: VecDeque<(Transfer, Allowance, DeviceId)>,
    /// Payments given up because no payee was in reach.
    pub no_payee: u64,
    /// Events processed: payments, ticks, replays, sync sessions and
    /// deliveries of pushed messages.
    pub events: u64,
    /// Uplink windows.
    pub windows: Windows,
    /// End of the run.
    pub end: SimTime,
    /// The settlement service (the real rules).
    pub settlement: settle::Service,
    /// Ledger rotations at epoch boundaries (protocol.md 9.8).
    pub rotations: RotationCounts,
    /// Whether ledgers rotate (`--no-rotate` turns it off, to compare).
    pub rotate: bool,
    /// Threads for the sessions of a sync round and the rotations (1 by
    /// default; `meshpay-sim run` uses every core). The output is the
    /// same on any number.
    pub threads: usize,
    issuer: SecretKey,
    acks_issued: u64,
    start: Timestamp,
}

/// What the ledgers' rotations did, summed over devices.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RotationCounts {
    /// Epoch boundaries (UTC midnights) crossed.
    pub epochs: u64,
    /// Entries carried into the new epochs.
    pub kept: u64,
    /// Of those, written again by their own writer.
    pub written: u64,
    /// Entries left behind (settled, expired).
    pub dropped: u64,
    /// Settlement acknowledgements put into gateways' ledgers.
    pub acks: u64,
}

/// Size of a signed header as gossiped: what naive flooding sends per entry.
pub const HEADER_BYTES: u64 = 118;

/// Retry a payment this long after finding no payee in reach.
const RETRY_MS: SimTime = 60_000;

impl Simulation {
    /// Builds the world, keys, allowances and schedules from `seed`.
    /// `trace`, if given, replaces the modelled contacts.
    pub fn new(
        scenario: Scenario,
        seed: u64,
        trace: Option<BTreeMap<SimTime, Vec<Contact>>>,
    ) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let world = World::new(&scenario, seed);
        let start = Timestamp(scenario.start_unix);
        let end = hours_ms(scenario.duration_hours);
        let issuer = SecretKey::generate(&mut rng);
        let trust = TrustStore::new(issuer.public());
        let currency = Currency::new("XSM").expect("three capital letters");
        let expires = start.plus((scenario.duration_hours * 3600.0) as u64 + 86_400);
        let class = 1;

        let n_dev = world.device_count();
        let merchants = scenario.merchants.count;
        let mut devices: Vec<LedgerDevice> = (0..n_dev)
            .map(|d| {
                let key = SecretKey::generate(&mut rng);
                let mut dev = LedgerDevice::new(key, &u64::from(d).to_le_bytes(), trust.clone());
                let carrier = d >= merchants;
                dev.accepts_payments = !carrier || scenario.carriers.accept_payments;
                dev.gateway = if carrier {
                    d - merchants < scenario.gateways.carriers
                } else {
                    d < scenario.gateways.merchants
                };
                dev.credential = Some(Box::new(PayeeCredential::sign(
                    PayeeCredentialTerms {
                        payee: dev.key.public(),
                        class,
                        expires_at: expires,
                        issuer: issuer.public(),
                    },
                    &issuer,
                )));
                dev
            })
            .collect();
        // Adversarial peers: the last non-gateway devices.
        let candidates: Vec<DeviceId> = (0..n_dev)
            .rev()
            .filter(|&d| !devices[d as usize].gateway)
            .collect();
        let mut bad = candidates.into_iter();
        // They misbehave in sync only and take no payments, so every fact
        // starts at an honest payee.
        for _ in 0..scenario.adversaries.forgers {
            if let Some(d) = bad.next() {
                devices[d as usize].behaviour = Behaviour::Forger;
                devices[d as usize].accepts_payments = false;
            }
        }
        for _ in 0..scenario.adversaries.stallers {
            if let Some(d) = bad.next() {
                devices[d as usize].behaviour = Behaviour::Staller;
                devices[d as usize].accepts_payments = false;
            }
        }

        let w = &scenario.wallets;
        let sites = world.site_count();
        let homes = if scenario.carriers.accept_payments && scenario.carriers.count > 0 {
            sites
        } else {
            world.sites_with_merchants()
        };
        let mut wallets: Vec<Wallet> = (0..w.count)
            .map(|i| {
                let key = SecretKey::generate(&mut rng);
                let mut id = [0u8; 16];
                rng.fill(&mut id[..]);
                let allowance = Allowance::sign(
                    AllowanceTerms {
                        id: AllowanceId(id),
                        wallet: key.public(),
                        amount: w.allowance,
                        currency,
                        issued_at: start.minus(3_600),
                        expires_at: expires,
                        caps: Caps {
                            max_per_payment: w.amount_max,
                            max_payments: 100_000,
                        },
                        tier: 1,
                        restriction: w.restricted.then_some(Restriction::PayeeClass(class)),
                        issuer: issuer.public(),
                    },
                    &issuer,
                );
                Wallet {
                    key,
                    allowance,
                    spend: SpendState::FRESH,
                    before_last: SpendState::FRESH,
                    home: i % homes,
                    last_site: None,
                    double_spender: false,
                    clone_of: None,
                    cost: Default::default(),
                }
            })
            .collect();

        let settlement = settle::Service::new(
            trust.clone(),
            wallets.iter().map(|w| &w.allowance),
            devices.iter().filter_map(|d| d.credential.as_deref()),
        );
        let mut sim = Simulation {
            settlement,
            rotations: RotationCounts::default(),
            rotate: true,
            threads: 1,
            issuer,
            acks_issued: 0,
            ble: LinkModel::new(LinkKind::Ble, &scenario),
            lan: LinkModel::new(LinkKind::Lan, &scenario),
            history: ContactHistory::new(n_dev),
            naive_last: vec![0; (n_dev as usize) * (n_dev as usize)],
            windows: Windows {
                first: hours_ms(scenario.gateways.first_uplink_h),
                every: hours_ms(scenario.gateways.every_h).max(1),
                len: (scenario.gateways.window_min * 60_000.0) as SimTime,
                end,
            },
            end,
            start,
            seed,
            world,
            trace,
            devices,
            wallets: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            payments: Vec::new(),
            pending: Vec::new(),
            presented: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            naive_bytes: 0,
            naive_stateless_bytes: 0,
            backoff: BTreeMap::new(),
            sessions: SessionCounts::default(),
            push: PushCounts::default(),
            in_flight: BTreeMap::new(),
            next_push: 0,
            round_ble: BTreeMap::new(),
            deliveries: BinaryHeap::new(),
            replays: BTreeMap::new(),
            recent: VecDeque::new(),
            no_payee: 0,
            events: 0,
            rng,
            scenario,
        };

        // Schedules: buyers, double spenders among them, clones.
        let active = hours_ms(sim.scenario.wallets.active_hours);
        let per_wallet =
            sim.scenario.wallets.payments_per_day * sim.scenario.wallets.active_hours / 24.0;
        let mut buyers = Vec::new();
        for (i, wallet) in wallets.iter_mut().enumerate() {
            if sim.rng.random_bool(sim.scenario.wallets.buyers_share) {
                buyers.push(i as u32);
                if sim
                    .rng
                    .random_bool(sim.scenario.adversaries.double_spenders)
                {
                    wallet.double_spender = true;
                }
            }
        }
        let clones = (sim.scenario.adversaries.cloned_wallets as usize).min(buyers.len());
        for k in 0..clones {
            let original = buyers[k * buyers.len() / clones.max(1)];
            let mut c = wallets[original as usize].clone();
            c.clone_of = Some(original);
            c.home = (c.home + sites / 2) % sites;
            wallets.push(c);
            buyers.push(wallets.len() as u32 - 1);
        }
        for &b in &buyers {
            let culprit =
                wallets[b as usize].is_culprit() || wallets.iter().any(|x| x.clone_of == Some(b));
            let mut n =
                per_wallet.floor() as u32 + u32::from(sim.rng.random_bool(per_wallet.fract()));
            if culprit {
                n = n.max(3);
            }
            for _ in 0..n {
                let t = sim.rng.random_range(0..active.max(1));
                sim.push(
                    t,
                    Event::Pay {
                        wallet: b,
                        tries: 0,
                    },
                );
            }
        }
        sim.wallets = wallets;
        for _ in 0..sim.scenario.adversaries.replays {
            let t = sim.rng.random_range(active / 10..active.max(2));
            sim.push(t, Event::Replay);
        }
        sim.push(0, Event::Tick);
        sim
    }

    fn push(&mut self, t: SimTime, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, e)));
    }

    /// Runs to the end; `progress` is told the simulated time reached.
    pub fn run(&mut self, progress: &mut dyn FnMut(SimTime)) {
        while let Some(Reverse((t, _, e))) = self.queue.pop() {
            if t > self.end {
                break;
            }
            self.deliver_until(t);
            self.events += 1;
            match e {
                Event::Tick => {
                    self.tick(t);
                    progress(t);
                    let next = t + self.scenario.sync_interval_s * 1000;
                    if next <= self.end {
                        self.push(next, Event::Tick);
                    }
                }
                Event::Pay { wallet, tries } => self.pay(t, wallet, tries),
                Event::Replay => self.replay(t),
            }
        }
        self.deliver_until(self.end);
    }

    fn wall(&self, t: SimTime) -> Timestamp {
        self.start.plus(t / 1000)
    }

    fn tick(&mut self, t: SimTime) {
        self.world.advance(t);
        let contacts = match &self.trace {
            Some(trace) => {
                let from = t.saturating_sub(self.scenario.sync_interval_s * 1000);
                let mut c: Vec<Contact> = trace
                    .range(from + u64::from(t > 0)..=t)
                    .flat_map(|(_, v)| v.iter().copied())
                    .collect();
                c.sort();
                c.dedup_by(|x, y| x.a == y.a && x.b == y.b);
                c
            }
            None => self.world.contacts(t),
        };
        self.history.record(t, &contacts);
        self.rotate_ledgers(t);
        let n = self.devices.len();
        for c in &contacts {
            for (x, y) in [(c.a, c.b), (c.b, c.a)] {
                // What a ledger that never rotated would hold: naive
                // flooding is the baseline without epochs.
                let d = &self.devices[x as usize];
                let held = d.ledger.held_len() as u64 + d.dropped;
                self.naive_stateless_bytes += held * HEADER_BYTES;
                let last = &mut self.naive_last[x as usize * n + y as usize];
                self.naive_bytes += held.saturating_sub(*last) * HEADER_BYTES;
                *last = (*last).max(held);
            }
        }
        self.sync_round(t, contacts);
        if self.windows.is_open(t) {
            self.uplink(t);
        }
    }

    /// At the first tick of a new epoch (a UTC day of the simulated clock)
    /// every device rotates its ledger, as a node does by its clock: all
    /// devices then meet in the same epoch.
    fn rotate_ledgers(&mut self, t: SimTime) {
        if !self.rotate {
            return;
        }
        let now = self.wall(t);
        let policy = RetentionPolicy::default();
        let mut crossed = false;
        // Each ledger rotates on its own: on all threads, summed in
        // device order.
        let devices: Vec<&mut LedgerDevice> = self.devices.iter_mut().collect();
        let rotated = crate::parallel::map(self.threads, devices, |d| {
            // The first tick moves every new (empty) ledger out of epoch 0
            // into the day the run starts in: not a boundary crossed.
            let first = d.ledger.epoch() == 0;
            let r = d.ledger.advance(now, &policy)?;
            d.dropped += r.dropped as u64;
            d.peers.clear();
            d.touch();
            Some((first, r))
        });
        for (first, r) in rotated.into_iter().flatten() {
            crossed |= !first;
            self.rotations.kept += r.kept as u64;
            self.rotations.written += r.written as u64;
            self.rotations.dropped += r.dropped as u64;
        }
        self.rotations.epochs += u64::from(crossed);
    }

    fn sync_round(&mut self, t: SimTime, mut contacts: Vec<Contact>) {
        // Fisher-Yates with the run's stream: no device is always first.
        for i in (1..contacts.len()).rev() {
            let j = self.rng.random_range(0..=i);
            contacts.swap(i, j);
        }
        // Each session draws its link's losses from a stream of its own,
        // seeded here in contact order: what a session meets does not
        // depend on the thread that runs it.
        let seeds: Vec<u64> = contacts.iter().map(|_| self.rng.random()).collect();
        // The BLE contacts a device's urgent flag reaches in this round.
        self.round_ble.clear();
        for c in contacts.iter().filter(|c| c.kind == LinkKind::Ble) {
            self.round_ble.entry(c.a).or_default().push(c.b);
            self.round_ble.entry(c.b).or_default().push(c.a);
        }
        // Waves: a contact goes into the wave after the last one holding
        // either of its devices, so each device's sessions keep the order
        // of the list, and the sessions of a wave share no device.
        let n = self.devices.len();
        let mut next_wave = vec![0usize; n];
        let mut waves: Vec<Vec<usize>> = Vec::new();
        for (i, c) in contacts.iter().enumerate() {
            let (a, b) = (c.a as usize, c.b as usize);
            let w = next_wave[a].max(next_wave[b]);
            if waves.len() <= w {
                waves.push(Vec::new());
            }
            waves[w].push(i);
            next_wave[a] = w + 1;
            next_wave[b] = w + 1;
        }
        let mut used = vec![0u32; n];
        let mut busy = vec![t; n];
        for wave in waves {
            let mut jobs = Vec::with_capacity(wave.len());
            for i in wave {
                let c = contacts[i];
                let (a, b) = (c.a as usize, c.b as usize);
                let limit = match c.kind {
                    LinkKind::Ble => self
                        .scenario
                        .sync_fanout
                        .min(self.scenario.ble.max_connections),
                    LinkKind::Lan => self.scenario.sync_fanout,
                };
                if used[a] >= limit || used[b] >= limit {
                    self.sessions.skipped_busy += 1;
                    continue;
                }
                if self
                    .backoff
                    .get(&(c.a, c.b))
                    .is_some_and(|&(until, _)| t < until)
                {
                    self.sessions.skipped_backoff += 1;
                    continue;
                }
                jobs.push((c, busy[a].max(busy[b]), seeds[i]));
            }
            self.deliver_before_wave(&jobs);
            let results = self.run_wave(&jobs);
            for ((c, t0, _), r) in jobs.into_iter().zip(results) {
                let (a, b) = (c.a as usize, c.b as usize);
                let Some(r) = r else {
                    self.sessions.skipped_in_sync += 1;
                    continue;
                };
                used[a] += 1;
                used[b] += 1;
                let t_end = t0 + (r.elapsed_us / 1000.0) as SimTime;
                busy[a] = t_end;
                busy[b] = t_end;
                // A finished session's new proofs go to the LAN at once.
                let end_us = t0 as f64 * 1000.0 + r.elapsed_us;
                let [learnt_a, learnt_b] = r.learnt;
                self.publish(c.a, learnt_a, end_us, Some(c.b));
                self.publish(c.b, learnt_b, end_us, Some(c.a));
                *self.sessions.by_end.entry(r.end).or_default() += 1;
                self.events += 1;
                self.sessions.urgent_bytes += r.urgent_bytes;
                let honest = self.devices[a].behaviour == Behaviour::Honest
                    && self.devices[b].behaviour == Behaviour::Honest;
                if let (true, Some(why)) = (honest, r.refusal) {
                    *self.sessions.honest_refusals.entry(why).or_default() += 1;
                }
                // A node's policy, not the protocol's: after a failed session
                // leave that peer alone for a while, doubling up to 16
                // intervals (an honest peer can fail too: see the honest
                // refusals counted above).
                if matches!(r.end, SessionEnd::Agreed) {
                    self.backoff.remove(&(c.a, c.b));
                } else {
                    let interval = self.scenario.sync_interval_s * 1000;
                    let e = self.backoff.entry((c.a, c.b)).or_insert((0, 0));
                    e.1 = (e.1 + 1).min(4);
                    let wait = interval << e.1;
                    e.0 = t + wait;
                }
            }
        }
        // The urgent flag's copies that arrive before the round's last
        // session ends still carry their proofs on over BLE; LAN copies
        // keep their place in the event order.
        let end = busy.iter().copied().max().unwrap_or(t);
        self.deliver_where(end, |sim, _, id, _| {
            sim.in_flight
                .get(&id)
                .is_some_and(|f| f.via == LinkKind::Ble)
        });
        self.round_ble.clear();
    }

    /// Delivers what the LAN pushed up to the latest start of the wave's
    /// sessions, except to a device of the wave the copies that arrive
    /// after its own session starts: those wait for a later wave or event.
    fn deliver_before_wave(&mut self, jobs: &[(Contact, SimTime, u64)]) {
        let Some(last) = jobs.iter().map(|&(_, t0, _)| t0).max() else {
            return;
        };
        let starts: BTreeMap<DeviceId, SimTime> = jobs
            .iter()
            .flat_map(|&(c, t0, _)| [(c.a, t0), (c.b, t0)])
            .collect();
        self.deliver_where(last, |_, at, _, to| {
            starts.get(&to).is_none_or(|&t0| at <= t0)
        });
    }

    /// Delivers, in arrival order, the copies that arrive at or before
    /// `until` (and the run's end) and that `now(sim, arrival, message,
    /// receiver)` accepts; the others keep their place for later.
    fn deliver_where(
        &mut self,
        until: SimTime,
        now: impl Fn(&Self, SimTime, u64, DeviceId) -> bool,
    ) {
        let mut later = Vec::new();
        while let Some(&Reverse(copy)) = self.deliveries.peek() {
            let (at, _, id, to) = copy;
            if at > until || at > self.end {
                break;
            }
            self.deliveries.pop();
            if now(self, at, id, to) {
                self.events += 1;
                self.deliver(at, id, to);
            } else {
                later.push(Reverse(copy));
            }
        }
        self.deliveries.extend(later);
    }

    /// Runs the sessions of one wave (`(contact, start, seed)`, no device in
    /// two of them) on `self.threads` threads. `None`: the two ledgers had
    /// equal digests, so no session ran (as the BLE advertisement and the
    /// hello let real peers skip it).
    fn run_wave(
        &mut self,
        jobs: &[(Contact, SimTime, u64)],
    ) -> Vec<Option<session::SessionResult>> {
        let mut slots: Vec<Option<&mut LedgerDevice>> = self.devices.iter_mut().map(Some).collect();
        // Waves never hold a device twice, and a contact joins two
        // different devices, so every job finds both; one result per job,
        // in job order, whatever happens.
        let items: Vec<_> = jobs
            .iter()
            .map(|&(c, t0, seed)| {
                let da = slots[c.a as usize].take();
                let db = slots[c.b as usize].take();
                (c, t0, seed, da, db)
            })
            .collect();
        let (ble, lan) = (&self.ble, &self.lan);
        crate::parallel::map(self.threads, items, |(c, t0, seed, da, db)| {
            debug_assert!(da.is_some() && db.is_some(), "a device twice in one wave");
            let (Some(da), Some(db)) = (da, db) else {
                return None;
            };
            if da.digest() == db.digest() {
                return None;
            }
            let link = match c.kind {
                LinkKind::Ble => ble,
                LinkKind::Lan => lan,
            };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            Some(session::run((c.a, da), (c.b, db), link, t0, &mut rng))
        })
    }

    fn uplink(&mut self, t: SimTime) {
        let gateways: Vec<usize> = (0..self.devices.len())
            .filter(|&d| self.devices[d].gateway)
            .collect();
        let payments = &mut self.payments;
        let devices = &self.devices;
        let mut uploaded = Vec::new();
        self.pending.retain(|&i| {
            let p = &mut payments[i];
            let Some(h) = &p.header else { return false };
            if gateways
                .iter()
                .any(|&g| settle::settles(&devices[g].ledger, h))
            {
                p.settled = Some(t);
                uploaded.push(i);
                false
            } else {
                true
            }
        });
        let (which, receipts): (Vec<usize>, Vec<Receipt>) = uploaded
            .into_iter()
            .filter_map(|i| Some((i, *payments[i].receipt.take()?)))
            .unzip();
        let now = self.start.plus(t / 1000);
        let outcomes = self.settlement.ingest(&receipts, now);
        let mut acked = BTreeMap::new();
        let mut acked_headers = Vec::new();
        for (i, outcome) in which.into_iter().zip(outcomes) {
            payments[i].outcome = Some(outcome);
            if let Some(h) = &payments[i].header {
                acked.insert(h.id(), outcome);
                acked_headers.push(*h);
            }
        }
        // Settlement answers the upload with an acknowledgement, which one
        // gateway puts into its ledger (the first in its window that held
        // one of the receipts; another gateway writing the same
        // acknowledgement would only add a copy for every node to
        // receive). The mesh spreads it, and ledgers drop what settled at
        // their next rotation (the node's gateway does the same with what
        // the service answers its upload).
        let writer = gateways.iter().copied().find(|&g| {
            acked_headers
                .iter()
                .any(|h| settle::settles(&self.devices[g].ledger, h))
        });
        if let Some(g) = writer {
            self.acks_issued += 1;
            let ack = SettlementAck::sign(
                SettlementAckTerms {
                    serial: self.acks_issued,
                    issued_at: now,
                    issuer: self.issuer.public(),
                    outcomes: acked,
                },
                &self.issuer,
            );
            let d = &mut self.devices[g];
            if d.ledger.insert(Entry::Ack(ack)).is_ok() {
                d.touch();
            }
            self.rotations.acks += 1;
        }
        let devices = &self.devices;
        for c in self.conflicts.values_mut() {
            if c.reported.is_none()
                && gateways
                    .iter()
                    .any(|&g| settle::reports_conflict(&devices[g].ledger, &c.allowance))
            {
                c.reported = Some(t);
            }
        }
    }

    /// Payees within reach of a wallet at `site` at `t`.
    fn payees_at(&mut self, site: u32, t: SimTime) -> Vec<DeviceId> {
        self.world.advance(t);
        let mut out: Vec<DeviceId> = self
            .world
            .merchants_at(site)
            .filter(|&m| self.devices[m as usize].accepts_payments)
            .collect();
        let near = self.world.sites_in_range(site);
        let merchants = self.scenario.merchants.count as usize;
        for (d, p) in self.world.positions(t).iter().enumerate().skip(merchants) {
            if self.devices[d].accepts_payments && p.is_some_and(|s| near.contains(&s)) {
                out.push(d as DeviceId);
            }
        }
        out
    }

    fn pay(&mut self, t: SimTime, w: u32, tries: u32) {
        let wallet = &self.wallets[w as usize];
        let sites = self.world.site_count();
        let roam = self.scenario.wallets.roam_sites;
        let site = if wallet.is_culprit() && sites > 1 {
            // Adversaries spend in different places on purpose.
            self.rng.random_range(0..sites)
        } else {
            (wallet.home + self.rng.random_range(0..=roam)) % sites
        };
        let payees = self.payees_at(site, t);
        if payees.is_empty() {
            if tries < 240 {
                self.push(
                    t + RETRY_MS,
                    Event::Pay {
                        wallet: w,
                        tries: tries + 1,
                    },
                );
            } else {
                self.no_payee += 1;
            }
            return;
        }
        let payee = payees[self.rng.random_range(0..payees.len())];
        let w_ = &self.wallets[w as usize];
        let spend = if w_.double_spender && w_.last_site.is_some_and(|s| s != site) {
            w_.before_last
        } else {
            w_.spend
        };
        let culprit = w_.is_culprit() || self.wallets.iter().any(|x| x.clone_of == Some(w));
        let lo = self.scenario.wallets.amount_min;
        let hi = self.scenario.wallets.amount_max;
        let amount = self.rng.random_range(lo..=hi);
        let wall = self.wall(t);
        let wallet = &mut self.wallets[w as usize];
        let device = &mut self.devices[payee as usize];
        let r = payment::run(
            wallet,
            spend,
            device,
            amount,
            &self.ble,
            t,
            wall,
            &mut self.rng,
        );
        wallet.last_site = Some(site);
        let (header, accepted, refused) = match &r.end {
            PaymentEnd::Paid(tr) => {
                self.recent
                    .push_back(((**tr).clone(), wallet.allowance.clone(), payee));
                if self.recent.len() > 64 {
                    self.recent.pop_front();
                }
                (Some(*tr.header()), true, None)
            }
            PaymentEnd::Refused(rule, _, tr) => (Some(*tr.header()), false, Some(*rule)),
            PaymentEnd::PayerRefused | PaymentEnd::Uncertain => (None, false, None),
        };
        if let Some((proof, at_us)) = r.publish {
            self.publish(payee, vec![proof], t as f64 * 1000.0 + at_us, None);
        }
        if let PaymentEnd::Paid(tr) | PaymentEnd::Refused(_, _, tr) = &r.end {
            // From the payment's start: the payee takes the header in
            // during the exchange, never before, so the limit stays a lower
            // bound whatever the link's turns cost.
            self.note_presented(tr.signed_header(), payee, t);
        }
        if accepted {
            self.pending.push(self.payments.len());
        }
        self.payments.push(PaymentRecord {
            t,
            wallet: w,
            culprit,
            payee,
            amount,
            header,
            accepted,
            refused,
            protocol_us: r.protocol_us,
            settled: None,
            receipt: r.receipt,
            outcome: None,
        });
    }

    /// `from` publishes `proofs` on its LAN at `at_us` (microseconds), as
    /// the node's `publish_urgent` does: one copy to each peer on its LAN
    /// in turn over its link (flood publish), each receiver forwarding
    /// duplicates to its gossipsub mesh. Only honest devices publish (a
    /// forger's flipped bits fail gossipsub's signature check, a staller
    /// is silent).
    /// `partner`: the peer of the session that taught the proofs (it holds
    /// them, and a node leaves a peer it just synced with alone for a
    /// while: `QUIET` in the BLE runtime).
    fn publish(
        &mut self,
        from: DeviceId,
        proofs: Vec<ConflictProof>,
        at_us: f64,
        partner: Option<DeviceId>,
    ) {
        if proofs.is_empty() || self.devices[from as usize].behaviour != Behaviour::Honest {
            return;
        }
        self.push_ble(from, &proofs, at_us, partner);
        let t = (at_us / 1000.0) as SimTime;
        let zone: Vec<DeviceId> = self
            .history
            .lan_at(from, t)
            .iter()
            .copied()
            .filter(|&d| d != from)
            .collect();
        if zone.is_empty() {
            return;
        }
        let Some((entries, size)) = push::message(&self.devices[from as usize].ledger, proofs)
        else {
            return;
        };
        let id = self.next_push;
        self.next_push += 1;
        self.push.published += 1;
        self.in_flight.insert(
            id,
            InFlight {
                entries,
                left: zone.len(),
                via: LinkKind::Lan,
            },
        );
        let forwards = push::MESH_N.min(zone.len() as u64 - 1);
        let mut clock = at_us + self.lan.turn_us();
        for &to in &zone {
            let (dt, bytes) = self.lan.frame(size as usize, &mut self.rng);
            clock += dt;
            let sender = &mut self.devices[from as usize].cost;
            sender.bytes_sent += bytes;
            sender.push_bytes_sent += bytes;
            // The receiver's forwards: duplicates to its mesh peers,
            // counted as its bytes sent and (on average) received.
            let dup = forwards * size;
            let receiver = &mut self.devices[to as usize].cost;
            receiver.bytes_received += bytes + dup;
            receiver.bytes_sent += dup;
            receiver.push_bytes_sent += dup;
            self.push.bytes += bytes + dup;
            let arrive = (clock / 1000.0).ceil() as SimTime;
            self.seq += 1;
            self.deliveries.push(Reverse((arrive, self.seq, id, to)));
        }
    }

    /// During a sync round, a device that learnt proofs sets the urgent
    /// flag in its BLE advertisement, and its BLE contacts of the tick
    /// connect to it as soon as they hear it (`node/src/ble/runtime.rs`,
    /// `heard`; at most `ble.max_connections` of them): each gets the
    /// `Urgent` message after a connection set-up, in frames over the
    /// link. Only inside a round, whose sessions use nothing newer than
    /// the tick, so that the limit (which sees BLE contacts at ticks only)
    /// stays a lower bound.
    fn push_ble(
        &mut self,
        from: DeviceId,
        proofs: &[ConflictProof],
        at_us: f64,
        partner: Option<DeviceId>,
    ) {
        if self.devices[from as usize].behaviour != Behaviour::Honest {
            return;
        }
        let Some(near) = self.round_ble.get(&from) else {
            return;
        };
        let limit = self.scenario.ble.max_connections as usize;
        let near: Vec<DeviceId> = near
            .iter()
            .copied()
            .filter(|&d| Some(d) != partner)
            .take(limit)
            .collect();
        if near.is_empty() {
            return;
        }
        let Some((entries, size)) =
            push::message(&self.devices[from as usize].ledger, proofs.to_vec())
        else {
            return;
        };
        let id = self.next_push;
        self.next_push += 1;
        self.push.published += 1;
        self.push.over_ble += 1;
        self.in_flight.insert(
            id,
            InFlight {
                entries,
                left: near.len(),
                via: LinkKind::Ble,
            },
        );
        let frame = self.ble.max_frame.max(1);
        for &to in &near {
            let mut clock = at_us + self.ble.setup_us() + self.ble.turn_us();
            let mut bytes = 0;
            let mut left = size as usize;
            while left > 0 {
                let len = left.min(frame);
                let (dt, b) = self.ble.frame(len, &mut self.rng);
                clock += dt;
                bytes += b;
                left -= len;
            }
            let radio = (clock - at_us) as u64;
            let sender = &mut self.devices[from as usize].cost;
            sender.bytes_sent += bytes;
            sender.push_bytes_sent += bytes;
            sender.radio_on_us += radio;
            let receiver = &mut self.devices[to as usize].cost;
            receiver.bytes_received += bytes;
            receiver.radio_on_us += radio;
            self.push.bytes += bytes;
            let arrive = (clock / 1000.0).ceil() as SimTime;
            self.seq += 1;
            self.deliveries.push(Reverse((arrive, self.seq, id, to)));
        }
    }

    /// Delivers every pushed copy that arrives at or before `t`.
    fn deliver_until(&mut self, t: SimTime) {
        self.deliver_where(t, |_, _, _, _| true);
    }

    /// A pushed message reaches `to` at `t`: its ledger takes it as the
    /// node's `on_urgent` does.
    fn deliver(&mut self, t: SimTime, id: u64, to: DeviceId) {
        let Some(flight) = self.in_flight.get_mut(&id) else {
            return;
        };
        flight.left -= 1;
        let via = flight.via;
        let entries = if flight.left == 0 {
            self.in_flight
                .remove(&id)
                .map(|f| f.entries)
                .unwrap_or_default()
        } else {
            flight.entries.clone()
        };
        self.push.deliveries += 1;
        let device = &mut self.devices[to as usize];
        match push::receive(&mut device.ledger, entries) {
            Ok(new) => {
                if !new.is_empty() {
                    self.push.new_at_receiver += 1;
                    device.touch();
                }
                for p in &new {
                    device.hold_proof(p.allowance(), t);
                }
                // Within a round the proofs go on: what came over BLE was
                // a session that taught them (published on the LAN too);
                // what came from the LAN sets the urgent flag on BLE.
                // Between rounds they wait for the next tick.
                if !new.is_empty() && !self.round_ble.is_empty() {
                    let at_us = t as f64 * 1000.0;
                    match via {
                        LinkKind::Ble => self.publish(to, new, at_us, None),
                        LinkKind::Lan => self.push_ble(to, &new, at_us, None),
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "pushed urgent entries refused");
                self.push.refused += 1;
            }
        }
    }

    /// After the run: reads back the final outcome of every receipt that
    /// reached settlement (a fork that arrived later can have reversed an
    /// earlier one).
    pub fn read_outcomes(&mut self) {
        for p in &mut self.payments {
            if let (Some(_), Some(h)) = (p.outcome, &p.header)
                && let Some(o) = self.settlement.outcome(h, &h.id())
            {
                p.outcome = Some(o);
            }
        }
    }

    /// Ground truth: the first pair of conflicting headers per allowance.
    fn note_presented(&mut self, h: SignedHeader, payee: DeviceId, t: SimTime) {
        let list = self.presented.entry(h.allowance).or_default();
        if let std::collections::btree_map::Entry::Vacant(slot) = self.conflicts.entry(h.allowance)
            && let Some((_, d, t1)) = list
                .iter()
                .find(|(o, _, _)| meshpay_proto::conflict::detect(&h, o).is_some())
        {
            slot.insert(ConflictFact {
                allowance: h.allowance,
                first: (*d, *t1),
                second: (payee, t),
                reported: None,
            });
        }
        if list.len() < 64 {
            list.push((h, payee, t));
        }
    }

    fn replay(&mut self, t: SimTime) {
        if self.recent.is_empty() {
            *self
                .replays
                .entry("nothing to replay yet".into())
                .or_default() += 1;
            return;
        }
        let k = self.rng.random_range(0..self.recent.len());
        let (transfer, allowance, original) = self.recent[k].clone();
        let candidates: Vec<usize> = (0..self.devices.len())
            .filter(|&d| d != original as usize && self.devices[d].accepts_payments)
            .collect();
        let Some(&target) = candidates.get(self.rng.random_range(0..candidates.len().max(1)))
        else {
            return;
        };
        let wall = self.wall(t);
        let device = &mut self.devices[target];
        let mut payee = PayeeSession::new(
            device.key.clone(),
            transfer.header().amount,
            allowance.currency,
            None,
            device.credential.clone(),
            &mut self.rng,
            Millis(t),
        );
        let policy = PaymentPolicy::default();
        let ctx = CheckContext {
            trust: device.ledger.trust(),
            policy: &policy,
            now: wall,
            mesh: &device.ledger,
        };
        let _ = payee.handle(
            PaymentMessage::Transfer {
                allowance: Some(Box::new(allowance)),
                transfer,
            },
            &ctx,
        );
        let mut outcome = "accepted (protocol failure)".to_string();
        while let Some(e) = payee.poll_effect() {
            if let PayeeEffect::Refused(err) = e {
                outcome = format!("refused: {}", err.rule().name());
            }
        }
        *self.replays.entry(outcome).or_default() += 1;
    }
}
