//! End to end with real processes: a settlement service, and three nodes
//! in a chain a - b - c where only c can reach the service. a loads an
//! allowance online, pays b offline; the receipts travel b -> c, c uploads
//! them, every receipt settles, and the acknowledgement travels back so
//! that every node's outbox empties and c drops what it carried.

mod process;

use std::path::Path;
use std::time::{Duration, Instant};

use process::{Nodes as Procs, run, status, wait_file};

use meshpay_proto::prelude::*;
use serde_json::{Value, json};

#[test]
fn receipts_reach_settlement_through_one_gateway_and_every_node_prunes() {
    let root = tempfile::tempdir().expect("dir");
    let root = root.path();
    let mut procs = Procs(Vec::new());

    // The settlement service.
    let service_dir = root.join("settlement");
    std::fs::create_dir_all(&service_dir).expect("dir");
    let issuer = SecretKey::from_seed(&[1; 32]);
    std::fs::write(service_dir.join("issuer.key"), hex::encode([1u8; 32])).expect("key");
    std::fs::write(service_dir.join("token"), "t0ken").expect("token");
    let sd = service_dir.display().to_string();
    procs.spawn(
        &[
            "settlement",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &sd,
            "--issuer-key",
            &format!("{sd}/issuer.key"),
            "--operator-token-file",
            &format!("{sd}/token"),
        ]
        .map(String::from),
        &service_dir.join("log"),
    );
    let service = wait_file(&service_dir.join("settlement.addr"));
    let url = format!("http://{service}");

    // Three nodes; a's wallet is funded and loads an allowance online.
    let issuer_hex = issuer.public().to_string();
    let dirs: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| root.join(n).display().to_string())
        .collect();
    let mut wallets = Vec::new();
    for d in &dirs {
        let out = run(&[
            "init",
            "--data-dir",
            d,
            "--issuer",
            &issuer_hex,
            "--no-mdns",
        ]);
        wallets.push(
            out.lines()
                .find_map(|l| l.strip_prefix("wallet "))
                .expect("wallet")
                .to_string(),
        );
    }
    let (code, v) = raw_post(
        &service,
        "/v1/deposits",
        "t0ken",
        &json!({"wallet": wallets[0], "amount": 10_000, "reference": "till-1"}),
    );
    assert_eq!(code, 200, "{v}");
    let loaded = run(&[
        "allowance",
        "load",
        "--json",
        "--data-dir",
        &dirs[0],
        "--settlement",
        &url,
        "--amount",
        "60.00",
        "--max-per-payment",
        "30.00",
    ]);
    let loaded: Value = serde_json::from_str(&loaded).expect("json");
    assert_eq!(loaded["amount"], 6_000);

    // c is the gateway; b only sees c; a only sees b.
    let node = |procs: &mut Procs, i: usize, peers: &[String], gateway: bool| {
        let mut args: Vec<String> = [
            "node",
            "run",
            "--data-dir",
            &dirs[i],
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--sync-interval",
            "1",
        ]
        .map(String::from)
        .to_vec();
        for p in peers {
            args.extend(["--peer".to_string(), p.clone()]);
        }
        if gateway {
            args.extend(["--settlement".to_string(), url.clone()]);
        }
        procs.spawn(&args, &root.join(format!("{i}.log")));
        wait_file(&Path::new(&dirs[i]).join("control.addr"));
        let s = status(&dirs[i]);
        format!(
            "{}/p2p/{}",
            s["listening"][0].as_str().expect("addr"),
            s["peer_id"].as_str().expect("id")
        )
    };
    let c = node(&mut procs, 2, &[], true);
    let b = node(&mut procs, 1, &[c], false);
    node(&mut procs, 0, &[b], false);

    // Offline payments a -> b.
    for amount in ["12.00", "8.50"] {
        let token = run(&["request", "--data-dir", &dirs[1], amount]);
        let paid: Value = serde_json::from_str(&run(&[
            "pay",
            "--json",
            "--data-dir",
            &dirs[0],
            token.trim(),
        ]))
        .expect("json");
        assert!(paid["Paid"].is_string(), "{paid}");
    }

    // Everything settles through c, and every outbox empties.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, acct) = raw_get(&service, &format!("/v1/accounts/{}", wallets[1]));
        let statuses: Vec<Value> = dirs.iter().map(|d| status(d)).collect();
        let pruned = statuses
            .iter()
            .all(|s| s["outbox"] == 0 && s["carried"] == 0);
        if acct["balance"] == 2_050 && pruned {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled and pruned: b's balance {acct}, nodes {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // a's own history is kept; the gateway counted its trips.
    let history: Value =
        serde_json::from_str(&run(&["history", "--json", "--data-dir", &dirs[0]])).expect("json");
    assert_eq!(history.as_array().map(Vec::len), Some(2));
    assert!(status(&dirs[2])["uplinks"].as_u64() >= Some(1));
    let (_, acct) = raw_get(&service, &format!("/v1/accounts/{}", wallets[0]));
    assert_eq!(acct["balance"], 4_000, "a's account after escrowing 60.00");
}

fn raw(addr: &str, request: String) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn raw_get(addr: &str, path: &str) -> (u16, Value) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

fn raw_post(addr: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    raw(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}
