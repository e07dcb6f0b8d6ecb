//! `meshpay settlement serve` as a real process on loopback: hostile HTTP
//! gets 4xx and stores nothing, and a service killed with SIGKILL during
//! batch ingestion settles nothing twice and loses nothing. Each test runs
//! on redb, then on PostgreSQL when MESHPAY_TEST_POSTGRES holds a URL
//! (`bash .ci/postgres.sh` prints one; CI sets it).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshpay_proto::prelude::*;
use meshpay_proto::wallet_request::{WalletAction, WalletRequest, WalletRequestTerms};
use serde_json::{Value, json};

const TOKEN: &str = "operator-secret-token";

/// Where the service keeps its data.
#[derive(Clone)]
enum Backend {
    Redb,
    /// URL and schema.
    Postgres(String, &'static str),
}

/// redb, and PostgreSQL in `schema` (emptied first) if a server is given.
fn backends(schema: &'static str) -> Vec<Backend> {
    let mut out = vec![Backend::Redb];
    match std::env::var("MESHPAY_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .expect("drop");
            out.push(Backend::Postgres(url, schema));
        }
        _ => eprintln!(
            "PostgreSQL half SKIPPED: set MESHPAY_TEST_POSTGRES (bash .ci/postgres.sh prints a URL)"
        ),
    }
    out
}

