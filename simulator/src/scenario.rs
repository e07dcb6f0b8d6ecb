//! Scenario files: the world, its devices, links and adversaries, read from
//! TOML and checked field by field.
//!
//! Every scenario uses one model of the world (see docs/simulator.md):
//! *sites* (venues, seat rows, gathering points, a lab bench) with fixed
//! *merchants* (POS terminals, vendors, lab nodes) that hold a partial
//! ledger; *carriers* (crew handhelds, aid vehicles) that hold a ledger and
//! move between sites; *wallets* (passengers, beneficiaries) that only pay;
//! gateways that reach settlement during uplink windows.

use std::path::Path;

use serde::Deserialize;

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a scenario (unknown or missing field,
    /// wrong type); the message names the field and the line.
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the TOML parser said.
        message: String,
    },
    /// A field has a value outside its range.
    #[error("scenario field `{field}` = {value}: {rule}")]
    Invalid {
        /// The field, as a dotted path.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        rule: &'static str,
    },
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, used in outputs.
    pub name: String,
    /// Simulated time, hours.
    pub duration_hours: f64,
    /// How often a device scans for peers and syncs, seconds.
    pub sync_interval_s: u64,
    /// Largest number of peers a device syncs with in one interval.
    pub sync_fanout: u32,
    /// Unix time of the start (allowances and clocks are based on it).
    #[serde(default = "default_start")]
    pub start_unix: u64,
    /// Sites.
    pub sites: Sites,
    /// Fixed payees with ledgers.
    pub merchants: Merchants,
    /// Mobile devices with ledgers.
    #[serde(default)]
    pub carriers: Carriers,
    /// Payers.
    pub wallets: Wallets,
    /// Uplinks to settlement.
    pub gateways: Gateways,
    /// Bluetooth LE.
    pub ble: Ble,
    /// Local network.
    #[serde(default)]
    pub lan: Lan,
    /// Adversaries.
    #[serde(default)]
    pub adversaries: Adversaries,
    /// Time windows `[start_h, end_h]` during which devices with even and
    /// odd ids cannot reach each other (the lab's partitions on demand).
    #[serde(default)]
    pub partitions: Vec<[f64; 2]>,
}

fn default_start() -> u64 {
    1_800_000_000
}

/// How sites are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// On a line, `spacing_m` apart (seat rows along an aisle, venues along
    /// a deck).
    Line,
    /// On a square grid filling `area_m` x `area_m` (a relief area).
    Grid,
}

/// Which devices share a LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LanReach {
    /// No LAN.
    None,
    /// Devices at the same site (camp Wi-Fi at a site).
    Site,
    /// Every device at any site (a ship LAN in public areas, a lab LAN).
    All,
}

/// Sites.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sites {
    /// How many.
    pub count: u32,
    /// Their layout.
    pub layout: Layout,
    /// Distance between neighbours on a line, metres.
    #[serde(default = "one")]
    pub spacing_m: f64,
    /// Side of the square area of a grid, metres.
    #[serde(default)]
    pub area_m: f64,
    /// Who shares a LAN.
    pub lan: LanReach,
}

fn one() -> f64 {
    1.0
}

/// Fixed payees.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merchants {
    /// Total number, spread over the sites round-robin.
    pub count: u32,
    /// Only the first this many sites have merchants (0: all).
    #[serde(default)]
    pub sites_with_merchants: u32,
}

/// Mobile ledger devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carriers {
    /// How many.
    pub count: u32,
    /// Speed between sites, m/s.
    pub speed_m_s: f64,
    /// Time spent at each site, seconds.
    pub dwell_s: u64,
    /// Whether they accept payments (crew handhelds do, vehicles do not).
    pub accept_payments: bool,
    /// Route: `sweep` walks the sites in order and back (an aisle);
    /// `random` picks the next site at random (vehicles).
    pub route: Route,
}

