//! `meshpay ble doctor` and `meshpay node run --ble` as processes: on a
//! machine that cannot do BLE (the build machines have no adapter and no
//! system D-Bus; a default build has no BLE support) both explain why in
//! plain words, and the run stops before touching D-Bus.

use std::process::Command;

use serde_json::Value;

fn meshpay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshpay"))
        .args(args)
        .output()
        .expect("meshpay runs")
}

#[test]
fn doctor_reports_every_check_and_its_verdict_agrees_with_them() {
    let out = meshpay(&["ble", "doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let checks = report["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for expected in [
        "BLE support in this binary",
        "system D-Bus",
        "BlueZ (bluetoothd)",
        "Bluetooth adapter",
        "permission",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(report["ready"], !failed);
    assert_eq!(out.status.success(), !failed);
    for c in checks.iter().filter(|c| c["status"] == "fail") {
        assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
    }
    // A build without the feature is never ready, and says so.
    if !cfg!(feature = "ble") {
        assert!(failed);
        let text = String::from_utf8(meshpay(&["ble", "doctor"]).stdout).expect("utf-8");
        assert!(text.contains("built without BLE support"), "{text}");
        assert!(text.contains("--features ble"), "{text}");
    }
}

#[test]
fn node_run_ble_fails_with_the_doctors_explanation_not_a_dbus_error() {
    let doctor: Value =
        serde_json::from_slice(&meshpay(&["ble", "doctor", "--json"]).stdout).expect("JSON");
    if doctor["ready"] == true {
        // A machine that can do BLE: nothing to explain here.
        return;
    }
    let first = doctor["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["status"] == "fail"))
        .and_then(|c| c["detail"].as_str())
        .expect("a failed check")
        .to_string();
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_str().expect("path");
    let out = meshpay(&["node", "run", "--data-dir", data, "--ble"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).expect("utf-8");
    assert!(err.contains("cannot run BLE"), "{err}");
    assert!(err.contains(&first), "{err}\nexpected: {first}");
    assert!(err.contains("meshpay ble doctor"), "{err}");
    assert!(!err.contains("org.freedesktop"), "{err}");
    assert_eq!(err.lines().count(), 1, "one plain sentence: {err}");
}
