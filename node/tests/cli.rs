//! Three `meshpay node run` processes on loopback, driven by the CLI as a
//! person would: an issuer signs an allowance, one node pays another over
//! the libp2p mesh, and every node's ledger converges.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod process;

use process::{
    Nodes, await_status, give_allowance, json, meshpay, run, setup, signed_allowance, status,
};

fn start(nodes: &mut Nodes, dir: &Path, peers: &[String]) -> Value {
    start_on(nodes, dir, peers, "/ip4/127.0.0.1/tcp/0")
}

/// A free loopback port, to restart a node where its peers expect it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_on(nodes: &mut Nodes, dir: &Path, peers: &[String], listen: &str) -> Value {
    nodes.0.push(spawn_on(dir, peers, listen));
    await_status(dir, None)
}

fn stop(nodes: &mut Nodes, index: usize) {
    nodes.kill(index);
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
    let (issuer_key, _, dirs) = setup(root.path(), &["a", "b", "c"]);
    let ds: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();

    let mut nodes = Nodes(Vec::new());
    let c = start(&mut nodes, &dirs[2], &[]);
    let b = start(&mut nodes, &dirs[1], &[addr_of(&c)]);
    let a = start(&mut nodes, &dirs[0], &[addr_of(&b)]);

    // Online, before going offline: the issuer signs an allowance for a.
    give_allowance(&issuer_key, &ds[0], &a["wallet"]);

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

#[test]
fn a_double_spend_across_a_partition_is_caught_when_it_heals() {
    // MESHPAY_KEEP_LOGS=1 keeps the nodes' data and logs for a post-mortem.
    let root = tempfile::tempdir().expect("dir");
    let (root_path, _cleanup) = if std::env::var_os("MESHPAY_KEEP_LOGS").is_some() {
        let p = root.keep();
        eprintln!("nodes' data and logs kept under {}", p.display());
        (p, None)
    } else {
        (root.path().to_path_buf(), Some(root))
    };
    let names = ["alice", "bob", "carol", "dave", "mallory"];
    let (issuer_key, _, dirs) = setup(&root_path, &names);
    let ds: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    // Mallory is a clone of alice's phone: the same wallet key, its own
    // database (restored before alice's first payment).
    std::fs::remove_file(dirs[4].join("wallet.key")).expect("rm");
    std::fs::copy(dirs[0].join("wallet.key"), dirs[4].join("wallet.key")).expect("copy key");

    let mut nodes = Nodes(Vec::new());
    // Two halves: {alice, bob} and {carol, dave, mallory}.
    let bob_listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let bob = start_on(&mut nodes, &dirs[1], &[], &bob_listen); // index 0
    let alice = start(&mut nodes, &dirs[0], &[addr_of(&bob)]); // 1
    let carol = start(&mut nodes, &dirs[2], &[]); // 2
    let dave = start(&mut nodes, &dirs[3], &[addr_of(&carol)]); // 3
    start(&mut nodes, &dirs[4], &[addr_of(&carol), addr_of(&dave)]); // 4
    let allowance = signed_allowance(&issuer_key, &alice["wallet"], &[]);
    run(&["allowance", "add", "--data-dir", &ds[0], &allowance]);
    run(&["allowance", "add", "--data-dir", &ds[4], &allowance]);

    // The same money, spent on both sides.
    let token = run(&["request", "--data-dir", &ds[1], "40.00"]);
    let paid = json(&["pay", "--json", "--data-dir", &ds[0], token.trim()]);
    assert!(paid.get("Paid").is_some(), "alice at bob: {paid}");
    let token = run(&["request", "--data-dir", &ds[2], "40.00"]);
    let paid = json(&["pay", "--json", "--data-dir", &ds[4], token.trim()]);
    assert!(paid.get("Paid").is_some(), "mallory at carol: {paid}");
    for d in &ds {
        let l = json(&["ledger", "export", "--data-dir", d]);
        assert_eq!(
            l["conflicted"].as_array().map(Vec::len),
            Some(0),
            "{d}: {l}"
        );
    }

    // The partition heals: bob restarts, where alice expects him, with
    // carol as a peer.
    stop(&mut nodes, 0);
    start_on(&mut nodes, &dirs[1], &[addr_of(&carol)], &bob_listen);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let caught = ds.iter().all(|d| {
            json(&["ledger", "export", "--data-dir", d])["conflicted"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        });
        if caught {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proof did not reach every node"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The culprit's next payment is refused by every payee, each tried
    // by a device of the culprit's in its reach.
    for (payer, payee) in [(0, 1), (4, 2), (4, 3)] {
        let token = run(&["request", "--data-dir", &ds[payee], "1.00"]);
        let r = json(&["pay", "--json", "--data-dir", &ds[payer], token.trim()]);
        assert_eq!(
            r["Refused"], "no-known-conflict",
            "{} paying {}: {r}",
            names[payer], names[payee]
        );
    }

    // The control API names the proof (a fork: one sequence number signed
    // twice) and the peers each node is connected to.
    for d in &dirs {
        let addr = std::fs::read_to_string(d.join("control.addr")).expect("control.addr");
        let (code, v) =
            meshpay_node::control::call(addr.trim(), "GET", "/v1/conflicts", None).expect("call");
        assert_eq!(code, 200);
        let proofs = v["proofs"].as_array().expect("proofs");
        assert!(
            proofs.iter().any(|p| p["kind"] == "fork"),
            "{}: {v}",
            d.display()
        );
        let (code, v) =
            meshpay_node::control::call(addr.trim(), "GET", "/v1/peers", None).expect("call");
        assert_eq!(code, 200);
        assert!(
            v["connected"].as_array().is_some_and(|c| !c.is_empty()),
            "{v}"
        );
    }
}

/// Runs `meshpay` and returns its JSON answer, or `None` if it failed (a
/// node killed mid-call).
fn try_json(args: &[&str]) -> Option<Value> {
    let out = meshpay().args(args).output().ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn try_run(args: &[&str]) -> Option<String> {
    let out = meshpay().args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_reuses_no_sequence_number() {
    use meshpay_node::store::{Role, Store};
    use meshpay_proto::prelude::*;

    let root = tempfile::tempdir().expect("dir");
    let (issuer_key, _, dirs) = setup(root.path(), &["payer", "payee"]);
    let (payer_dir, payee_dir) = (dirs[0].clone(), dirs[1].clone());
    let (pd, qd) = (
        payer_dir.display().to_string(),
        payee_dir.display().to_string(),
    );
    let payee_listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut nodes = Nodes(Vec::new());
    let payee = start_on(&mut nodes, &payee_dir, &[], &payee_listen); // 0
    let payee_addr = addr_of(&payee);
    let payer = start(&mut nodes, &payer_dir, std::slice::from_ref(&payee_addr)); // 1
    let allowance = signed_allowance(
        &issuer_key,
        &payer["wallet"],
        &["--amount", "10000.00", "--max-payments", "1000"],
    );
    run(&["allowance", "add", "--data-dir", &pd, &allowance]);

    // A small deterministic generator for the kill schedule.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut paid, mut kills) = (0, 0);
    for _ in 0..220 {
        let Some(token) = try_run(&["request", "--data-dir", &qd, "1.00"]) else {
            continue;
        };
        // Every ~10th payment, kill -9 the payer or the payee at a random
        // moment while the payment runs.
        let victim = (next() % 10 == 0).then(|| (next() % 2) as usize);
        let killer = victim.map(|v| {
            // Child::kill sends SIGKILL: the process gets no chance to
            // clean up, as with kill -9.
            let mut child = nodes.0.remove(v);
            let delay = Duration::from_micros(next() % 10_000);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let _ = child.kill();
                let _ = child.wait();
            })
        });
        if try_json(&["pay", "--json", "--data-dir", &pd, token.trim()])
            .is_some_and(|r| r.get("Paid").is_some())
        {
            paid += 1;
        }
        if let (Some(v), Some(k)) = (victim, killer) {
            k.join().expect("killer");
            kills += 1;
            // Restart it; the payee where the payer expects it.
            let _ = std::fs::remove_file(
                if v == 0 { &payee_dir } else { &payer_dir }.join("control.addr"),
            );
            let restarted = if v == 0 {
                spawn_on(&payee_dir, &[], &payee_listen)
            } else {
                spawn_on(
                    &payer_dir,
                    std::slice::from_ref(&payee_addr),
                    "/ip4/127.0.0.1/tcp/0",
                )
            };
            nodes.0.insert(v, restarted);
            wait_ready(if v == 0 { &payee_dir } else { &payer_dir });
        }
    }
    eprintln!("{paid} payments, {kills} kill -9s");
    assert!(kills >= 10, "only {kills} kills");
    assert!(paid >= 100, "only {paid} payments went through");
    for n in &mut nodes.0 {
        let _ = n.kill();
        let _ = n.wait();
    }

    // Both databases open, and nothing the protocol promised is lost.
    let payer_store = Store::open(&payer_dir.join("node.redb")).expect("payer database opens");
    let payee_store = Store::open(&payee_dir.join("node.redb")).expect("payee database opens");
    let payer_receipts = payer_store.receipts().expect("payer receipts");
    let payee_receipts = payee_store.receipts().expect("payee receipts");
    // Every acknowledgement the payer holds, the payee stored first.
    for (r, _) in &payer_receipts {
        assert!(
            payee_receipts.iter().any(|(p, _)| p == r),
            "acknowledged receipt lost"
        );
    }
    // No sequence number signed twice with different bodies.
    let mut by_seq: std::collections::BTreeMap<u32, TransferId> = Default::default();
    for (r, _) in payer_receipts.iter().chain(&payee_receipts) {
        let seq = r.transfer.header().seq;
        let id = r.transfer.id();
        assert_eq!(
            *by_seq.entry(seq).or_insert(id),
            id,
            "sequence {seq} used twice"
        );
    }
    // The payer's counter covers everything it ever signed.
    let allowance_id = payee_receipts[0].0.transfer.header().allowance;
    let (spend, _) = payer_store.spend(&allowance_id).expect("spend");
    let max_seq = by_seq.keys().max().copied().unwrap_or(0);
    assert!(spend.next_seq > max_seq);
    let received: u64 = payee_receipts
        .iter()
        .filter(|(_, role)| *role == Role::Received)
        .map(|(r, _)| r.transfer.header().amount)
        .sum();
    assert!(spend.cumulative >= received);
}

fn spawn_on(dir: &Path, peers: &[String], listen: &str) -> Child {
    let mut args = vec![
        "node".to_string(),
        "run".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        listen.into(),
        "--no-mdns".into(),
        "--sync-interval".into(),
        "1".into(),
    ];
    for p in peers {
        args.push("--peer".into());
        args.push(p.clone());
    }
    // The node's log stays beside its data, for reading after a failure.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .expect("log file");
    meshpay()
        .args(&args)
        .env("RUST_LOG", "meshpay_node=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("node starts")
}

fn wait_ready(dir: &Path) {
    let d = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while try_json(&["status", "--json", "--data-dir", &d]).is_none() {
        if Instant::now() >= deadline {
            // The end of the node's log says why.
            let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "node in {d} did not restart; its log ends:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// `init --encrypt` seals the wallet key: `node run` refuses to start
/// without the passphrase or with a wrong one, and starts with the right
/// one as the same wallet.
#[test]
fn a_sealed_wallet_key_needs_its_passphrase() {
    let root = tempfile::tempdir().expect("dir");
    let d = root.path().join("sealed");
    let ds = d.display().to_string();
    let issuer = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
    let out = meshpay()
        .args(["init", "--encrypt", "--data-dir", &ds, "--issuer", issuer])
        .env("MESHPAY_PASSPHRASE", "sea shanty 42")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let wallet = printed
        .lines()
        .find_map(|l| l.strip_prefix("wallet "))
        .expect("wallet line")
        .to_string();
    let key = std::fs::read_to_string(d.join("wallet.key")).expect("key file");
    assert!(key.starts_with("meshpay-key-v1:argon2id:"), "{key}");

    let refused = |env: Option<&str>| {
        let mut cmd = meshpay();
        cmd.args(["node", "run", "--no-mdns", "--data-dir", &ds])
            .env_remove("MESHPAY_PASSPHRASE")
            .stdin(Stdio::null());
        if let Some(p) = env {
            cmd.env("MESHPAY_PASSPHRASE", p);
        }
        let out = cmd.output().expect("runs");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(None);
    assert!(err.contains("MESHPAY_PASSPHRASE"), "{err}");
    let err = refused(Some("sea shanty 43"));
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let file = root.path().join("pass");
    std::fs::write(&file, "sea shanty 42\n").expect("write");
    let mut nodes = Nodes(vec![]);
    nodes.0.push(
        meshpay()
            .args(["node", "run", "--no-mdns", "--data-dir", &ds])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .arg("--passphrase-file")
            .arg(&file)
            .env_remove("MESHPAY_PASSPHRASE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts"),
    );
    wait_ready(&d);
    let status = json(&["status", "--json", "--data-dir", &ds]);
    assert_eq!(status["wallet"].as_str(), Some(wallet.as_str()));
}

/// A stored ledger that no longer loads (a damaged disk): `node run`
/// refuses with a clear error, `ledger reset` drops it and keeps the
/// rest (a second reset has nothing to do), and the node starts again with
/// its receipt, is paid again, and agrees with its peer. (Why the reset
/// changes the ledger id: `store.rs`,
/// `a_reset_ledger_keeps_the_receipts_and_writes_under_a_new_id`.)
#[test]
fn a_ledger_that_no_longer_loads_is_reset_and_the_node_rejoins() {
    let root = tempfile::tempdir().expect("dir");
    let (issuer_key, _, dirs) = setup(root.path(), &["a", "b"]);
    let ds: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut nodes = Nodes(Vec::new());
    let a = start(&mut nodes, &dirs[0], &[]);
    start(&mut nodes, &dirs[1], &[addr_of(&a)]);
    give_allowance(&issuer_key, &ds[0], &a["wallet"]);
    let pay = |amount: &str| {
        let token = run(&["request", "--data-dir", &ds[1], amount]);
        let paid = json(&["pay", "--json", "--data-dir", &ds[0], token.trim()]);
        assert!(paid.get("Paid").is_some(), "{paid}");
    };
    let headers = |d: &str| {
        json(&["ledger", "export", "--data-dir", d])["headers"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let agree_on = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let digests: Vec<Value> = ds
                .iter()
                .map(|d| status(d)["ledger_digest"].clone())
                .collect();
            if digests[0] == digests[1] && ds.iter().all(|d| headers(d) == n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no agreement on {n} headers: {digests:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    pay("4.50");
    agree_on(1);

    // b stops; its stored ledger is damaged.
    stop(&mut nodes, 1);
    meshpay_node::store::Store::open(&dirs[1].join("node.redb"))
        .expect("store")
        .save_ledger(b"not an automerge document", 0, &[])
        .expect("damage");
    let out = meshpay()
        .args(["node", "run", "--no-mdns", "--data-dir", &ds[1]])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("stored ledger does not load"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let reset = json(&["ledger", "reset", "--json", "--data-dir", &ds[1]]);
    assert_eq!(reset["reset"], true, "{reset}");
    assert_eq!(reset["dropped_pieces"], 1, "{reset}");
    assert!(reset["load_error"].is_string(), "{reset}");
    // Nothing left to reset: refused without --force.
    let again = meshpay()
        .args(["ledger", "reset", "--data-dir", &ds[1]])
        .output()
        .expect("runs");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing was changed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // b rejoins with its receipt, is paid again, and both agree.
    start(&mut nodes, &dirs[1], &[addr_of(&a)]);
    let history = json(&["history", "--json", "--data-dir", &ds[1]]);
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    pay("2.25");
    agree_on(2);
}
