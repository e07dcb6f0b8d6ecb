//! The report as a terminal table, JSON and CSV.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{Report, Stages};

/// The summary table for the terminal.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    let x = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}x"));
    let _ = writeln!(
        s,
        "meshpay-sim: {} (seed {}), {:.1} h, {} ledger devices, {} wallets, {} events, {} ticks",
        r.scenario, r.seed, r.hours, r.ledger_devices, r.wallets, r.events, r.ticks
    );
    let p = &r.payments;
    let _ = writeln!(
        s,
        "payments: {} attempted, {} accepted, refused {:?}, payer refused {}, no payee {}",
        p.attempted, p.accepted, p.refused, p.payer_refused, p.no_payee
    );
    let _ = writeln!(
        s,
        "payment protocol time: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p.latency_ms.p50, p.latency_ms.p90, p.latency_ms.p99, p.latency_ms.max
    );
    let d = &r.detection;
    let _ = writeln!(
        s,
        "detection ({} conflicts), median seconds after the second spend:",
        d.conflicts
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>10} {:>10} {:>8}",
        "stage", "measured", "limit", "ratio"
    );
    type Stage = fn(&Stages) -> Option<f64>;
    let rows: [(&str, Stage); 5] = [
        ("first honest device", |s| s.first),
        ("50 % of devices", |s| s.half),
        ("90 % of devices", |s| s.ninety),
        ("all devices", |s| s.all),
        ("settlement", |s| s.settlement),
    ];
    for (name, g) in rows {
        // Against a limit of zero no ratio exists: show how much later.
        let ratio = match (g(&d.ratio), g(&d.measured_median), g(&d.limit_median)) {
            (None, Some(m), Some(0.0)) => format!("+{m:.1} s"),
            (r, _, _) => x(r),
        };
        let _ = writeln!(
            s,
            "  {:<22} {:>10} {:>10} {:>8}",
            name,
            f(g(&d.measured_median)),
            f(g(&d.limit_median)),
            ratio
        );
    }
    let fr = &r.fraud;
    let _ = writeln!(
        s,
        "fraud exposure: {} accepted from culprits, {} after first detection (limit {}; {} payments), {} at payees in reach of a proof holder ({} payments)",
        fr.culprit_value_accepted,
        fr.value_after_detection,
        fr.limit_value,
        fr.payments_after_detection,
        fr.in_reach_value,
        fr.in_reach_payments
    );
    let st = &r.settlement;
    let _ = writeln!(
        s,
        "settlement: {} of {} honest receipts settled; median {} h (limit {} h)",
        st.settled,
        st.receipts,
        f(st.median_hours.0),
        f(st.median_hours.1)
    );
    let outcomes: Vec<String> = st
        .outcomes
        .iter()
        .map(|(k, o)| format!("{k} {} (value {}, paid {})", o.receipts, o.value, o.paid))
        .collect();
    let _ = writeln!(
        s,
        "settlement rules: {}; from culprits honest payees accepted {}, settlement paid them {}",
        if outcomes.is_empty() {
            "nothing reached settlement".to_string()
        } else {
            outcomes.join(", ")
        },
        st.culprit_value.0,
        st.culprit_value.1
    );
    let c = &r.cost;
    let _ = writeln!(
        s,
        "gossip bytes: {} sent (Urgent messages: {}; LAN push: {}); naive flooding {} ({:.1} %); naive once per peer {} ({:.1} %)",
        c.sync_bytes_sent,
        r.sessions.urgent_bytes,
        c.push_bytes_sent,
        c.naive_stateless_bytes,
        c.ratio_to_stateless * 100.0,
        c.naive_flooding_bytes,
        c.ratio_to_naive * 100.0
    );
    let p = &r.push;
    let _ = writeln!(
        s,
        "LAN push: {} messages published, {} copies delivered ({} taught a proof, {} refused)",
        p.published, p.deliveries, p.new_at_receiver, p.refused
    );
    let _ = writeln!(
        s,
        "per ledger device (median / max): sent {} / {} B, received {} / {} B, radio on {:.1} / {:.1} s, storage {} / {} B",
        c.bytes_sent.0,
        c.bytes_sent.1,
        c.bytes_received.0,
        c.bytes_received.1,
        c.radio_on_s.0,
        c.radio_on_s.1,
        c.storage_bytes.0,
        c.storage_bytes.1
    );
    let _ = writeln!(
        s,
        "per wallet (mean): sent {:.0} B, radio on {:.2} s",
        c.wallet_mean.0, c.wallet_mean.1
    );
    let _ = writeln!(
        s,
        "sessions: {:?}, skipped: in sync {}, busy {}, backing off {}",
        r.sessions.by_end,
        r.sessions.skipped_in_sync,
        r.sessions.skipped_busy,
        r.sessions.skipped_backoff
    );
    if !r.sessions.honest_refusals.is_empty() {
        let _ = writeln!(
            s,
            "sessions between honest devices refused: {:?}",
            r.sessions.honest_refusals
        );
    }
    let a = &r.adversaries;
    let _ = writeln!(
        s,
        "adversaries: {} culprit wallets, replays {:?}, forged sessions refused {}, stalled sessions {}",
        a.culprit_wallets, a.replays, a.forged_sessions_refused, a.stalled_sessions
    );
    s
}

/// The report as pretty JSON.
pub fn json(r: &Report) -> String {
    let mut s =
        serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

/// Paths of the CSV files written beside `path`.
pub fn csv_paths(path: &Path) -> [PathBuf; 3] {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let dir = path.parent().unwrap_or(Path::new(""));
    [
        path.to_path_buf(),
        dir.join(format!("{stem}-conflicts.csv")),
        dir.join(format!("{stem}-settlement.csv")),
    ]
}

/// The three CSV tables: devices, conflicts, settlement by hour.
pub fn csv(r: &Report) -> [String; 3] {
    let mut dev = String::from(
        "device,role,gateway,behaviour,bytes_sent,bytes_received,sync_bytes_sent,radio_on_s,ledger_entries,storage_bytes,receipts\n",
    );
    for d in &r.devices {
        let _ = writeln!(
            dev,
            "{},{},{},{:?},{},{},{},{:.3},{},{},{}",
            d.device,
            d.role,
            d.gateway,
            d.behaviour,
            d.cost.bytes_sent,
            d.cost.bytes_received,
            d.cost.sync_bytes_sent,
            d.cost.radio_on_us as f64 / 1e6,
            d.ledger_entries,
            d.storage_bytes,
            d.receipts
        );
    }
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.3}"));
    let mut con = String::from(
        "allowance,second_spend_s,first_s,half_s,ninety_s,all_s,settlement_s,limit_first_s,limit_half_s,limit_ninety_s,limit_all_s,limit_settlement_s\n",
    );
    for c in &r.detection.per_conflict {
        let (m, l) = (&c.measured, &c.limit);
        let _ = writeln!(
            con,
            "{},{:.3},{},{},{},{},{},{},{},{},{},{}",
            c.allowance,
            c.second_spend_s,
            o(m.first),
            o(m.half),
            o(m.ninety),
            o(m.all),
            o(m.settlement),
            o(l.first),
            o(l.half),
            o(l.ninety),
            o(l.all),
            o(l.settlement)
        );
    }
    let mut set = String::from("hour,settled_share,limit_share\n");
    for (h, m, l) in &r.settlement.by_hour {
        let _ = writeln!(set, "{h},{m:.5},{l:.5}");
    }
    [dev, con, set]
}
