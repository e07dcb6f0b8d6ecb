//! Three `meshpay node run` processes on loopback, driven by the CLI as a
//! person would: an issuer signs an allowance, one node pays another over
//! the libp2p mesh, and every node's ledger converges.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn meshpay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshpay"))
}

fn run(args: &[&str]) -> String {
    let out = meshpay().args(args).output().expect("meshpay runs");
    assert!(
        out.status.success(),
        "meshpay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&run(args)).expect("JSON")
}

/// Kills the node processes when the test ends, pass or fail.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(nodes: &mut Nodes, dir: &Path, peers: &[String]) -> Value {
    let mut args = vec![
        "node".to_string(),
        "run".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
        "--no-mdns".into(),
        "--sync-interval".into(),
        "1".into(),
    ];
    for p in peers {
        args.push("--peer".into());
        args.push(p.clone());
    }
    let child = meshpay()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts");
    nodes.0.push(child);
    let d = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if dir.join("control.addr").exists() {
            let out = meshpay()
                .args(["status", "--json", "--data-dir", &d])
                .output()
                .expect("status");
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).expect("json");
                if v["listening"].as_array().is_some_and(|l| !l.is_empty()) {
                    return v;
                }
            }
        }
        assert!(Instant::now() < deadline, "node in {d} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn addr_of(status: &Value) -> String {
    format!(
        "{}/p2p/{}",
        status["listening"][0].as_str().expect("addr"),
        status["peer_id"].as_str().expect("peer")
    )
}

#[test]
fn three_nodes_pay_over_loopback_and_agree_on_the_ledger() {
    let root = tempfile::tempdir().expect("dir");
    let issuer_key = root.path().join("issuer.key");
    let issuer = run(&["issuer", "new", "--out", &issuer_key.display().to_string()]);
    let issuer = issuer.trim();
    let dirs: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| root.path().join(n))
        .collect();
    for d in &dirs {
        run(&[
            "init",
            "--data-dir",
            &d.display().to_string(),
            "--issuer",
            issuer,
            "--no-mdns",
        ]);
    }
    let ds: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();

    let mut nodes = Nodes(Vec::new());
    let c = start(&mut nodes, &dirs[2], &[]);
    let b = start(&mut nodes, &dirs[1], &[addr_of(&c)]);
    let a = start(&mut nodes, &dirs[0], &[addr_of(&b)]);

    // Online, before going offline: the issuer signs an allowance for a.
    let allowance = run(&[
        "issuer",
        "allowance",
        "--key",
        &issuer_key.display().to_string(),
        "--wallet",
        a["wallet"].as_str().expect("wallet"),
        "--amount",
        "100.00",
    ]);
    run(&["allowance", "add", "--data-dir", &ds[0], allowance.trim()]);

    // b asks for 4.50; a pays it over the mesh.
    let token = run(&["request", "--data-dir", &ds[1], "4.50", "--memo", "coffee"]);
    let paid = json(&["pay", "--json", "--data-dir", &ds[0], token.trim()]);
    assert!(paid.get("Paid").is_some(), "{paid}");
    // The same invoice again is refused.
    let again = json(&["pay", "--json", "--data-dir", &ds[0], token.trim()]);
    assert!(again.get("Refused").is_some(), "{again}");

    // Every ledger converges (c never talked to a).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let digests: Vec<Value> = ds
            .iter()
            .map(|d| json(&["status", "--json", "--data-dir", d])["ledger_digest"].clone())
            .collect();
        let c_ledger = json(&["ledger", "export", "--data-dir", &ds[2]]);
        if digests.iter().all(|d| *d == digests[0])
            && c_ledger["headers"].as_array().is_some_and(|h| h.len() == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {digests:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let a_history = json(&["history", "--json", "--data-dir", &ds[0]]);
    let b_history = json(&["history", "--json", "--data-dir", &ds[1]]);
    assert_eq!(a_history[0]["role"], "paid");
    assert_eq!(b_history[0]["role"], "received");
    assert_eq!(a_history[0]["transfer"], b_history[0]["transfer"]);
    assert_eq!(a_history[0]["amount"], 450);
}

#[test]
fn bad_input_gets_clear_errors() {
    let root = tempfile::tempdir().expect("dir");
    let d = root.path().join("n");
    let ds = d.display().to_string();
    // A garbage issuer key.
    let out = meshpay()
        .args(["init", "--data-dir", &ds, "--issuer", "zz"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("issuer"));
    // A garbage config file.
    std::fs::create_dir_all(&d).expect("dir");
    std::fs::write(d.join("config.toml"), "issuer = 5\n[[[").expect("write");
    std::fs::write(d.join("wallet.key"), "00".repeat(32)).expect("write");
    let out = meshpay()
        .args(["node", "run", "--data-dir", &ds])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // No node running: a clear message, not a hang.
    let out = meshpay()
        .args(["status", "--data-dir", &ds])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node run"));
    // Bad amounts.
    for amount in ["-1", "4.505", "abc", "0", "99999999999999999999"] {
        let out = meshpay()
            .args(["request", "--data-dir", &ds, amount])
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{amount}");
    }
    // An unwritable data dir.
    let out = meshpay()
        .args([
            "init",
            "--data-dir",
            "/proc/meshpay-no",
            "--issuer",
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
