//! `meshpay demo` as a person runs it: the real binary, a real process.

use std::process::Command;

fn meshpay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshpay"))
}

#[test]
fn demo_catches_the_double_spend_and_refuses_the_culprit_everywhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = meshpay()
        .args(["demo", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("meshpay runs");
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["proof_everywhere"], true);
    assert_eq!(report["culprit_refused_everywhere"], true);
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 5);
    // Every node converged on one ledger and holds the proof.
    let digests: std::collections::BTreeSet<&str> = nodes
        .iter()
        .map(|n| n["digest"].as_str().expect("digest"))
        .collect();
    assert_eq!(digests.len(), 1, "{nodes:?}");
    assert!(nodes.iter().all(|n| n["proofs"].as_u64() >= Some(1)));
    // Both sides of the double spend were accepted offline, before the
    // partition healed: bob and carol each received two payments.
    let received = |name: &str| {
        nodes
            .iter()
            .find(|n| n["name"].as_str().is_some_and(|s| s.starts_with(name)))
            .and_then(|n| n["received"].as_u64())
    };
    assert_eq!(received("bob"), Some(2));
    assert_eq!(received("carol"), Some(2));
    // Settlement: every receipt arrived through the gateway; of the two
    // spends of the same sequence number one settled and one was refused
    // as conflicted; escrow was conserved and the rest refunded.
    let settlement = &report["settlement"];
    assert_eq!(settlement["conserved"], true);
    let receipts = settlement["receipts"].as_array().expect("receipts");
    assert_eq!(receipts.len(), 4, "{settlement}");
    let settled = receipts
        .iter()
        .filter(|r| r["outcome"] == "Settled")
        .count();
    let conflicted = receipts
        .iter()
        .filter(|r| r["outcome"] == "Refused(Conflicted)")
        .count();
    assert_eq!((settled, conflicted), (3, 1), "{settlement}");
    // 100.00 + 50.00 escrowed, 4.50 + 40.00 + 12.00 settled.
    assert_eq!(settlement["refunded"], 9_350);
    assert!(dir.path().join("settlement.redb").exists());
    // The databases stay behind for inspection.
    assert!(dir.path().join("alice.redb").exists());
}

#[test]
fn demo_prints_a_readable_summary() {
    let out = meshpay().arg("demo").output().expect("meshpay runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("double spend caught"), "{text}");
    assert!(text.contains("conflict proof at every node: yes"), "{text}");
    assert!(
        text.contains("culprit refused by every payee: yes"),
        "{text}"
    );
}

#[test]
fn unknown_commands_and_flags_are_clear_errors() {
    let out = meshpay().arg("fly").output().expect("meshpay runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
    let out = meshpay()
        .args(["demo", "--nodes", "x"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_unwritable_data_dir_is_a_clear_error() {
    let out = meshpay()
        .args(["demo", "--data-dir", "/proc/meshpay-cannot-write-here"])
        .output()
        .expect("meshpay runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
