//! A fully connected lab detects a double spend within one sync round.

mod common;

#[test]
fn fully_connected_lab_spreads_a_double_spend_within_one_round() {
    let mut s = common::load("lab");
    s.partitions.clear();
    s.adversaries.cloned_wallets = 2;
    let interval = s.sync_interval_s as f64;
    let devices = s.merchants.count as usize;
    let r = common::run(s, 5);
    assert!(r.detection.conflicts >= 1, "the clones must fork");
    for c in &r.detection.per_conflict {
        let all = c.measured.all.unwrap_or_else(|| {
            panic!(
                "conflict {} never reached all {devices} devices",
                c.allowance
            )
        });
        // The next tick comes at most one interval after the second spend;
        // the session itself takes milliseconds on the lab LAN.
        assert!(
            all <= interval + 1.0,
            "conflict {}: all devices held the proof only {all} s after the second spend",
            c.allowance
        );
    }
    // And no culprit payment was accepted once a device held the proof
    // for a round within reach.
    assert_eq!(r.fraud.in_reach_payments, 0);
}
