//! Ledgers rotate into a new epoch at UTC midnight of the simulated clock
//! (protocol.md 9.8): what settled leaves the documents, the rest is
//! carried, and the mesh keeps converging in the new epoch.

mod common;

use meshpay_proto::ledger::epoch_of;
use meshpay_proto::prelude::*;
use meshpay_sim::report::Report;
use meshpay_sim::sim::Simulation;

/// The lab, starting 45 minutes before a UTC midnight: the gateway
/// uploads at 30 minutes, the ledgers rotate at 45, payments go on to the
/// end of the hour.
fn lab_across_midnight(rotate: bool) -> (Simulation, Report) {
    let mut s = common::load("lab");
    s.start_unix = 20_800 * 86_400 - 45 * 60;
    let mut sim = Simulation::new(s, 5, None);
    sim.rotate = rotate;
    sim.run(&mut |_| {});
    let report = Report::new(&mut sim);
    (sim, report)
}

#[test]
fn ledgers_rotate_at_midnight_write_back_what_is_unsettled_and_converge_again() {
    let (sim, report) = lab_across_midnight(true);
    let r = &report.rotations;
    assert_eq!(r.epochs, 1, "one midnight: {r:?}");
    assert!(
        r.acks >= 1,
        "the upload at 30 minutes is acknowledged: {r:?}"
    );
    // What settled left the documents; it is held aside (it still
    // catches a second spend of its number), and nothing expired.
    assert_eq!(r.dropped, 0, "{r:?}");
    assert!(r.kept > r.written, "{r:?}");
    assert!(sim.devices.iter().all(|d| d.ledger.aside_len() > 0));
    assert!(
        r.written > 0,
        "payees write their unsettled headers again: {r:?}"
    );
    assert!(
        report.sessions.honest_refusals.is_empty(),
        "{:?}",
        report.sessions.honest_refusals
    );
    let day = epoch_of(Timestamp(20_800 * 86_400));
    for d in &sim.devices {
        assert_eq!(d.ledger.epoch(), day);
    }
    // Full reach every 10 s: by the end every ledger holds the same
    // document of the new epoch (the gateway one more entry: the
    // acknowledgement of its last upload, after the last sync round).
    let others: Vec<&_> = sim.devices.iter().filter(|d| !d.gateway).collect();
    let digests: Vec<Hash> = others.iter().map(|d| d.ledger.digest()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    for g in sim.devices.iter().filter(|d| d.gateway) {
        assert_eq!(g.ledger.len(), others[0].ledger.len() + 1);
    }
    // The cloned wallet's double spend is still caught everywhere.
    assert!(report.detection.conflicts >= 1);
    for d in &sim.devices {
        assert!(!d.ledger.proofs().is_empty(), "every device holds a proof");
    }
}

#[test]
fn rotation_keeps_ledgers_smaller_than_one_epoch_for_the_whole_run() {
    let (rotated, _) = lab_across_midnight(true);
    let (grown, report) = lab_across_midnight(false);
    assert_eq!(report.rotations.epochs, 0);
    let in_documents =
        |sim: &Simulation| -> usize { sim.devices.iter().map(|d| d.ledger.len()).sum() };
    let held =
        |sim: &Simulation| -> usize { sim.devices.iter().map(|d| d.ledger.held_len()).sum() };
    assert!(
        in_documents(&rotated) < in_documents(&grown),
        "documents after the rotation hold less: {} against {}",
        in_documents(&rotated),
        in_documents(&grown)
    );
    // And the ledgers as a whole (what is held aside counted) hold as
    // much: nothing of this hour expired.
    assert!(
        held(&rotated) >= in_documents(&rotated),
        "{} against {}",
        held(&rotated),
        in_documents(&rotated)
    );
}
