//! The figures and the trace replay through the command line.

mod common;

use std::ffi::OsStr;

#[test]
fn plots_are_drawn_as_svg_and_png() {
    let dir = tempfile::tempdir().expect("temp dir");
    common::run_cli_ok("lab", [OsStr::new("--plots"), dir.path().as_os_str()]);
    for name in ["settlement", "detection", "payment-latency", "device-bytes"] {
        let svg = std::fs::read_to_string(dir.path().join(format!("{name}.svg"))).expect("svg");
        assert!(
            svg.contains("<svg") && svg.contains("lab (seed 1)"),
            "{name}.svg has its title"
        );
        let png = std::fs::read(dir.path().join(format!("{name}.png"))).expect("png");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
            "{name}.png"
        );
    }
}

#[test]
fn a_recorded_trace_drives_the_contacts() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Only nodes 0-1 and 1-2 ever meet, every ten seconds: a chain.
    let mut trace = String::from("time_s,a,b,kind\n");
    for t in (0..3600).step_by(10) {
        trace.push_str(&format!("{t},0,1,lan\n{t},1,2,lan\n"));
    }
    let path = dir.path().join("trace.csv");
    std::fs::write(&path, trace).expect("write trace");
    let json = dir.path().join("out.json");
    common::run_cli_ok(
        "lab",
        [
            OsStr::new("--trace"),
            path.as_os_str(),
            OsStr::new("--json"),
            json.as_os_str(),
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    // Devices 3..9 never meet anyone: they hold only their own receipts.
    let devices = report["devices"].as_array().expect("devices");
    for d in &devices[3..] {
        assert_eq!(
            d["sync_bytes_sent"], 0,
            "device {} synced without a contact",
            d["device"]
        );
    }
    assert!(
        devices[1]["sync_bytes_sent"].as_u64().unwrap_or(0) > 0,
        "the chain synced"
    );

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "5,0,99,ble\n").expect("write");
    let out = common::run_cli("lab", [OsStr::new("--trace"), bad.as_os_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("device 99"), "{err}");
}