impl Default for Carriers {
    fn default() -> Self {
        Carriers {
            count: 0,
            speed_m_s: 1.0,
            dwell_s: 60,
            accept_payments: false,
            route: Route::Random,
        }
    }
}

/// How carriers move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// In order and back.
    Sweep,
    /// A random next site.
    Random,
}

/// Payers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wallets {
    /// How many.
    pub count: u32,
    /// Share of wallets that buy at all (0..=1).
    pub buyers_share: f64,
    /// Payments per buying wallet per day (spread evenly at random over
    /// the active hours).
    pub payments_per_day: f64,
    /// Payments happen in `[0, active_hours)`.
    pub active_hours: f64,
    /// Smallest payment, minor units.
    pub amount_min: u64,
    /// Largest payment, minor units.
    pub amount_max: u64,
    /// Escrowed amount of each allowance, minor units.
    pub allowance: u64,
    /// Whether wallets stay at their home site (seats) or pay at any site
    /// within `roam_sites` of home.
    pub roam_sites: u32,
    /// Relief value: payable only to merchants (an allowance restricted to
    /// the merchants' keys).
    #[serde(default)]
    pub restricted: bool,
}

/// Uplinks to settlement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateways {
    /// The first this many merchants are gateways (a purser's terminal).
    #[serde(default)]
    pub merchants: u32,
    /// The first this many carriers are gateways (aid vehicles with
    /// satellite links, the crew handheld that uploads after landing).
    #[serde(default)]
    pub carriers: u32,
    /// First uplink window, hours from the start.
    pub first_uplink_h: f64,
    /// Hours between windows.
    pub every_h: f64,
    /// Length of a window, minutes.
    pub window_min: f64,
}

/// Bluetooth LE links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ble {
    /// Range, metres.
    pub range_m: f64,
    /// ATT MTU, bytes (23 to 517).
    pub mtu: u32,
    /// Connection interval, milliseconds (7.5 to 4000).
    pub connection_interval_ms: f64,
    /// Application throughput, kbit/s.
    pub bandwidth_kbps: f64,
    /// Probability that a packet is lost and resent at the next
    /// connection event (0..1).
    pub loss: f64,
    /// Most simultaneous connections of one device.
    pub max_connections: u32,
}

/// LAN links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    /// Throughput, Mbit/s.
    pub bandwidth_mbps: f64,
    /// One-way latency, milliseconds.
    pub latency_ms: f64,
    /// Probability that a message is lost and resent after a timeout of
    /// four latencies (0..1).
    pub loss: f64,
}

impl Default for Lan {
    fn default() -> Self {
        Lan {
            bandwidth_mbps: 20.0,
            latency_ms: 2.0,
            loss: 0.0,
        }
    }
}

