//! Helpers shared by the simulator's tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;

use meshpay_sim::report::Report;
use meshpay_sim::scenario::Scenario;
use meshpay_sim::sim::Simulation;

/// A scenario file shipped in `simulator/scenarios/`.
pub fn scenario_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

pub fn load(name: &str) -> Scenario {
    Scenario::load(&scenario_path(name)).expect("shipped scenario is valid")
}

pub fn run(scenario: Scenario, seed: u64) -> Report {
    let mut sim = Simulation::new(scenario, seed, None);
    sim.run(&mut |_| {});
    Report::new(&mut sim)
}
