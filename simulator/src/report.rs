//! The measures of a run, each beside its limit: what the JSON, CSV, the
//! terminal table and the plots are made from.
//!
//! Nothing here reads a clock: two runs with the same seed produce the
//! same report, byte for byte.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::devices::{Behaviour, Cost};
use crate::limit::{NEVER, SettlementLimit};
use crate::sim::{SessionCounts, Simulation};
use crate::world::SimTime;

/// Encoded size of a dual-signed receipt (docs/results.md).
const RECEIPT_BYTES: u64 = 203;

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Simulated hours.
    pub hours: f64,
    /// Devices with a partial ledger (merchants, carriers, gateways).
    pub ledger_devices: usize,
    /// Wallets, clones included.
    pub wallets: usize,
    /// Events processed (payments, ticks, replays, sync sessions).
    pub events: u64,
    /// Sync intervals simulated.
    pub ticks: usize,
    /// Payments.
    pub payments: Payments,
    /// Conflicts and how fast they were caught.
    pub detection: Detection,
    /// Value accepted from culprits after detection.
    pub fraud: Fraud,
    /// Receipts reaching settlement.
    pub settlement: Settlement,
    /// What devices spent.
    pub cost: CostSummary,
    /// Sync sessions.
    pub sessions: SessionCounts,
    /// Ledger rotations at epoch boundaries, and the acknowledgements
    /// that let them drop what settled.
    pub rotations: crate::sim::RotationCounts,
    /// The LAN push of urgent entries.
    pub push: crate::push::PushCounts,
    /// What adversarial peers and replays achieved.
    pub adversaries: Adversaries,
    /// Per ledger device (also the CSV).
    pub devices: Vec<DeviceRow>,
}

/// Quantiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Payments.
#[derive(Debug, Clone, Serialize)]
pub struct Payments {
    /// Payments attempted with a payee in reach.
    pub attempted: usize,
    /// Accepted by the payee.
    pub accepted: usize,
    /// Refused, by the rule the payee named.
    pub refused: BTreeMap<String, u64>,
    /// Refused by the payer before signing.
    pub payer_refused: usize,
    /// Given up: no payee in reach for hours.
    pub no_payee: u64,
    /// Protocol time of accepted payments (invoice out to acknowledgement
    /// in), ms.
    pub latency_ms: Quantiles,
    /// Latency histogram: (upper bound ms, count), 5 ms bins.
    pub latency_histogram: Vec<(f64, u64)>,
}

/// Latencies of one conflict's stages, seconds after the second
/// conflicting header reached its payee (`None`: not reached in the run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stages {
    /// The first honest ledger device holds the proof.
    pub first: Option<f64>,
    /// Half of the honest ledger devices hold it.
    pub half: Option<f64>,
    /// 90 % hold it.
    pub ninety: Option<f64>,
    /// All hold it.
    pub all: Option<f64>,
    /// A gateway holds it during an uplink window.
    pub settlement: Option<f64>,
}

/// One conflict.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictRow {
    /// Allowance id, hex.
    pub allowance: String,
    /// When the second conflicting header reached its payee, seconds.
    pub second_spend_s: f64,
    /// Measured.
    pub measured: Stages,
    /// The limit.
    pub limit: Stages,
}

/// Detection over all conflicts: medians across conflicts (a conflict
/// that never reached a stage counts as infinitely late).
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// Conflicts that happened.
    pub conflicts: usize,
    /// Medians measured.
    pub measured_median: Stages,
    /// Medians of the limit.
    pub limit_median: Stages,
    /// measured median / limit median per stage (1 when both are 0).
    pub ratio: Stages,
    /// Per conflict.
    pub per_conflict: Vec<ConflictRow>,
}

/// Fraud exposure.
#[derive(Debug, Clone, Serialize)]
pub struct Fraud {
    /// Value accepted from culprits' allowances after their conflict was
    /// first detected by any honest device.
    pub value_after_detection: u64,
    /// Those payments.
    pub payments_after_detection: u64,
    /// Of those, payments at a payee that had been in contact with a proof
    /// holder at least one sync interval before (should be 0).
    pub in_reach_payments: u64,
    /// Their value.
    pub in_reach_value: u64,
    /// Value of all culprit payments accepted by honest payees.
    pub culprit_value_accepted: u64,
    /// The limit's exposure: of the same payments, the value accepted
    /// after a proof could first exist anywhere by payees the proof could
    /// not yet have reached.
    pub limit_value: u64,
}