/// Adversaries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adversaries {
    /// Share of wallets that rewind their counter to spend the same
    /// allowance again at another site (0..1).
    #[serde(default)]
    pub double_spenders: f64,
    /// Wallets copied onto a second device (same key, same allowance)
    /// that pays independently.
    #[serde(default)]
    pub cloned_wallets: u32,
    /// Transfers recorded and replayed to another payee.
    #[serde(default)]
    pub replays: u32,
    /// Ledger devices that send forged sync messages (bit-flipped frames,
    /// headers with bad signatures).
    #[serde(default)]
    pub forgers: u32,
    /// Ledger devices that open sync sessions and then go silent.
    #[serde(default)]
    pub stallers: u32,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parses and checks scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let mut c = Checker::default();
        c.pos("duration_hours", self.duration_hours, 24.0 * 366.0);
        c.int("sync_interval_s", self.sync_interval_s, 1, 86_400);
        c.int("sync_fanout", self.sync_fanout.into(), 1, 64);
        // The model keeps a site-by-site range table and a device-by-device
        // table for the flooding baseline: these maxima keep both in memory.
        c.int("sites.count", self.sites.count.into(), 1, 5_000);
        c.pos("sites.spacing_m", self.sites.spacing_m, 1e6);
        if self.sites.layout == Layout::Grid {
            c.pos("sites.area_m", self.sites.area_m, 1e6);
        }
        c.int("merchants.count", self.merchants.count.into(), 1, 5_000);
        c.int(
            "merchants.sites_with_merchants",
            self.merchants.sites_with_merchants.into(),
            0,
            self.sites.count.into(),
        );
        c.int("carriers.count", self.carriers.count.into(), 0, 1_000);
        c.pos("carriers.speed_m_s", self.carriers.speed_m_s, 1_000.0);
        c.int("carriers.dwell_s", self.carriers.dwell_s, 1, 86_400 * 30);
        c.int("wallets.count", self.wallets.count.into(), 1, 10_000_000);
        c.share("wallets.buyers_share", self.wallets.buyers_share);
        c.nonneg(
            "wallets.payments_per_day",
            self.wallets.payments_per_day,
            1_000.0,
        );
        c.pos(
            "wallets.active_hours",
            self.wallets.active_hours,
            self.duration_hours,
        );
        c.int(
            "wallets.amount_min",
            self.wallets.amount_min,
            1,
            u64::MAX >> 8,
        );
        c.int(
            "wallets.amount_max",
            self.wallets.amount_max,
            self.wallets.amount_min,
            u64::MAX >> 8,
        );
        c.int(
            "wallets.allowance",
            self.wallets.allowance,
            self.wallets.amount_max,
            u64::MAX >> 8,
        );
        c.int(
            "wallets.roam_sites",
            self.wallets.roam_sites.into(),
            0,
            self.sites.count.into(),
        );
        c.int(
            "gateways.merchants",
            self.gateways.merchants.into(),
            0,
            self.merchants.count.into(),
        );
        c.int(
            "gateways.carriers",
            self.gateways.carriers.into(),
            0,
            self.carriers.count.into(),
        );
        if self.gateways.merchants + self.gateways.carriers == 0 {
            c.fail(
                "gateways.merchants",
                "0",
                "at least one merchant or carrier must be a gateway",
            );
        }
        c.nonneg(
            "gateways.first_uplink_h",
            self.gateways.first_uplink_h,
            24.0 * 366.0,
        );
        c.pos("gateways.every_h", self.gateways.every_h, 24.0 * 366.0);
        c.pos(
            "gateways.window_min",
            self.gateways.window_min,
            60.0 * 24.0 * 366.0,
        );
        c.pos("ble.range_m", self.ble.range_m, 10_000.0);
        c.int("ble.mtu", self.ble.mtu.into(), 23, 517);
        c.range(
            "ble.connection_interval_ms",
            self.ble.connection_interval_ms,
            7.5,
            4_000.0,
        );
        c.pos("ble.bandwidth_kbps", self.ble.bandwidth_kbps, 2_000.0);
        c.loss("ble.loss", self.ble.loss);
        c.int(
            "ble.max_connections",
            self.ble.max_connections.into(),
            1,
            64,
        );
        c.pos("lan.bandwidth_mbps", self.lan.bandwidth_mbps, 100_000.0);
        c.nonneg("lan.latency_ms", self.lan.latency_ms, 10_000.0);
        c.loss("lan.loss", self.lan.loss);
        c.share(
            "adversaries.double_spenders",
            self.adversaries.double_spenders,
        );
        c.int(
            "adversaries.cloned_wallets",
            self.adversaries.cloned_wallets.into(),
            0,
            self.wallets.count.into(),
        );
        c.int(
            "adversaries.replays",
            self.adversaries.replays.into(),
            0,
            1_000_000,
        );
        let ledgers = u64::from(self.merchants.count) + u64::from(self.carriers.count);
        let bad_peers = u64::from(self.adversaries.forgers) + u64::from(self.adversaries.stallers);
        c.int(
            "adversaries.forgers",
            self.adversaries.forgers.into(),
            0,
            ledgers,
        );
        c.int("adversaries.stallers", bad_peers, 0, ledgers);
        for w in &self.partitions {
            if !(w[0] >= 0.0 && w[1] > w[0] && w[1] <= self.duration_hours) {
                c.fail(
                    "partitions",
                    &format!("[{}, {}]", w[0], w[1]),
                    "each window is [start_h, end_h] with 0 <= start < end <= duration_hours",
                );
            }
        }
        if self.name.is_empty() || self.name.len() > 64 {
            c.fail("name", &format!("{:?}", self.name), "1 to 64 characters");
        }
        c.finish()
    }
}

