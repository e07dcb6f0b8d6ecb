//! The limit is a true lower bound: no measured latency is below it, and
//! flooding respects the order of contacts in time.

mod common;

use meshpay_sim::limit::{ContactHistory, NEVER};
use meshpay_sim::link::LinkKind;
use meshpay_sim::world::Contact;

fn contact(a: u32, b: u32) -> Contact {
    Contact {
        a,
        b,
        kind: LinkKind::Ble,
    }
}

#[test]
fn flooding_follows_time_respecting_paths_only() {
    // B meets C at 5, A meets B at 10: what A holds from 0 reaches B at 10
    // but never C; what C holds reaches B at 5 and A at 10.
    let mut h = ContactHistory::new(3);
    h.record(5, &[contact(1, 2)]);
    h.record(10, &[contact(0, 1)]);
    assert_eq!(h.earliest_arrival(&[(0, 0)]), vec![0, 10, NEVER]);
    assert_eq!(h.earliest_arrival(&[(2, 0)]), vec![10, 5, 0]);
    // One tick's contacts form a component: a chain spreads at once.
    let mut h = ContactHistory::new(3);
    h.record(7, &[contact(0, 1), contact(1, 2)]);
    assert_eq!(h.earliest_arrival(&[(0, 3)]), vec![3, 7, 7]);
    // A fact born after the tick does not travel back in time.
    assert_eq!(h.earliest_arrival(&[(0, 8)]), vec![8, NEVER, NEVER]);
}

fn at_least(measured: Option<f64>, limit: Option<f64>, what: &str) {
    if let Some(m) = measured {
        let l = limit.unwrap_or_else(|| panic!("{what}: measured {m} s but the limit never"));
        assert!(
            m + 1e-9 >= l,
            "{what}: measured {m} s is below the limit {l} s"
        );
    }
}

#[test]
fn no_measured_latency_is_below_the_limit() {
    // The cabin with more adversaries: several conflicts over BLE with loss.
    let mut s = common::load("cabin");
    s.adversaries.double_spenders = 0.2;
    s.adversaries.cloned_wallets = 6;
    let r = common::run(s, 3);
    assert!(
        r.detection.conflicts >= 3,
        "want several conflicts, got {}",
        r.detection.conflicts
    );
    for c in &r.detection.per_conflict {
        let (m, l) = (&c.measured, &c.limit);
        at_least(m.first, l.first, "first");
        at_least(m.half, l.half, "50 %");
        at_least(m.ninety, l.ninety, "90 %");
        at_least(m.all, l.all, "all");
        at_least(m.settlement, l.settlement, "settlement");
    }
    assert!(
        r.settlement.settled > 0,
        "some receipts settle after landing"
    );
    for (hour, measured, limit) in &r.settlement.by_hour {
        assert!(
            measured <= limit,
            "hour {hour}: {measured} of receipts settled, above the limit's {limit}"
        );
    }
}
