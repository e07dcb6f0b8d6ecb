//! The node's LAN push of conflict proofs: on a LAN a proof reaches every
//! device one hop after it is made, as the limit says it can, and the
//! limit stays a lower bound.

mod common;

use meshpay_sim::limit::{ContactHistory, NEVER};
use meshpay_sim::link::LinkKind;
use meshpay_sim::world::Contact;

fn contact(a: u32, b: u32, kind: LinkKind) -> Contact {
    Contact { a, b, kind }
}

#[test]
fn a_lan_floods_between_ticks_and_ble_only_at_ticks() {
    // Ticks at 0 and 100: devices 0, 1, 2 share a LAN, 2 and 3 meet over
    // BLE. A fact born at 0 at 40 reaches 1 and 2 at 40 (the LAN is there
    // all interval), 3 only at the next tick.
    let mut h = ContactHistory::new(4);
    let contacts = [
        contact(0, 1, LinkKind::Lan),
        contact(0, 2, LinkKind::Lan),
        contact(1, 2, LinkKind::Lan),
        contact(2, 3, LinkKind::Ble),
    ];
    h.record(0, &contacts);
    h.record(100, &contacts);
    assert_eq!(h.earliest_arrival(&[(0, 40)]), vec![40, 40, 40, 100]);
    // Born at the BLE-only device between ticks: it waits for the tick.
    assert_eq!(h.earliest_arrival(&[(3, 40)]), vec![100, 100, 100, 40]);
    assert_eq!(h.lan_at(1, 40), &[0, 1, 2]);
    assert!(h.lan_at(3, 40).is_empty());
    // Before the first tick nobody is known to be on a LAN.
    let mut late = ContactHistory::new(2);
    late.record(10, &[contact(0, 1, LinkKind::Lan)]);
    assert!(late.lan_at(0, 5).is_empty());
    assert_eq!(late.earliest_arrival(&[(0, 5)]), vec![5, 10]);
    assert_eq!(late.earliest_arrival(&[(0, 11)]), vec![11, 11]);
    assert_eq!(
        ContactHistory::new(2).earliest_arrival(&[(0, 1)]),
        vec![1, NEVER]
    );
}

#[test]
fn the_push_reaches_the_whole_lan_when_the_limit_does() {
    // Ten nodes on one LAN that sync with one peer per 10 s: sessions
    // alone would need several rounds to reach all ten with a proof.
    let mut s = common::load("lab");
    s.partitions.clear();
    s.sync_fanout = 1;
    s.adversaries.cloned_wallets = 3;
    let r = common::run(s, 11);
    assert!(r.detection.conflicts >= 2, "the clones must fork");
    assert!(r.push.published >= r.detection.conflicts as u64);
    assert_eq!(r.push.refused, 0, "honest pushes are never refused");
    assert!(r.cost.push_bytes_sent > 0);
    for c in &r.detection.per_conflict {
        let (m, l) = (&c.measured, &c.limit);
        let first = m.first.expect("detected");
        let all = m.all.expect("the push reaches every device on the LAN");
        // One LAN hop (1 ms latency, 100 Mbit/s) after the first device
        // made the proof, far below one sync interval.
        assert!(
            all - first < 0.05,
            "conflict {}: all devices held the proof {} s after the first",
            c.allowance,
            all - first
        );
        // The limit floods the LAN the instant a device could hold both
        // headers; the measure adds only the payment exchange in which
        // the payee learns the second header (114 ms here) and the hop.
        let limit_all = l.all.expect("the limit reaches every device");
        assert!(
            all >= limit_all && all - limit_all < 0.2,
            "conflict {}: measured {all} s, limit {limit_all} s",
            c.allowance
        );
        for (stage, m, l) in [
            ("first", m.first, l.first),
            ("50 %", m.half, l.half),
            ("90 %", m.ninety, l.ninety),
            ("settlement", m.settlement, l.settlement),
        ] {
            if let Some(m) = m {
                let l = l.unwrap_or_else(|| panic!("{stage}: measured {m} s, limit never"));
                assert!(
                    m + 1e-9 >= l,
                    "{stage}: measured {m} s below the limit {l} s"
                );
            }
        }
    }
}

/// Over BLE, a device that learnt a proof in a session sets the urgent
/// flag, and its BLE contacts of the tick connect to it at once (the
/// node's BLE runtime): a proof runs down a line of handhelds within the
/// tick, where sessions alone, one after the other in shuffled order,
/// often need the next tick (30 s in the cabin).
#[test]
fn over_ble_the_urgent_flag_carries_a_proof_on_within_the_tick() {
    let mut s = common::load("cabin");
    s.adversaries.double_spenders = 0.2;
    s.adversaries.cloned_wallets = 6;
    let interval = s.sync_interval_s as f64;
    let r = common::run(s, 3);
    assert!(r.detection.conflicts >= 3, "want several conflicts");
    assert!(r.push.over_ble > 0, "proofs went out over BLE");
    assert!(r.push.new_at_receiver > 0, "and taught their receivers");
    assert_eq!(r.push.refused, 0);
    // How long after the limit the last device held each proof.
    let mut late: Vec<f64> = r
        .detection
        .per_conflict
        .iter()
        .filter_map(|c| Some(c.measured.all? - c.limit.all?))
        .collect();
    late.sort_by(f64::total_cmp);
    let median = late[late.len() / 2];
    assert!(
        median < interval / 2.0,
        "the last device is typically {median} s after the limit (tick {interval} s): {late:?}"
    );
}
