//! The limit: the earliest time any protocol could deliver a fact over the
//! same contacts the simulated protocol had.
//!
//! Flooding along time-respecting paths with unlimited bandwidth: at each
//! tick every group of devices linked by that tick's contacts (a connected
//! component) shares at once everything any member holds. No protocol that
//! moves data only over these contacts can be faster, so every measured
//! latency is at least the limit's (checked by a test).
//!
//! A LAN is there all the time, not only at ticks: the node pushes conflict
//! proofs over it the moment it learns them (gossipsub, modelled in
//! `sim.rs`). So LAN membership, sampled at each tick like every contact,
//! holds until the next tick, and between ticks a fact that appears at a
//! device (a payment) floods at once to the devices on its LAN. Without
//! this, a proof made during a payment and pushed over the LAN would beat
//! a limit that waits for the next tick.

use crate::link::LinkKind;
use crate::world::{Contact, DeviceId, SimTime};

/// Never.
pub const NEVER: SimTime = SimTime::MAX;

/// The contact history, as connected components per tick.
#[derive(Debug, Default)]
pub struct ContactHistory {
    devices: usize,
    ticks: Vec<SimTime>,
    /// Per tick, its components of two or more devices.
    components: Vec<Vec<Vec<DeviceId>>>,
    /// Per tick, the components of its LAN contacts alone (two or more
    /// devices), which hold until the next tick.
    lan: Vec<Vec<Vec<DeviceId>>>,
}

/// Connected components of two or more devices among `devices` devices
/// linked by `contacts`, each sorted, in order of their smallest member.
fn components<'a>(
    devices: usize,
    contacts: impl Iterator<Item = &'a Contact>,
) -> Vec<Vec<DeviceId>> {
    let mut parent: Vec<DeviceId> = (0..devices as DeviceId).collect();
    fn find(p: &mut [DeviceId], mut x: DeviceId) -> DeviceId {
        while p[x as usize] != x {
            p[x as usize] = p[p[x as usize] as usize];
            x = p[x as usize];
        }
        x
    }
    let mut touched = Vec::new();
    for c in contacts {
        let (ra, rb) = (find(&mut parent, c.a), find(&mut parent, c.b));
        if ra != rb {
            parent[ra.max(rb) as usize] = ra.min(rb);
        }
        touched.push(c.a);
        touched.push(c.b);
    }
    touched.sort_unstable();
    touched.dedup();
    let mut groups: std::collections::BTreeMap<DeviceId, Vec<DeviceId>> = Default::default();
    for d in touched {
        let r = find(&mut parent, d);
        groups.entry(r).or_default().push(d);
    }
    groups.into_values().collect()
}

impl ContactHistory {
    /// An empty history over `devices` ledger devices.
    pub fn new(devices: u32) -> Self {
        ContactHistory {
            devices: devices as usize,
            ..Default::default()
        }
    }

    /// Records the contacts of the tick at `now` (ticks in time order).
    pub fn record(&mut self, now: SimTime, contacts: &[Contact]) {
        self.ticks.push(now);
        self.components
            .push(components(self.devices, contacts.iter()));
        self.lan.push(components(
            self.devices,
            contacts.iter().filter(|c| c.kind == LinkKind::Lan),
        ));
    }

    /// The devices on `device`'s LAN (itself included) during the interval
    /// that contains `t`, as the tick before it sampled them.
    pub fn lan_at(&self, device: DeviceId, t: SimTime) -> &[DeviceId] {
        let k = self.ticks.partition_point(|&x| x <= t);
        if k == 0 {
            return &[];
        }
        self.lan[k - 1]
            .iter()
            .find(|c| c.binary_search(&device).is_ok())
            .map_or(&[], |c| c.as_slice())
    }

    /// Number of ticks recorded.
    pub fn ticks(&self) -> usize {
        self.ticks.len()
    }

    /// Whether `a` and `b` were in one component at some tick in
    /// `[from, to]` at which `holder_since(b) <= tick` for the partner `b`:
    /// used to ask "was this payee within reach of a device holding the
    /// proof?".
    pub fn met_holder(
        &self,
        payee: DeviceId,
        from: SimTime,
        to: SimTime,
        holder_since: &dyn Fn(DeviceId) -> SimTime,
    ) -> bool {
        let start = self.ticks.partition_point(|&t| t < from);
        for k in start..self.ticks.len() {
            let t = self.ticks[k];
            if t > to {
                break;
            }
            for comp in &self.components[k] {
                if comp.contains(&payee) && comp.iter().any(|&d| d != payee && holder_since(d) <= t)
                {
                    return true;
                }
            }
        }
        false
    }

