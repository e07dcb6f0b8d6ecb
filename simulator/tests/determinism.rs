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
