//! Helpers shared by the simulator's tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};

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

/// Runs `meshpay-sim run <scenario> <args>`.
pub fn run_cli<I, S>(scenario: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_meshpay-sim"))
        .arg("run")
        .arg(scenario_path(scenario))
        .args(args)
        .output()
        .expect("runs the simulator")
}

/// Like [`run_cli`], and the run must succeed.
pub fn run_cli_ok<I, S>(scenario: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_cli(scenario, args);
    assert!(
        out.status.success(),
        "simulator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
