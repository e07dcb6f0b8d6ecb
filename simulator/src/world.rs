//! The modelled world: where sites are, where every ledger device is at a
//! given instant, and which of them can reach each other (the contacts).
//!
//! Contacts are sampled once per sync interval (a *tick*): two ledger
//! devices are in contact at a tick when both stand at sites within BLE
//! range of each other, or share a LAN (same site, or any site when the LAN
//! spans them all), and no partition separates them. A carrier travelling
//! between sites is out of reach. The same contacts feed the protocol
//! (which sessions run) and the limit (what flooding could do), so the
//! comparison is over identical opportunities. A recorded trace may
//! replace the model's contacts.

use std::collections::BTreeMap;
use std::io::BufRead;

use chacha20::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::link::LinkKind;
use crate::scenario::{LanReach, Layout, Route, Scenario};

/// Index of a ledger device (merchants first, then carriers).
pub type DeviceId = u32;

/// Simulated time in milliseconds from the start.
pub type SimTime = u64;

/// Two ledger devices that can reach each other at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Contact {
    /// The lower id.
    pub a: DeviceId,
    /// The higher id.
    pub b: DeviceId,
    /// The link they would use.
    pub kind: LinkKind,
}

/// Where a carrier is on its route.
#[derive(Debug, Clone)]
struct Leg {
    site: u32,
    /// Arrival at `site`.
    arrive: SimTime,
    /// Departure from `site`.
    depart: SimTime,
    /// Sweep direction (+1 or -1).
    dir: i64,
}

/// The positions of sites and devices over time.
#[derive(Debug)]
pub struct World {
    sites: Vec<(f64, f64)>,
    /// For each site, the sites within BLE range (itself included).
    in_range: Vec<Vec<u32>>,
    lan: LanReach,
    merchants: u32,
    merchant_site: Vec<u32>,
    carriers: Vec<(Leg, ChaCha8Rng)>,
    route: Route,
    speed: f64,
    dwell_ms: u64,
    partitions: Vec<(SimTime, SimTime)>,
}