/// Settlement completeness.
#[derive(Debug, Clone, Serialize)]
pub struct Settlement {
    /// Honest receipts.
    pub receipts: usize,
    /// Of them, settled in the run.
    pub settled: usize,
    /// (hour, share settled by then, share the limit could have settled).
    pub by_hour: Vec<(u32, f64, f64)>,
    /// Median hours from payment to settlement (measured, limit).
    pub median_hours: (Option<f64>, Option<f64>),
    /// What the settlement rules decided for the receipts that reached
    /// them (honest and culprit payments), by outcome.
    pub outcomes: BTreeMap<String, OutcomeCount>,
    /// Value honest payees accepted from culprits, and of it what
    /// settlement paid them (the rest is their loss: the payee bears
    /// conflict losses by default).
    pub culprit_value: (u64, u64),
}

/// Receipts with one settlement outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutcomeCount {
    /// How many.
    pub receipts: u64,
    /// Their value.
    pub value: u64,
    /// What reached the payees.
    pub paid: u64,
}

/// A short name for a settlement outcome.
fn outcome_name(o: &meshpay_proto::settlement_ack::Outcome) -> String {
    use meshpay_proto::settlement_ack::Outcome;
    match o {
        Outcome::Settled => "settled".into(),
        Outcome::Refused(r) => format!("refused: {r:?}"),
        Outcome::Covered { refusal, .. } => format!("covered: {refusal:?}"),
    }
}

/// Costs.
#[derive(Debug, Clone, Serialize)]
pub struct CostSummary {
    /// Gossip bytes: sent by ledger devices in sync sessions and in the
    /// LAN push.
    pub sync_bytes_sent: u64,
    /// Of them, the LAN push's.
    pub push_bytes_sent: u64,
    /// What naive flooding (every device forwards every message it holds
    /// to every peer it meets, once per peer) would have sent.
    pub naive_flooding_bytes: u64,
    /// sync / naive.
    pub ratio_to_naive: f64,
    /// What stateless naive flooding (every message held, to every peer,
    /// at every contact) would have sent.
    pub naive_stateless_bytes: u64,
    /// sync / stateless naive.
    pub ratio_to_stateless: f64,
    /// Median and largest per ledger device: bytes sent.
    pub bytes_sent: (u64, u64),
    /// Bytes received.
    pub bytes_received: (u64, u64),
    /// Radio-on seconds.
    pub radio_on_s: (f64, f64),
    /// Storage held at the end (ledger + receipts).
    pub storage_bytes: (u64, u64),
    /// Mean per wallet: bytes sent, radio-on seconds.
    pub wallet_mean: (f64, f64),
}

/// Adversaries.
#[derive(Debug, Clone, Serialize)]
pub struct Adversaries {
    /// Replayed transfers, by outcome.
    pub replays: BTreeMap<String, u64>,
    /// Culprit wallets (double spenders and clones).
    pub culprit_wallets: usize,
    /// Sessions with a forger, refused.
    pub forged_sessions_refused: u64,
    /// Sessions with stallers ended by the stall timer.
    pub stalled_sessions: u64,
}

/// One ledger device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    /// Id.
    pub device: u32,
    /// merchant or carrier.
    pub role: &'static str,
    /// Gateway.
    pub gateway: bool,
    /// Behaviour.
    pub behaviour: Behaviour,
    /// Costs.
    #[serde(flatten)]
    pub cost: Cost,
    /// Ledger entries at the end.
    pub ledger_entries: usize,
    /// Saved ledger bytes plus receipts.
    pub storage_bytes: u64,
    /// Receipts held as payee.
    pub receipts: u64,
}

