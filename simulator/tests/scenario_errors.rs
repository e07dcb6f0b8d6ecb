//! Scenario files with bad fields are refused with an error that names the
//! field, from the library and from the command line.

mod common;

use std::process::Command;

use meshpay_sim::scenario::{Scenario, ScenarioError};

fn lab_text() -> String {
    std::fs::read_to_string(common::scenario_path("lab")).expect("lab.toml")
}

fn invalid_field(text: &str) -> &'static str {
    match Scenario::parse(text, "test.toml") {
        Err(ScenarioError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn every_shipped_scenario_is_valid() {
    for name in ["lab", "cabin", "cruise", "relief"] {
        common::load(name);
    }
}

#[test]
fn out_of_range_values_name_their_field() {
    let t = lab_text();
    let cases = [
        ("mtu = 247", "mtu = 10", "ble.mtu"),
        (
            "loss = 0.0\nmax_connections",
            "loss = 1.5\nmax_connections",
            "ble.loss",
        ),
        (
            "buyers_share = 1.0",
            "buyers_share = -0.1",
            "wallets.buyers_share",
        ),
        (
            "duration_hours = 1.0",
            "duration_hours = 0.0",
            "duration_hours",
        ),
        ("amount_max = 1000", "amount_max = 10", "wallets.amount_max"),
        (
            "partitions = [[0.2, 0.5]]",
            "partitions = [[0.5, 0.2]]",
            "partitions",
        ),
        ("merchants = 1\n", "merchants = 0\n", "gateways.merchants"),
        (
            "sync_interval_s = 10",
            "sync_interval_s = 0",
            "sync_interval_s",
        ),
        ("count = 1\nlayout", "count = 100000\nlayout", "sites.count"),
    ];
    for (from, to, field) in cases {
        assert!(t.contains(from), "fixture text {from:?} not in lab.toml");
        assert_eq!(
            invalid_field(&t.replacen(from, to, 1)),
            field,
            "after {to:?}"
        );
    }
}

#[test]
fn unknown_and_missing_fields_are_parse_errors_naming_them() {
    let t = lab_text();
    let unknown = t.replacen("[ble]\n", "[ble]\nrange_km = 3\n", 1);
    match Scenario::parse(&unknown, "x.toml") {
        Err(ScenarioError::Parse { message, .. }) => {
            assert!(message.contains("range_km"), "{message}")
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let missing = t.replacen("mtu = 247\n", "", 1);
    match Scenario::parse(&missing, "x.toml") {
        Err(ScenarioError::Parse { message, .. }) => assert!(message.contains("mtu"), "{message}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn the_command_line_reports_the_field_and_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, lab_text().replacen("count = 10\n", "count = 0\n", 1)).expect("io");
    let out = Command::new(env!("CARGO_BIN_EXE_meshpay-sim"))
        .arg("run")
        .arg(&bad)
        .output()
        .expect("runs the simulator");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("merchants.count"), "stderr: {err}");
    let missing = dir.path().join("missing.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_meshpay-sim"))
        .args(["check"])
        .arg(&missing)
        .output()
        .expect("runs the simulator");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read scenario"));
}