/// The service process, killed when the test ends.
struct Served {
    child: Child,
    addr: String,
    backend: Backend,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, backend: &Backend) -> Served {
    let addr_file = dir.join("settlement.addr");
    let _ = std::fs::remove_file(&addr_file);
    let issuer_key = dir.join("issuer.key");
    if !issuer_key.exists() {
        std::fs::write(&issuer_key, hex::encode([1u8; 32])).expect("key");
        std::fs::write(dir.join("token"), TOKEN).expect("token");
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("service.log"))
        .expect("log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshpay"));
    command.args(["settlement", "serve", "--max-payments", "5000"]);
    if let Backend::Postgres(url, schema) = backend {
        command.args(["--database", url, "--database-schema", schema]);
    }
    let mut served = Served {
        backend: backend.clone(),
        child: command
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir)
            .arg("--issuer-key")
            .arg(&issuer_key)
            .arg("--operator-token-file")
            .arg(dir.join("token"))
            .env_remove("MESHPAY_DATABASE")
            .env_remove("MESHPAY_DATABASE_SCHEMA")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("service starts"),
        addr: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.is_empty()
        {
            served.addr = a.trim().to_string();
            return served;
        }
        assert!(Instant::now() < deadline, "the service did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One raw HTTP/1.1 request; the status and the body as text. Status 0
/// when the service is gone (killed), so that callers can tell.
fn raw(addr: &str, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() {
        return (0, String::new());
    }
    // The server may answer (413) and close before the whole body is read.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn call(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (code, text) = raw(addr, method, path, "", body.as_bytes());
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn deposit(addr: &str, wallet: &SecretKey, amount: u64, reference: &str) -> (u16, Value) {
    let body =
        json!({"wallet": wallet.public().to_string(), "amount": amount, "reference": reference})
            .to_string();
    let (code, text) = raw(
        addr,
        "POST",
        "/v1/deposits",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
        body.as_bytes(),
    );
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn request_hex(wallet: &SecretKey, nonce: u8, amount: u64, max_payments: u32) -> String {
    let req = WalletRequest::sign(
        WalletRequestTerms {
            wallet: wallet.public(),
            issuer: SecretKey::from_seed(&[1; 32]).public(),
            nonce: Nonce([nonce; 16]),
            at: meshpay_node::mesh::wall_clock(),
            action: WalletAction::Issue {
                amount,
                currency: Currency::new("EUR").expect("code"),
                valid_secs: 86_400,
                caps: Caps {
                    max_per_payment: amount.min(1_000),
                    max_payments,
                },
            },
        },
        wallet,
    );
    hex::encode(req.encode())
}

fn issue(addr: &str, wallet: &SecretKey, nonce: u8, amount: u64, max_payments: u32) -> Allowance {
    let (code, v) = call(
        addr,
        "POST",
        "/v1/allowances",
        Some(json!({"request": request_hex(wallet, nonce, amount, max_payments)})),
    );
    assert_eq!(code, 200, "{v}");
    let bytes = hex::decode(v["allowance"].as_str().expect("hex")).expect("hex");
    Allowance::decode(&bytes).expect("allowance")
}

fn receipts(
    payer: &SecretKey,
    payee: &SecretKey,
    a: &Allowance,
    n: u32,
    amount: u64,
) -> Vec<Receipt> {
    (1..=n)
        .map(|seq| {
            let mut nonce = [0u8; 16];
            nonce[..4].copy_from_slice(&seq.to_le_bytes());
            let body = TransferBody {
                payee: payee.public().into(),
                nonce: Nonce(nonce),
                payer_time: meshpay_node::mesh::wall_clock(),
            };
            let t = Transfer::sign(a.id, seq, u64::from(seq) * amount, amount, body, payer);
            Receipt::acknowledge(t, payee)
        })
        .collect()
}

fn balance(addr: &str, wallet: &SecretKey) -> i64 {
    let (code, v) = call(
        addr,
        "GET",
        &format!("/v1/accounts/{}", wallet.public()),
        None,
    );
    assert_eq!(code, 200, "{v}");
    v["balance"].as_i64().expect("balance")
}

#[test]
fn hostile_http_gets_4xx_and_stores_nothing() {
    for backend in backends("test_hostile_http") {
        hostile(&backend);
    }
}

fn hostile(backend: &Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let served = serve(dir.path(), backend);
    let addr = served.addr.as_str();
    let (alice, bob) = (
        SecretKey::from_seed(&[2; 32]),
        SecretKey::from_seed(&[3; 32]),
    );

    // The OpenAPI document is served.
    let (code, doc) = call(addr, "GET", "/v1/openapi.json", None);
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.0.3");

    // Deposits need the operator's token.
    let body =
        json!({"wallet": alice.public().to_string(), "amount": 5_000, "reference": "till-0"})
            .to_string();
    let (code, _) = raw(addr, "POST", "/v1/deposits", "", body.as_bytes());
    assert_eq!(code, 401);
    let (code, _) = raw(
        addr,
        "POST",
        "/v1/deposits",
        "Authorization: Bearer guess\r\n",
        body.as_bytes(),
    );
    assert_eq!(code, 401);
    assert_eq!(balance(addr, &alice), 0);
    let (code, first) = deposit(addr, &alice, 5_000, "till-1");
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["repeated"], false);
    // A retry under the same reference credits nothing more.
    let (code, retry) = deposit(addr, &alice, 5_000, "till-1");
    assert_eq!(
        (code, &retry["repeated"], &retry["balance"]),
        (200, &json!(true), &json!(5_000))
    );
    let (code, clash) = deposit(addr, &alice, 6_000, "till-1");
    assert_eq!(code, 400, "{clash}");
    assert_eq!(balance(addr, &alice), 5_000);
    let a = issue(addr, &alice, 1, 4_000, 100);
    assert_eq!(balance(addr, &alice), 1_000);

    // Malformed, unknown fields, wrong types, bad hex, bad objects.
    for (path, body) in [
        ("/v1/receipts", &b"{not json"[..]),
        ("/v1/receipts", br#"{"receipts": ["00"], "extra": 1}"#),
        ("/v1/receipts", br#"{"receipts": "abc"}"#),
        ("/v1/receipts", br#"{"receipts": ["zz"]}"#),
        ("/v1/receipts", br#"{"receipts": ["01ff00"]}"#),
        ("/v1/allowances", br#"{"request": "0102"}"#),
        ("/v1/lost", br#"{}"#),
        ("/v1/deposits", br#"{"wallet": "x", "amount": 1}"#),
    ] {
        let (code, text) = raw(
            addr,
            "POST",
            path,
            &format!("Authorization: Bearer {TOKEN}\r\n"),
            body,
        );
        assert!((400..500).contains(&code), "{path} {body:?}: {code} {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()) || code == 422 || code == 415,
            "{path}: {text}"
        );
    }
    let (code, _) = call(addr, "GET", "/v1/accounts/nothex", None);
    assert_eq!(code, 400);

    // Oversized: more than 1 MiB, and more than 1,000 receipts.
    let huge = vec![b' '; 2 << 20];
    let (code, _) = raw(addr, "POST", "/v1/receipts", "", &huge);
    assert_eq!(code, 413);
    let one = hex::encode(receipts(&alice, &bob, &a, 1, 10)[0].encode());
    let (code, v) = call(
        addr,
        "POST",
        "/v1/receipts",
        Some(json!({"receipts": vec![one; 1_001]})),
    );
    assert_eq!(code, 400, "{v}");

    // Forged: a receipt whose payee signature is not the payee's.
    let mut forged = receipts(&alice, &bob, &a, 1, 10).remove(0);
    forged.payee_signature = receipts(&alice, &alice, &a, 1, 10)[0].payee_signature;
    let (code, v) = call(
        addr,
        "POST",
        "/v1/receipts",
        Some(json!({"receipts": [hex::encode(forged.encode())]})),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["receipts"][0]["outcome"]["Refused"], "BadSignature",
        "{v}"
    );
    assert_eq!(balance(addr, &bob), 0);

    // Sealed to the service: a genuine one settles; a damaged seal is
    // reported as unopened and settles nothing.
    let issuer = SecretKey::from_seed(&[1; 32]).public();
    let mut r = receipts(&alice, &bob, &a, 1, 10);
    let good = meshpay_proto::sealed::seal(&r.remove(0), &issuer, [5; 32]).expect("seal");
    let mut damaged = good.clone();
    damaged.sealed[0] ^= 1;
    let (code, v) = call(
        addr,
        "POST",
        "/v1/receipts",
        Some(json!({"sealed": [hex::encode(damaged.encode())]})),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["unopened"], json!([0]), "{v}");
    assert_eq!(balance(addr, &bob), 0);
    let (code, v) = call(
        addr,
        "POST",
        "/v1/receipts",
        Some(json!({"sealed": [hex::encode(good.encode())]})),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["receipts"][0]["outcome"], "Settled", "{v}");
    assert_eq!(balance(addr, &bob), 10);

    // Replayed: the same signed wallet request twice gets the same
    // allowance and escrows once; another request under its nonce is
    // refused.
    let again = request_hex(&alice, 9, 100, 10);
    let post = |request: &str| {
        call(
            addr,
            "POST",
            "/v1/allowances",
            Some(json!({ "request": request })),
        )
    };
    let (code, first) = post(&again);
    assert_eq!(code, 200);
    let (code, second) = post(&again);
    assert_eq!(code, 200);
    assert_eq!(first["allowance"], second["allowance"]);
    let (code, v) = post(&request_hex(&alice, 9, 200, 10));
    assert_eq!(code, 400);
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("replay")),
        "{v}"
    );
    assert_eq!(balance(addr, &alice), 900);

    // A flood from one address is slowed down with 429.
    let mut limited = false;
    for _ in 0..400 {
        let (code, _) = call(addr, "GET", "/v1/revocations", None);
        if code == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "no 429 after 400 quick requests");
}

/// Submits `batches` until every one is answered, restarting the service
/// whenever it is gone. Returns how many times it restarted.
fn submit_all(dir: &Path, served: &mut Served, batches: &[Value]) -> usize {
    let mut restarts = 0;
    for b in batches {
        loop {
            let (code, _) = raw(
                &served.addr,
                "POST",
                "/v1/receipts",
                "",
                b.to_string().as_bytes(),
            );
            if code == 200 {
                break;
            }
            // Gone (killed): start it again on the same database.
            let _ = served.child.wait();
            let backend = served.backend.clone();
            *served = serve(dir, &backend);
            restarts += 1;
        }
    }
    restarts
}

#[test]
fn a_service_killed_during_ingestion_settles_nothing_twice_and_loses_nothing() {
    for backend in backends("test_crash") {
        crash(&backend);
    }
}

fn crash(backend: &Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let mut served = serve(dir.path(), backend);
    let (alice, bob) = (
        SecretKey::from_seed(&[2; 32]),
        SecretKey::from_seed(&[3; 32]),
    );
    assert_eq!(deposit(&served.addr, &alice, 100_000, "till-1").0, 200);
    let a = issue(&served.addr, &alice, 1, 100_000, 5_000);
    let all = receipts(&alice, &bob, &a, 3_000, 10);
    let batches: Vec<Value> = all
        .chunks(500)
        .map(|c| json!({"receipts": c.iter().map(|r| hex::encode(r.encode())).collect::<Vec<_>>()}))
        .collect();

    // A killer thread sends SIGKILL at staggered moments while the batches
    // go in; each time, the submitter restarts the service and resubmits.
    let pid_file = dir.path().join("pid");
    let mut kills = 0;
    for round in 0..4u64 {
        std::fs::write(&pid_file, served.child.id().to_string()).expect("pid");
        let pid = served.child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(40 + round * 70));
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .is_ok()
        });
        submit_all(dir.path(), &mut served, &batches);
        if killer.join().unwrap_or(false) {
            kills += 1;
        }
        // Whatever happened, every receipt is in, once.
        submit_all(dir.path(), &mut served, &batches);
        assert_eq!(balance(&served.addr, &bob), 30_000, "round {round}");
        assert_eq!(balance(&served.addr, &alice), 0);
    }
    assert!(kills >= 1, "the service was never killed");
    // One credit line per receipt on bob's statement, none twice.
    let (code, v) = call(
        &served.addr,
        "GET",
        &format!("/v1/statements/{}", bob.public()),
        None,
    );
    assert_eq!(code, 200);
    let credits = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["Movement"]["kind"] == "Credit")
        .count();
    assert_eq!(credits, 3_000);
    // Acknowledgements cover every receipt.
    let mut since = 0;
    let mut acked = std::collections::BTreeSet::new();
    loop {
        let (_, v) = call(
            &served.addr,
            "GET",
            &format!("/v1/acks?since={since}"),
            None,
        );
        let list = v["acks"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            break;
        }
        for hex_ack in &list {
            let ack =
                SettlementAck::decode(&hex::decode(hex_ack.as_str().expect("hex")).expect("hex"))
                    .expect("ack");
            assert!(ack.verify_by(&SecretKey::from_seed(&[1; 32]).public()));
            acked.extend(ack.outcomes.keys().copied());
        }
        since = v["last"].as_u64().expect("last");
    }
    assert_eq!(acked.len(), 3_000);
}
