//! Same seed, same bytes: the binary is run twice and its JSON and CSV
//! outputs compared byte for byte; another seed must differ.

mod common;

use std::ffi::OsStr;

fn run(seed: u64, dir: &std::path::Path) -> Vec<Vec<u8>> {
    let json = dir.join("out.json");
    let csv = dir.join("out.csv");
    let seed = seed.to_string();
    common::run_cli_ok(
        "cabin",
        [
            OsStr::new("--seed"),
            OsStr::new(&seed),
            OsStr::new("--hours"),
            OsStr::new("3"),
            OsStr::new("--json"),
            json.as_os_str(),
            OsStr::new("--csv"),
            csv.as_os_str(),
        ],
    );
    [
        "out.json",
        "out.csv",
        "out-conflicts.csv",
        "out-settlement.csv",
    ]
    .iter()
    .map(|f| std::fs::read(dir.join(f)).expect("output written"))
    .collect()
}

#[test]
fn same_seed_gives_byte_identical_outputs() {
    let (a, b, c) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let first = run(7, a.path());
    let second = run(7, b.path());
    assert_eq!(first, second, "two runs with seed 7 differ");
    let json = String::from_utf8(first[0].clone()).expect("JSON is UTF-8");
    assert!(json.contains("\"accepted\""), "the report has payments");
    let other = run(8, c.path());
    assert_ne!(first[0], other[0], "seed 8 should give another run");
}

/// The relief area, cut small: a midnight rotation, LAN pushes of proofs
/// and adversaries' sessions, in a fraction of a second.
fn relief_json(threads: &str) -> Vec<u8> {
    let out = common::run_cli_ok(
        "relief",
        [
            "--seed",
            "3",
            "--scale",
            "0.05",
            "--hours",
            "30",
            "--print-json",
            "--threads",
            threads,
        ],
    );
    out.stdout
}

#[test]
fn the_number_of_threads_changes_no_output() {
    let one = relief_json("1");
    let report: serde_json::Value = serde_json::from_slice(&one).expect("JSON report");
    // The run must exercise what threads share out or must keep in order.
    assert!(
        report["rotations"]["epochs"].as_u64() >= Some(1),
        "a midnight is crossed"
    );
    assert!(
        report["push"]["published"].as_u64() > Some(0),
        "proofs are pushed"
    );
    assert!(
        report["sessions"]["by_end"]["agreed"].as_u64() > Some(100),
        "sessions run"
    );
    for threads in ["2", "3"] {
        assert!(
            relief_json(threads) == one,
            "{threads} threads differ from one"
        );
    }
}

#[test]
fn zero_threads_is_refused_with_a_clear_error() {
    let out = common::run_cli("lab", ["--threads", "0", "--hours", "0.1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads"), "{err}");
}