impl World {
    /// Lays out `scenario`'s world; carrier routes are drawn from `seed`.
    pub fn new(scenario: &Scenario, seed: u64) -> World {
        let n = scenario.sites.count;
        let sites: Vec<(f64, f64)> = match scenario.sites.layout {
            Layout::Line => (0..n)
                .map(|i| (f64::from(i) * scenario.sites.spacing_m, 0.0))
                .collect(),
            Layout::Grid => {
                let side = (f64::from(n).sqrt().ceil() as u32).max(1);
                let cell = scenario.sites.area_m / f64::from(side);
                (0..n)
                    .map(|i| {
                        (
                            (f64::from(i % side) + 0.5) * cell,
                            (f64::from(i / side) + 0.5) * cell,
                        )
                    })
                    .collect()
            }
        };
        let range = scenario.ble.range_m;
        let in_range = (0..sites.len())
            .map(|i| {
                (0..sites.len())
                    .filter(|&j| dist(sites[i], sites[j]) <= range)
                    .map(|j| j as u32)
                    .collect()
            })
            .collect();
        let with = match scenario.merchants.sites_with_merchants {
            0 => n,
            k => k,
        };
        let merchant_site = (0..scenario.merchants.count).map(|m| m % with).collect();
        let dwell_ms = scenario.carriers.dwell_s * 1000;
        let carriers = (0..scenario.carriers.count)
            .map(|c| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xCA44_1E45 ^ (u64::from(c) << 20));
                let site = match scenario.carriers.route {
                    Route::Sweep => {
                        (u64::from(c) * u64::from(n) / u64::from(scenario.carriers.count)) as u32
                    }
                    Route::Random => rng.random_range(0..n),
                };
                // Staggered so that carriers do not all move in step.
                let arrive = 0;
                let depart = rng.random_range(0..=dwell_ms);
                let dir = if c % 2 == 0 { 1 } else { -1 };
                (
                    Leg {
                        site,
                        arrive,
                        depart,
                        dir,
                    },
                    rng,
                )
            })
            .collect();
        World {
            sites,
            in_range,
            lan: scenario.sites.lan,
            merchants: scenario.merchants.count,
            merchant_site,
            carriers,
            route: scenario.carriers.route,
            speed: scenario.carriers.speed_m_s,
            dwell_ms,
            partitions: scenario
                .partitions
                .iter()
                .map(|w| (hours_ms(w[0]), hours_ms(w[1])))
                .collect(),
        }
    }

    /// Number of sites.
    pub fn site_count(&self) -> u32 {
        self.sites.len() as u32
    }

    /// Number of sites with merchants (the first ones).
    pub fn sites_with_merchants(&self) -> u32 {
        self.merchant_site.iter().max().map_or(1, |m| m + 1)
    }

    /// Number of ledger devices.
    pub fn device_count(&self) -> u32 {
        self.merchants + self.carriers.len() as u32
    }

    /// The site of merchant `m`.
    pub fn merchant_site(&self, m: DeviceId) -> u32 {
        self.merchant_site[m as usize]
    }

    /// Merchants standing at `site`.
    pub fn merchants_at(&self, site: u32) -> impl Iterator<Item = DeviceId> + '_ {
        (0..self.merchants).filter(move |&m| self.merchant_site[m as usize] == site)
    }

    /// Sites within BLE range of `site`.
    pub fn sites_in_range(&self, site: u32) -> &[u32] {
        &self.in_range[site as usize]
    }

    /// Moves carriers forward to `now` (time only moves forward).
    pub fn advance(&mut self, now: SimTime) {
        let n = self.sites.len() as i64;
        for (leg, rng) in &mut self.carriers {
            while leg.depart <= now {
                let next = match self.route {
                    Route::Sweep => {
                        if n == 1 {
                            0
                        } else {
                            let mut s = i64::from(leg.site) + leg.dir;
                            if !(0..n).contains(&s) {
                                leg.dir = -leg.dir;
                                s = i64::from(leg.site) + leg.dir;
                            }
                            s as u32
                        }
                    }
                    Route::Random => rng.random_range(0..n as u32),
                };
                let travel = dist(self.sites[leg.site as usize], self.sites[next as usize])
                    / self.speed
                    * 1000.0;
                leg.arrive = leg.depart + travel as u64;
                leg.depart = leg.arrive + self.dwell_ms;
                leg.site = next;
            }
        }
    }

    /// Where every ledger device stands at `now` (after [`World::advance`]):
    /// its site, or `None` while travelling.
    pub fn positions(&self, now: SimTime) -> Vec<Option<u32>> {
        let mut out: Vec<Option<u32>> = self.merchant_site.iter().map(|&s| Some(s)).collect();
        out.extend(
            self.carriers
                .iter()
                .map(|(leg, _)| (leg.arrive <= now).then_some(leg.site)),
        );
        out
    }

    fn partitioned(&self, now: SimTime, a: DeviceId, b: DeviceId) -> bool {
        (a % 2 != b % 2) && self.partitions.iter().any(|&(s, e)| s <= now && now < e)
    }

    /// The contacts at `now`, sorted.
    pub fn contacts(&self, now: SimTime) -> Vec<Contact> {
        let pos = self.positions(now);
        let mut by_site: BTreeMap<u32, Vec<DeviceId>> = BTreeMap::new();
        for (d, p) in pos.iter().enumerate() {
            if let Some(s) = p {
                by_site.entry(*s).or_default().push(d as DeviceId);
            }
        }
        let mut out = Vec::new();
        let mut push = |a: DeviceId, b: DeviceId, kind| {
            if a != b && !self.partitioned(now, a, b) {
                out.push(Contact {
                    a: a.min(b),
                    b: a.max(b),
                    kind,
                });
            }
        };
        if self.lan == LanReach::All {
            let all: Vec<DeviceId> = by_site.values().flatten().copied().collect();
            for (i, &a) in all.iter().enumerate() {
                for &b in &all[i + 1..] {
                    push(a, b, LinkKind::Lan);
                }
            }
        } else {
            for (&site, devs) in &by_site {
                for &other in self.sites_in_range(site) {
                    if other < site {
                        continue;
                    }
                    let Some(others) = by_site.get(&other) else {
                        continue;
                    };
                    let kind = if other == site && self.lan == LanReach::Site {
                        LinkKind::Lan
                    } else {
                        LinkKind::Ble
                    };
                    for (i, &a) in devs.iter().enumerate() {
                        let rest = if other == site {
                            &devs[i + 1..]
                        } else {
                            &others[..]
                        };
                        for &b in rest {
                            push(a, b, kind);
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup_by(|x, y| x.a == y.a && x.b == y.b);
        out
    }
}

/// Euclidean distance. Products and `sqrt` only: IEEE 754 makes them
/// exact to the bit on every machine (`powi` is not guaranteed to be).
fn dist(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (a.0 - b.0, a.1 - b.1);
    (dx * dx + dy * dy).sqrt()
}

/// Hours to milliseconds.
pub fn hours_ms(h: f64) -> SimTime {
    (h * 3_600_000.0).round() as SimTime
}

/// Why a contact trace was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The file could not be read.
    #[error("cannot read trace: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not `time_s,a,b,kind`.
    #[error("trace line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A recorded contact trace: `time_s,device_a,device_b,kind` per line
/// (`kind` is `ble` or `lan`; a header line starting with `time` is
/// skipped), grouped by time.
pub fn read_trace(
    reader: impl BufRead,
    devices: u32,
) -> Result<BTreeMap<SimTime, Vec<Contact>>, TraceError> {
    let mut out: BTreeMap<SimTime, Vec<Contact>> = BTreeMap::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("time")) {
            continue;
        }
        let bad = |reason: String| TraceError::Line {
            line: i + 1,
            reason,
        };
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [t, a, b, k] = f[..] else {
            return Err(bad(format!("expected 4 fields, found {}", f.len())));
        };
        let t: f64 = t
            .parse()
            .map_err(|_| bad(format!("time {t:?} is not a number")))?;
        if !(t.is_finite() && t >= 0.0) {
            return Err(bad(format!("time {t} is negative or not finite")));
        }
        let dev = |s: &str| -> Result<DeviceId, TraceError> {
            let d: DeviceId = s
                .parse()
                .map_err(|_| bad(format!("device {s:?} is not a number")))?;
            if d >= devices {
                return Err(bad(format!(
                    "device {d} does not exist (the scenario has {devices} ledger devices)"
                )));
            }
            Ok(d)
        };
        let (a, b) = (dev(a)?, dev(b)?);
        if a == b {
            return Err(bad(format!("device {a} in contact with itself")));
        }
        let kind = match k {
            "ble" => LinkKind::Ble,
            "lan" => LinkKind::Lan,
            other => return Err(bad(format!("link kind {other:?} is not ble or lan"))),
        };
        out.entry((t * 1000.0).round() as SimTime)
            .or_default()
            .push(Contact {
                a: a.min(b),
                b: a.max(b),
                kind,
            });
    }
    for list in out.values_mut() {
        list.sort();
        list.dedup_by(|x, y| x.a == y.a && x.b == y.b);
    }
    Ok(out)
}
