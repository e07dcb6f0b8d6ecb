//! # meshpay-sim
//!
//! A deterministic discrete-event simulator that runs the real
//! `meshpay-proto` machines (payment handshake, partial ledger, sync
//! sessions) on thousands of modelled devices: ships, aircraft cabins,
//! relief areas, a lab room. It measures detection latency, fraud
//! exposure, settlement completeness, per-device cost and payment latency,
//! each against the limit that no protocol can beat over the same
//! contacts. See docs/simulator.md.
//!
//! A run in a few lines (the `meshpay-sim` binary does the same, and writes
//! JSON, CSV and plots):
//!
//! ```
//! use meshpay_sim::{report::Report, scenario::Scenario, sim::Simulation};
//!
//! let lab = Scenario::parse(include_str!("../scenarios/lab.toml"), "lab.toml")?
//!     .scaled(1.0, Some(0.25))?; // the first quarter hour
//! let mut sim = Simulation::new(lab, 7, None);
//! sim.run(&mut |_simulated_ms| {});
//! let report = Report::new(&mut sim);
//! assert!(report.payments.accepted > 0);
//! println!("{}", meshpay_sim::output::table(&report));
//! # Ok::<(), meshpay_sim::scenario::ScenarioError>(())
//! ```

pub mod devices;
pub mod limit;
pub mod link;
pub mod output;
pub mod parallel;
pub mod payment;
pub mod plot;
pub mod push;
pub mod report;
pub mod scenario;
pub mod session;
pub mod settle;
pub mod sim;
pub mod world;
