//! The real settlement rules decide what the receipts that reach a
//! gateway are worth: honest receipts settle, of a fork only one side is
//! paid, and no allowance pays out more than its escrow.

mod common;

use std::collections::BTreeMap;

use meshpay_proto::settlement_ack::{Outcome, Refusal};
use meshpay_sim::report::Report;
use meshpay_sim::sim::Simulation;

#[test]
fn settlement_pays_honest_receipts_and_one_side_of_each_fork() {
    // The lab with its two halves kept apart until 54 minutes in: cloned
    // wallets pay in both, both sides of their forks are accepted, and
    // reach the gateway once the partition heals.
    let mut s = common::load("lab");
    s.partitions = vec![[0.0, 0.9]];
    s.adversaries.cloned_wallets = 4;
    let mut sim = Simulation::new(s, 3, None);
    sim.run(&mut |_| {});
    let report = Report::new(&mut sim);
    assert!(report.settlement.settled > 0, "the gateway uploads twice");

    let mut forks = 0;
    let mut paid: BTreeMap<_, u64> = BTreeMap::new();
    let mut by_slot: BTreeMap<_, Vec<Outcome>> = BTreeMap::new();
    for p in sim.payments.iter().filter(|p| p.settled.is_some()) {
        let outcome = p
            .outcome
            .expect("a receipt that reached settlement has an outcome");
        let h = p.header.expect("accepted payments carry a header");
        if !p.culprit {
            assert_eq!(outcome, Outcome::Settled, "an honest receipt settles");
        }
        *paid.entry(h.allowance).or_default() += outcome.paid(p.amount);
        by_slot
            .entry((h.allowance, h.seq))
            .or_default()
            .push(outcome);
    }
    for ((_, seq), outcomes) in &by_slot {
        if outcomes.len() > 1 {
            forks += 1;
            let settled = outcomes.iter().filter(|o| **o == Outcome::Settled).count();
            assert!(settled <= 1, "seq {seq}: {settled} sides of a fork paid");
            assert!(
                outcomes.contains(&Outcome::Refused(Refusal::Conflicted)),
                "seq {seq}: the losing side of a fork is refused as conflicted: {outcomes:?}"
            );
        }
    }
    assert!(forks > 0, "some forks reached settlement");
    let escrow = common::load("lab").wallets.allowance;
    for (allowance, total) in paid {
        assert!(
            total <= escrow,
            "{allowance:?} paid {total}, above its escrow {escrow}"
        );
    }
    // The report sums the same outcomes.
    let counted: u64 = report
        .settlement
        .outcomes
        .values()
        .map(|o| o.receipts)
        .sum();
    assert_eq!(
        counted,
        sim.payments.iter().filter(|p| p.outcome.is_some()).count() as u64
    );
}