/// Collects the first range error.
#[derive(Default)]
struct Checker {
    first: Option<ScenarioError>,
}

impl Checker {
    fn fail(&mut self, field: &'static str, value: &str, rule: &'static str) {
        if self.first.is_none() {
            self.first = Some(ScenarioError::Invalid {
                field,
                value: value.to_string(),
                rule,
            });
        }
    }

    fn int(&mut self, field: &'static str, v: u64, lo: u64, hi: u64) {
        if v < lo || v > hi {
            let rule = if lo > 0 && v < lo {
                "too small for this scenario (see its minimum in docs/simulator.md)"
            } else {
                "too large for this scenario (see its maximum in docs/simulator.md)"
            };
            self.fail(field, &v.to_string(), rule);
        }
    }

    fn range(&mut self, field: &'static str, v: f64, lo: f64, hi: f64) {
        if !(v.is_finite() && v >= lo && v <= hi) {
            self.fail(
                field,
                &v.to_string(),
                "out of range (see docs/simulator.md)",
            );
        }
    }

    fn pos(&mut self, field: &'static str, v: f64, hi: f64) {
        if !(v.is_finite() && v > 0.0 && v <= hi) {
            self.fail(
                field,
                &v.to_string(),
                "must be a positive number within its maximum",
            );
        }
    }

    fn nonneg(&mut self, field: &'static str, v: f64, hi: f64) {
        if !(v.is_finite() && v >= 0.0 && v <= hi) {
            self.fail(
                field,
                &v.to_string(),
                "must be zero or positive, within its maximum",
            );
        }
    }

    fn share(&mut self, field: &'static str, v: f64) {
        if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
            self.fail(field, &v.to_string(), "must be a share between 0 and 1");
        }
    }

    fn loss(&mut self, field: &'static str, v: f64) {
        if !(v.is_finite() && (0.0..0.9).contains(&v)) {
            self.fail(field, &v.to_string(), "must be a probability in [0, 0.9)");
        }
    }

    fn finish(self) -> Result<(), ScenarioError> {
        self.first.map_or(Ok(()), Err)
    }
}

impl Scenario {
    /// Scales populations (wallets, merchants, carriers, sites with them)
    /// by `factor` and, if given, sets the duration: for quick runs of a
    /// big scenario. The result is checked again.
    pub fn scaled(mut self, factor: f64, hours: Option<f64>) -> Result<Scenario, ScenarioError> {
        if !(factor.is_finite() && factor > 0.0 && factor <= 1.0) {
            return Err(ScenarioError::Invalid {
                field: "--scale",
                value: factor.to_string(),
                rule: "must be in (0, 1]",
            });
        }
        let s = |n: u32| ((f64::from(n) * factor).round() as u32).max(u32::from(n > 0));
        self.wallets.count = s(self.wallets.count);
        self.merchants.count = s(self.merchants.count).max(self.gateways.merchants);
        self.carriers.count = s(self.carriers.count).max(self.gateways.carriers);
        self.adversaries.cloned_wallets = s(self.adversaries.cloned_wallets);
        self.adversaries.replays = s(self.adversaries.replays);
        if let Some(h) = hours {
            let ratio = h / self.duration_hours;
            self.duration_hours = h;
            self.wallets.active_hours = (self.wallets.active_hours * ratio).min(h);
            self.partitions.retain(|w| w[1] <= h);
        }
        self.validate()?;
        Ok(self)
    }
}