    /// Earliest arrival at every device of a fact held by each source from
    /// its time on ([`NEVER`] where it never arrives).
    pub fn earliest_arrival(&self, sources: &[(DeviceId, SimTime)]) -> Vec<SimTime> {
        let mut arrival = vec![NEVER; self.devices];
        for &(d, t) in sources {
            arrival[d as usize] = arrival[d as usize].min(t);
        }
        let first = sources.iter().map(|s| s.1).min().unwrap_or(NEVER);
        // The interval holding the first source: its LAN floods too.
        let start = self
            .ticks
            .partition_point(|&t| t <= first)
            .saturating_sub(1);
        for k in start..self.ticks.len() {
            let t = self.ticks[k];
            for comp in &self.components[k] {
                if comp.iter().any(|&d| arrival[d as usize] <= t) {
                    for &d in comp {
                        arrival[d as usize] = arrival[d as usize].min(t);
                    }
                }
            }
            // Until the next tick the LAN is there: whatever a member
            // holds (from a payment between ticks) all members hold.
            let next = self.ticks.get(k + 1).copied().unwrap_or(NEVER);
            for comp in &self.lan[k] {
                let m = comp
                    .iter()
                    .map(|&d| arrival[d as usize])
                    .min()
                    .unwrap_or(NEVER);
                if m < next {
                    for &d in comp {
                        arrival[d as usize] = arrival[d as usize].min(m.max(t));
                    }
                }
            }
        }
        arrival
    }

    /// Earliest arrival from devices that each hold the fact from their own
    /// time (for a proof: from when a device could hold both headers).
    pub fn earliest_arrival_each(&self, from: &[SimTime]) -> Vec<SimTime> {
        let sources: Vec<(DeviceId, SimTime)> = from
            .iter()
            .enumerate()
            .filter(|(_, t)| **t != NEVER)
            .map(|(d, t)| (d as DeviceId, *t))
            .collect();
        self.earliest_arrival(&sources)
    }
}

/// When facts could reach settlement at the earliest: for every tick and
/// device, the earliest settlement of a fact that device holds at that
/// tick (a backward pass over the history).
#[derive(Debug)]
pub struct SettlementLimit {
    ticks: Vec<SimTime>,
    devices: usize,
    best: Vec<SimTime>,
    gateway: Vec<bool>,
    windows: Windows,
}

/// Uplink windows shared by every gateway.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// Start of the first.
    pub first: SimTime,
    /// Period.
    pub every: SimTime,
    /// Length.
    pub len: SimTime,
    /// End of the simulation: no window opens after it.
    pub end: SimTime,
}

impl Windows {
    /// Whether `t` falls inside a window.
    pub fn is_open(&self, t: SimTime) -> bool {
        t >= self.first && t <= self.end && (t - self.first) % self.every.max(1) < self.len
    }

    /// `t` if a window is open then, else the start of the next one.
    pub fn next_open(&self, t: SimTime) -> SimTime {
        if self.is_open(t) {
            return t;
        }
        let next = if t < self.first {
            self.first
        } else {
            let k = (t - self.first) / self.every.max(1) + 1;
            self.first + k * self.every.max(1)
        };
        if next <= self.end { next } else { NEVER }
    }
}

impl SettlementLimit {
    /// Computes the backward pass.
    pub fn new(history: &ContactHistory, gateway: Vec<bool>, windows: Windows) -> Self {
        let n = history.devices;
        let mut best = vec![NEVER; n * history.ticks.len()];
        let mut next = vec![NEVER; n];
        for k in (0..history.ticks.len()).rev() {
            let t = history.ticks[k];
            let mut base: Vec<SimTime> = (0..n)
                .map(|d| {
                    let own = if gateway[d] {
                        windows.next_open(t)
                    } else {
                        NEVER
                    };
                    own.min(next[d])
                })
                .collect();
            for comp in &history.components[k] {
                let m = comp
                    .iter()
                    .map(|&d| base[d as usize])
                    .min()
                    .unwrap_or(NEVER);
                for &d in comp {
                    base[d as usize] = m;
                }
            }
            best[k * n..(k + 1) * n].copy_from_slice(&base);
            next = base;
        }
        SettlementLimit {
            ticks: history.ticks.clone(),
            devices: n,
            best,
            gateway,
            windows,
        }
    }

    /// Earliest settlement of a fact held by `device` from `t` on: by the
    /// device itself, or by any device on its LAN until the next tick.
    pub fn earliest(&self, history: &ContactHistory, device: DeviceId, t: SimTime) -> SimTime {
        let k = self.ticks.partition_point(|&x| x < t);
        let own = [device];
        let lan = history.lan_at(device, t);
        let reach = if lan.is_empty() { &own[..] } else { lan };
        reach
            .iter()
            .map(|&d| {
                let gateway = if self.gateway[d as usize] {
                    self.windows.next_open(t)
                } else {
                    NEVER
                };
                let later = if k == self.ticks.len() {
                    NEVER
                } else {
                    self.best[k * self.devices + d as usize]
                };
                gateway.min(later)
            })
            .min()
            .unwrap_or(NEVER)
    }
}