fn secs(ms: SimTime) -> Option<f64> {
    (ms != NEVER).then(|| ms as f64 / 1000.0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Median of optional values, `None` counting as infinite.
fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut all: Vec<f64> = v.map(|x| x.unwrap_or(f64::INFINITY)).collect();
    if all.is_empty() {
        return None;
    }
    all.sort_by(f64::total_cmp);
    let m = all[(all.len() - 1) / 2];
    m.is_finite().then_some(m)
}

/// When the k-th of `times` (sorted) is reached for a share `q` of `n`.
fn reach(times: &[SimTime], n: usize, q: f64) -> SimTime {
    let k = ((n as f64 * q).ceil() as usize).max(1);
    times.get(k - 1).copied().unwrap_or(NEVER)
}

fn stages(mut times: Vec<SimTime>, n: usize, t2: SimTime, settle: SimTime) -> Stages {
    times.retain(|&t| t != NEVER);
    times.sort_unstable();
    let rel = |t: SimTime| {
        secs(if t == NEVER {
            NEVER
        } else {
            t.saturating_sub(t2)
        })
    };
    Stages {
        first: rel(times.first().copied().unwrap_or(NEVER)),
        half: rel(reach(&times, n, 0.5)),
        ninety: rel(reach(&times, n, 0.9)),
        all: rel(reach(&times, n, 1.0)),
        settlement: rel(settle),
    }
}

fn ratio(m: Option<f64>, l: Option<f64>) -> Option<f64> {
    match (m, l) {
        (Some(m), Some(l)) if l > 0.0 => Some(m / l),
        (Some(0.0), Some(_)) => Some(1.0),
        _ => None,
    }
}

impl Report {
    /// Measures a finished run.
    pub fn new(sim: &mut Simulation) -> Report {
        sim.read_outcomes();
        let interval = sim.scenario.sync_interval_s * 1000;
        let gateways: Vec<bool> = sim.devices.iter().map(|d| d.gateway).collect();
        let settle_limit = SettlementLimit::new(&sim.history, gateways, sim.windows);
        let honest: Vec<usize> = (0..sim.devices.len())
            .filter(|&d| sim.devices[d].behaviour == Behaviour::Honest)
            .collect();

        // Payments.
        let mut refused: BTreeMap<String, u64> = BTreeMap::new();
        let mut lat: Vec<f64> = Vec::new();
        let mut payer_refused = 0;
        for p in &sim.payments {
            if p.accepted {
                lat.push(p.protocol_us / 1000.0);
            } else if let Some(r) = p.refused {
                *refused.entry(r.name().to_string()).or_default() += 1;
            } else {
                payer_refused += 1;
            }
        }
        lat.sort_by(f64::total_cmp);
        let mut hist: BTreeMap<u64, u64> = BTreeMap::new();
        for &l in &lat {
            *hist.entry((l / 5.0).floor() as u64).or_default() += 1;
        }
        let payments = Payments {
            attempted: sim.payments.len(),
            accepted: lat.len(),
            refused,
            payer_refused,
            no_payee: sim.no_payee,
            latency_ms: Quantiles {
                p50: quantile(&lat, 0.5),
                p90: quantile(&lat, 0.9),
                p99: quantile(&lat, 0.99),
                max: lat.last().copied().unwrap_or(0.0),
            },
            latency_histogram: hist
                .into_iter()
                .map(|(b, c)| ((b + 1) as f64 * 5.0, c))
                .collect(),
        };

        // Detection, against the limit.
        let mut rows = Vec::new();
        let mut first_detect: BTreeMap<_, SimTime> = BTreeMap::new();
        let mut proof_limit: BTreeMap<_, Vec<SimTime>> = BTreeMap::new();
        for c in sim.conflicts.values() {
            let t2 = c.second.1;
            let held: Vec<SimTime> = honest
                .iter()
                .map(|&d| {
                    sim.devices[d]
                        .proof_since
                        .get(&c.allowance)
                        .copied()
                        .unwrap_or(NEVER)
                })
                .collect();
            if let Some(&f) = held.iter().min()
                && f != NEVER
            {
                first_detect.insert(c.allowance, f);
            }
            let measured = stages(held, honest.len(), t2, c.reported.unwrap_or(NEVER));
            let both = earliest_pair(sim, c);
            let proof = sim.history.earliest_arrival_each(&both);
            proof_limit.insert(c.allowance, proof.clone());
            let settle = (0..both.len())
                .filter(|&d| both[d] != NEVER)
                .map(|d| settle_limit.earliest(&sim.history, d as u32, both[d]))
                .min()
                .unwrap_or(NEVER);
            let limit_times: Vec<SimTime> = honest.iter().map(|&d| proof[d]).collect();
            let limit = stages(limit_times, honest.len(), t2, settle);
            rows.push(ConflictRow {
                allowance: hex(&c.allowance.0),
                second_spend_s: t2 as f64 / 1000.0,
                measured,
                limit,
            });
        }
        let med = |f: fn(&Stages) -> Option<f64>, which: bool| {
            median_opt(
                rows.iter()
                    .map(|r| f(if which { &r.measured } else { &r.limit })),
            )
        };
        let fields: [fn(&Stages) -> Option<f64>; 5] = [
            |s| s.first,
            |s| s.half,
            |s| s.ninety,
            |s| s.all,
            |s| s.settlement,
        ];
        let m: Vec<Option<f64>> = fields.iter().map(|f| med(*f, true)).collect();
        let l: Vec<Option<f64>> = fields.iter().map(|f| med(*f, false)).collect();
        let pack = |v: &[Option<f64>]| Stages {
            first: v[0],
            half: v[1],
            ninety: v[2],
            all: v[3],
            settlement: v[4],
        };
        let r: Vec<Option<f64>> = m.iter().zip(&l).map(|(a, b)| ratio(*a, *b)).collect();
        let detection = Detection {
            conflicts: rows.len(),
            measured_median: pack(&m),
            limit_median: pack(&l),
            ratio: pack(&r),
            per_conflict: rows,
        };

        // Fraud exposure.
        let mut fraud = Fraud {
            value_after_detection: 0,
            payments_after_detection: 0,
            in_reach_payments: 0,
            in_reach_value: 0,
            culprit_value_accepted: 0,
            limit_value: 0,
        };
        // Forgers and stallers take payments too, but their own sessions
        // fail, so they never learn of proofs: their losses are their own
        // and are left out.
        let honest_payee = |d: u32| sim.devices[d as usize].behaviour == Behaviour::Honest;
        for p in sim
            .payments
            .iter()
            .filter(|p| p.accepted && p.culprit && honest_payee(p.payee))
        {
            fraud.culprit_value_accepted += p.amount;
            let Some(h) = &p.header else { continue };
            if let Some(limit) = proof_limit.get(&h.allowance)
                && limit.iter().min().is_some_and(|&first| first < p.t)
                && limit[p.payee as usize] > p.t
            {
                fraud.limit_value += p.amount;
            }
            let Some(&detected) = first_detect.get(&h.allowance) else {
                continue;
            };
            if p.t <= detected {
                continue;
            }
            fraud.value_after_detection += p.amount;
            fraud.payments_after_detection += 1;
            let devices = &sim.devices;
            let since = |d: u32| {
                let dev = &devices[d as usize];
                if dev.behaviour == Behaviour::Honest {
                    dev.proof_since.get(&h.allowance).copied().unwrap_or(NEVER)
                } else {
                    NEVER
                }
            };
            if p.t >= interval
                && sim
                    .history
                    .met_holder(p.payee, detected, p.t - interval, &since)
            {
                fraud.in_reach_payments += 1;
                fraud.in_reach_value += p.amount;
            }
        }

        // Settlement completeness.
        let honest_paid: Vec<_> = sim
            .payments
            .iter()
            .filter(|p| p.accepted && !p.culprit)
            .collect();
        let measured: Vec<SimTime> = honest_paid
            .iter()
            .map(|p| p.settled.unwrap_or(NEVER))
            .collect();
        let limit: Vec<SimTime> = honest_paid
            .iter()
            // From the payment's start, as for conflicts: a lower bound.
            .map(|p| settle_limit.earliest(&sim.history, p.payee, p.t))
            .collect();
        let hours = sim.scenario.duration_hours.ceil() as u32;
        let share = |v: &[SimTime], h: u32| {
            let by = u64::from(h) * 3_600_000;
            v.iter().filter(|&&t| t <= by).count() as f64 / v.len().max(1) as f64
        };
        let lat_h = |v: &[SimTime]| {
            median_opt(
                v.iter()
                    .zip(&honest_paid)
                    .map(|(&s, p)| secs(s).map(|x| (x - p.t as f64 / 1000.0) / 3600.0)),
            )
        };
        let settlement = Settlement {
            receipts: honest_paid.len(),
            settled: measured.iter().filter(|&&t| t != NEVER).count(),
            by_hour: (0..=hours)
                .map(|h| (h, share(&measured, h), share(&limit, h)))
                .collect(),
            median_hours: (lat_h(&measured), lat_h(&limit)),
            outcomes: BTreeMap::new(),
            culprit_value: (0, 0),
        };
        let mut settlement = settlement;
        for p in &sim.payments {
            let Some(o) = &p.outcome else { continue };
            let row = settlement.outcomes.entry(outcome_name(o)).or_default();
            row.receipts += 1;
            row.value += p.amount;
            row.paid += o.paid(p.amount);
        }
        for p in sim
            .payments
            .iter()
            .filter(|p| p.accepted && p.culprit && honest_payee(p.payee))
        {
            settlement.culprit_value.0 += p.amount;
            settlement.culprit_value.1 += p.outcome.map_or(0, |o| o.paid(p.amount));
        }

        // Costs.
        let merchants = sim.scenario.merchants.count as usize;
        let devices: Vec<_> = sim.devices.iter_mut().enumerate().collect();
        let rows: Vec<DeviceRow> = crate::parallel::map(sim.threads, devices, |(i, d)| {
            // The saved ledger with what it holds aside, as a node stores it.
            let storage = (d.ledger.save().len() + d.ledger.save_aside().len()) as u64
                + d.receipts * RECEIPT_BYTES;
            DeviceRow {
                device: i as u32,
                role: if i < merchants { "merchant" } else { "carrier" },
                gateway: d.gateway,
                behaviour: d.behaviour,
                cost: d.cost,
                ledger_entries: d.ledger.held_len(),
                storage_bytes: storage,
                receipts: d.receipts,
            }
        });
        let mid_max = |mut v: Vec<u64>| {
            v.sort_unstable();
            (
                v.get((v.len().max(1) - 1) / 2).copied().unwrap_or(0),
                v.last().copied().unwrap_or(0),
            )
        };
        let push_bytes: u64 = rows.iter().map(|r| r.cost.push_bytes_sent).sum();
        let sync_bytes: u64 = rows.iter().map(|r| r.cost.sync_bytes_sent).sum::<u64>() + push_bytes;
        let radio = mid_max(rows.iter().map(|r| r.cost.radio_on_us).collect());
        let nw = sim.wallets.len().max(1) as f64;
        let cost = CostSummary {
            sync_bytes_sent: sync_bytes,
            push_bytes_sent: push_bytes,
            naive_flooding_bytes: sim.naive_bytes,
            ratio_to_naive: sync_bytes as f64 / sim.naive_bytes.max(1) as f64,
            naive_stateless_bytes: sim.naive_stateless_bytes,
            ratio_to_stateless: sync_bytes as f64 / sim.naive_stateless_bytes.max(1) as f64,
            bytes_sent: mid_max(rows.iter().map(|r| r.cost.bytes_sent).collect()),
            bytes_received: mid_max(rows.iter().map(|r| r.cost.bytes_received).collect()),
            radio_on_s: (radio.0 as f64 / 1e6, radio.1 as f64 / 1e6),
            storage_bytes: mid_max(rows.iter().map(|r| r.storage_bytes).collect()),
            wallet_mean: (
                sim.wallets.iter().map(|w| w.cost.bytes_sent).sum::<u64>() as f64 / nw,
                sim.wallets.iter().map(|w| w.cost.radio_on_us).sum::<u64>() as f64 / nw / 1e6,
            ),
        };

        let ends = &sim.sessions.by_end;
        let adversaries = Adversaries {
            replays: sim.replays.clone(),
            culprit_wallets: sim.wallets.iter().filter(|w| w.is_culprit()).count(),
            forged_sessions_refused: ends
                .get(&crate::session::SessionEnd::Refused)
                .copied()
                .unwrap_or(0)
                .saturating_sub(sim.sessions.honest_refusals.values().sum()),
            stalled_sessions: ends
                .get(&crate::session::SessionEnd::Stalled)
                .copied()
                .unwrap_or(0),
        };

        Report {
            scenario: sim.scenario.name.clone(),
            seed: sim.seed,
            hours: sim.scenario.duration_hours,
            ledger_devices: sim.devices.len(),
            wallets: sim.wallets.len(),
            events: sim.events,
            ticks: sim.history.ticks(),
            payments,
            detection,
            fraud,
            settlement,
            cost,
            sessions: sim.sessions.clone(),
            rotations: sim.rotations.clone(),
            push: sim.push.clone(),
            adversaries,
            devices: rows,
        }
    }
}

/// For every device, the earliest instant it could hold two conflicting
/// headers of the conflict's allowance: over every pair of headers shown
/// to payees that conflict (a double spender makes several), the later of
/// the two arrivals. A proof needs such a pair, so no device can hold one
/// earlier.
fn earliest_pair(sim: &Simulation, c: &crate::sim::ConflictFact) -> Vec<SimTime> {
    let shown: &[(_, u32, SimTime)] = sim
        .presented
        .get(&c.allowance)
        .map_or(&[], |v| v.as_slice());
    let arrivals: Vec<Vec<SimTime>> = shown
        .iter()
        .map(|(_, d, t)| sim.history.earliest_arrival(&[(*d, *t)]))
        .collect();
    let mut best = vec![NEVER; sim.devices.len()];
    for i in 0..shown.len() {
        for j in i + 1..shown.len() {
            if meshpay_proto::conflict::detect(&shown[i].0, &shown[j].0).is_none() {
                continue;
            }
            for (d, b) in best.iter_mut().enumerate() {
                *b = (*b).min(arrivals[i][d].max(arrivals[j][d]));
            }
        }
    }
    best
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
