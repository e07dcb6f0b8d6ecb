//! `meshpay node run --ble-emulated` as processes: nodes with no LAN mesh
//! between them meet in the emulated air (Unix sockets in a directory,
//! see docs/ble.md), a payer taps the nearest payee, the payment runs
//! over the emulated BLE link, receipts are durable on both sides and
//! ledgers converge; and one node runs BLE and the LAN mesh at once.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod process;

use process::{Nodes, await_status, give_allowance, json, meshpay, run, setup};

/// Starts `meshpay node run` on `dir` with `extra` arguments; waits for
/// its control API.
fn start(nodes: &mut Nodes, dir: &Path, extra: &[&str]) -> Value {
    let d = dir.display().to_string();
    let _ = std::fs::remove_file(dir.join("control.addr"));
    let log = std::fs::File::create(dir.join("node.log")).expect("log");
    let child = meshpay()
        .args(["node", "run", "--data-dir", &d, "--no-mdns"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--sync-interval", "1"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("node starts");
    nodes.0.push(child);
    await_status(dir, Some(&dir.join("node.log")))
}

fn air_args<'a>(air: &'a str, position: &'a str) -> [&'a str; 4] {
    ["--ble-emulated", air, "--ble-position", position]
}

fn history(dir: &str) -> Vec<Value> {
    json(&["history", "--json", "--data-dir", dir])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until every node's ledger has `headers` headers and one digest.
fn converge(dirs: &[&str], headers: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ledgers: Vec<Value> = dirs
            .iter()
            .map(|d| json(&["ledger", "export", "--data-dir", d]))
            .collect();
        if ledgers.iter().all(|l| {
            l["digest"] == ledgers[0]["digest"]
                && l["headers"].as_array().map(Vec::len) == Some(headers)
        }) {
            return;
        }
        let summary: Vec<(Value, usize)> = ledgers
            .iter()
            .map(|l| {
                (
                    l["digest"].clone(),
                    l["headers"].as_array().map_or(0, Vec::len),
                )
            })
            .collect();
        assert!(Instant::now() < deadline, "no convergence: {summary:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_tap_pays_the_nearest_payee_over_the_emulated_air() {
    let root = tempfile::tempdir().expect("dir");
    let (issuer_key, _, dirs) = setup(root.path(), &["payer", "near", "far"]);
    let ds: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let air = root.path().join("air").display().to_string();

    // A bad position is refused in plain words, before anything starts.
    let out = meshpay()
        .args(["node", "run", "--data-dir", &ds[0], "--ble-emulated", &air])
        .args(["--ble-position", "north"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ble-position") && err.contains("X,Y"),
        "{err}"
    );

    let mut nodes = Nodes(Vec::new());
    // The payer also records what its connections carry, as a listener
    // nearby would.
    let recording = root.path().join("air.rec");
    let mut payer_args = air_args(&air, "0,0").to_vec();
    let rec = recording.display().to_string();
    payer_args.extend(["--ble-record", &rec]);
    let payer = start(&mut nodes, &dirs[0], &payer_args);
    // Both payees are in range; "near" is 1 m away, "far" 6 m.
    let near = start(&mut nodes, &dirs[1], &air_args(&air, "1,0"));
    let far = start(&mut nodes, &dirs[2], &air_args(&air, "0,6"));
    let short = |status: &Value| status["wallet"].as_str().expect("wallet")[..8].to_string();
    give_allowance(&issuer_key, &ds[0], &payer["wallet"]);

    // No payee has an invoice yet: a tap finds nobody, and signs nothing.
    let out = meshpay()
        .args(["pay", "--nearby", "--amount", "4.50", "--data-dir", &ds[0]])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no payee nearby"), "{err}");

    // Both payees open an invoice for 4.50; the payer taps.
    let memo = "coffee and a croissant, table 7";
    run(&["request", "--data-dir", &ds[1], "4.50", "--memo", memo]);
    run(&["request", "--data-dir", &ds[2], "4.50", "--memo", "tea"]);
    // The payer hears both invoices, nearest first, at the RSSI free space
    // gives 1 m and 6 m (-40 and -56 dBm).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ble = json(&["status", "--json", "--data-dir", &ds[0]])["ble"].clone();
        let heard: Vec<(Value, Value, Value)> = ble["heard"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| (h["node"].clone(), h["rssi"].clone(), h["invoice"].clone()))
            .collect();
        let expected = vec![
            (
                Value::from(short(&near)),
                Value::from(-40),
                Value::from(true),
            ),
            (
                Value::from(short(&far)),
                Value::from(-56),
                Value::from(true),
            ),
        ];
        if heard == expected {
            break;
        }
        assert!(Instant::now() < deadline, "payer hears {heard:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let paid = json(&[
        "pay",
        "--nearby",
        "--amount",
        "4.50",
        "--json",
        "--data-dir",
        &ds[0],
    ]);
    let transfer = paid["Paid"].as_str().unwrap_or_else(|| panic!("{paid}"));

    // The air carried the exchange (the payer's wallet key travels in
    // clear in the key exchange) but not the invoice: its memo is sealed.
    let air_bytes = std::fs::read(&recording).expect("recording");
    let wallet = hex::decode(payer["wallet"].as_str().expect("wallet")).expect("hex");
    assert!(
        air_bytes.windows(32).any(|w| w == wallet),
        "nothing recorded"
    );
    assert!(!air_bytes.windows(memo.len()).any(|w| w == memo.as_bytes()));

    // The nearer payee got it, the farther one did not.
    let near = history(&ds[1]);
    assert_eq!(near.len(), 1, "{near:?}");
    assert_eq!(near[0]["role"], "received");
    assert_eq!(near[0]["transfer"], transfer);
    assert!(history(&ds[2]).is_empty());
    let payer_history = history(&ds[0]);
    assert_eq!(payer_history[0]["role"], "paid");
    assert_eq!(payer_history[0]["amount"], 450);

    // The far payee still asks 4.50, but a tap agreed at 5.00 signs
    // nothing: the payer declines an invoice it did not agree to.
    let refused = json(&[
        "pay",
        "--nearby",
        "--amount",
        "5.00",
        "--json",
        "--data-dir",
        &ds[0],
    ]);
    let why = refused["PayerRefused"]
        .as_str()
        .unwrap_or_else(|| panic!("{refused}"));
    assert!(why.contains("not the 500"), "{why}");
    assert_eq!(history(&ds[0]).len(), 1);

    // Ledgers converge over BLE alone: nobody is on a LAN mesh.
    converge(&[&ds[0], &ds[1], &ds[2]], 1);
    for d in &ds {
        let status = json(&["status", "--json", "--data-dir", d]);
        assert_eq!(status["peers"], serde_json::json!([]), "{d}: {status}");
    }

    // Durable: both parties still hold the receipt after a restart.
    drop(nodes);
    let mut nodes = Nodes(Vec::new());
    for d in &dirs[..2] {
        start(&mut nodes, d, &[]);
    }
    assert_eq!(history(&ds[0])[0]["transfer"], transfer);
    assert_eq!(history(&ds[1])[0]["transfer"], transfer);
}

#[test]
fn one_node_runs_ble_and_the_lan_mesh_at_once() {
    let root = tempfile::tempdir().expect("dir");
    let (issuer_key, _, dirs) = setup(root.path(), &["payer", "shop", "office"]);
    let ds: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let air = root.path().join("air").display().to_string();

    let mut nodes = Nodes(Vec::new());
    // The office is on the LAN only; the shop on the LAN and on BLE; the
    // payer on BLE only.
    let office = start(&mut nodes, &dirs[2], &[]);
    let office_addr = format!(
        "{}/p2p/{}",
        office["listening"][0].as_str().expect("addr"),
        office["peer_id"].as_str().expect("peer")
    );
    let mut shop_args = air_args(&air, "0.5,0").to_vec();
    shop_args.extend(["--peer", &office_addr]);
    start(&mut nodes, &dirs[1], &shop_args);
    let payer = start(&mut nodes, &dirs[0], &air_args(&air, "0,0"));
    give_allowance(&issuer_key, &ds[0], &payer["wallet"]);

    run(&["request", "--data-dir", &ds[1], "2.00"]);
    let paid = json(&[
        "pay",
        "--nearby",
        "--amount",
        "2.00",
        "--json",
        "--data-dir",
        &ds[0],
    ]);
    let transfer = paid["Paid"].as_str().unwrap_or_else(|| panic!("{paid}"));

    // The office, which has no radio, learns the payment over the LAN
    // from the shop, which learnt it over BLE.
    converge(&[&ds[0], &ds[1], &ds[2]], 1);
    let office_ledger = json(&["ledger", "export", "--data-dir", &ds[2]]);
    assert_eq!(office_ledger["headers"][0]["transfer"], transfer);
    let shop = json(&["status", "--json", "--data-dir", &ds[1]]);
    assert_eq!(shop["peers"][0], office["peer_id"]);
    assert_eq!(
        json(&["status", "--json", "--data-dir", &ds[0]])["peers"],
        serde_json::json!([])
    );
}

#[test]
fn a_tap_at_a_payee_that_just_vanished_signs_nothing() {
    let root = tempfile::tempdir().expect("dir");
    let (issuer_key, _, dirs) = setup(root.path(), &["payer", "shop"]);
    let ds: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let air = root.path().join("air").display().to_string();
    let mut nodes = Nodes(Vec::new());
    let payer = start(&mut nodes, &dirs[0], &air_args(&air, "0,0"));
    start(&mut nodes, &dirs[1], &air_args(&air, "1,0"));
    give_allowance(&issuer_key, &ds[0], &payer["wallet"]);
    run(&["request", "--data-dir", &ds[1], "3.00"]);
    // The payer hears the invoice...
    let deadline = Instant::now() + Duration::from_secs(10);
    while json(&["status", "--json", "--data-dir", &ds[0]])["ble"]["heard"][0]["invoice"] != true {
        assert!(Instant::now() < deadline, "the invoice was never heard");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...then the shop's process dies (kill -9: its sockets stay behind).
    let _ = nodes.0[1].kill();
    let _ = nodes.0[1].wait();
    let out = meshpay()
        .args(["pay", "--nearby", "--amount", "3.00", "--data-dir", &ds[0]])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was signed"), "{err}");
    assert!(history(&ds[0]).is_empty());
    // The allowance is whole: a tap once the shop is back pays in full.
    start(&mut nodes, &dirs[1], &air_args(&air, "1,0"));
    run(&["request", "--data-dir", &ds[1], "3.00"]);
    let paid = json(&[
        "pay",
        "--nearby",
        "--amount",
        "3.00",
        "--json",
        "--data-dir",
        &ds[0],
    ]);
    assert!(paid.get("Paid").is_some(), "{paid}");
    let h = history(&ds[0]);
    assert_eq!((h.len(), h[0]["seq"].clone()), (1, Value::from(1)));
}
