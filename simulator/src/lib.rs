//! # meshpay-sim
//!
//! A deterministic discrete-event simulator that runs the real
//! `meshpay-proto` machines (payment handshake, partial ledger, sync
//! sessions) on thousands of modelled devices: ships, aircraft cabins,
//! relief areas, a lab room. It measures detection latency, fraud
//! exposure, settlement completeness, per-device cost and payment latency,
//! each against the limit that no protocol can beat over the same
//! contacts. See docs/simulator.md.

pub mod devices;
pub mod limit;
pub mod link;
pub mod output;
pub mod payment;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod session;
pub mod settle;
pub mod sim;
pub mod world;
