//! Node figures over real loopback TCP (issue #4):
//!
//! - payment latency from invoice to stored receipt between two nodes,
//!   p50 and p99 (goal: p50 <= 5 ms, p99 <= 20 ms);
//! - time for a conflict proof to reach all of 10 nodes after a partition
//!   heals (goal: under 1 s);
//! - resident memory of an idle node, and of a node holding 100,000 headers.
//!
//! `cargo bench -p meshpay-node --bench mesh` (memory cases run in child
//! processes of this binary).

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use meshpay_node::mesh::{Mesh, MeshConfig, MeshHandle, MeshPayment, wall_clock};
use meshpay_node::node::Node;
use meshpay_proto::ledger::Entry;
use meshpay_proto::prelude::*;

fn allowance(issuer: &SecretKey, wallet: PublicKey, id: u8) -> Allowance {
    let now = wall_clock();
    Allowance::sign(
        AllowanceTerms {
            id: AllowanceId([id; 16]),
            wallet,
            amount: 10_000_000,
            currency: Currency::new("EUR").expect("code"),
            issued_at: now.minus(60),
            expires_at: now.plus(86_400),
            caps: Caps {
                max_per_payment: 10_000,
                max_payments: 100_000,
            },
            tier: 1,
            restriction: None,
            issuer: issuer.public(),
        },
        issuer,
    )
}

/// The default sync interval of a node (`MeshConfig::default()`), used for
/// the latency figure; the proof-spread figure syncs every 200 ms.
const DEFAULT_SYNC: Duration = Duration::from_secs(10);
const FAST_SYNC: Duration = Duration::from_millis(200);

async fn spawn(
    dir: &std::path::Path,
    name: &str,
    key: SecretKey,
    trust: &TrustStore,
    peers: Vec<Multiaddr>,
) -> (MeshHandle, Multiaddr) {
    let node =
        Node::open(name, &dir.join(format!("{name}.redb")), key, trust.clone()).expect("node");
    spawn_node(node, peers, DEFAULT_SYNC).await
}

async fn spawn_node(
    node: Node,
    peers: Vec<Multiaddr>,
    sync_interval: Duration,
) -> (MeshHandle, Multiaddr) {
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        peers,
        mdns: false,
        sync_interval,
        ..MeshConfig::default()
    };
    let (handle, _task) = Mesh::spawn(node, config).expect("mesh");
    let addr = handle
        .dial_address(Duration::from_secs(20))
        .await
        .expect("status")
        .expect("listening");
    (handle, addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn latency(n: usize) {
    let dir = tempfile::tempdir().expect("dir");
    let issuer = SecretKey::from_seed(&[1; 32]);
    let trust = TrustStore::new(issuer.public());
    let payer_key = SecretKey::from_seed(&[2; 32]);
    let mut payer = Node::open(
        "payer",
        &dir.path().join("payer.redb"),
        payer_key.clone(),
        trust.clone(),
    )
    .expect("node");
    payer
        .add_allowance(allowance(&issuer, payer_key.public(), 1))
        .expect("allowance");
    let (payee, payee_addr) = spawn(
        dir.path(),
        "payee",
        SecretKey::from_seed(&[3; 32]),
        &trust,
        vec![],
    )
    .await;
    let (payer, _) = spawn_node(payer, vec![payee_addr], DEFAULT_SYNC).await;
    let eur = Currency::new("EUR").expect("code");
    // Warm up: connection, first sync.
    for _ in 0..10 {
        let inv = payee.request(100, eur, None).await.expect("invoice");
        payer.pay(inv, payee.peer_id).await.expect("pay");
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let inv = payee.request(100, eur, None).await.expect("invoice");
        let r = payer.pay(inv, payee.peer_id).await.expect("pay");
        times.push(t.elapsed());
        assert!(matches!(r, MeshPayment::Paid(_)), "{r:?}");
    }
    times.sort();
    println!(
        "payment latency, invoice to stored receipt, {n} payments over loopback TCP (sync every 10 s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal p50 <= 5 ms, p99 <= 20 ms)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().expect("some").as_secs_f64() * 1e3,
    );
}

async fn proof_spread(runs: usize) {
    let mut results = Vec::new();
    for run in 0..runs {
        let dir = tempfile::tempdir().expect("dir");
        let issuer = SecretKey::from_seed(&[1; 32]);
        let trust = TrustStore::new(issuer.public());
        let wallet = SecretKey::from_seed(&[9; 32]);
        let a = allowance(&issuer, wallet.public(), 7);
        // Two halves of five, each a chain; the cloned wallet pays in both.
        let mut halves: Vec<Vec<(MeshHandle, Multiaddr)>> = Vec::new();
        for half in 0..2 {
            let mut nodes: Vec<(MeshHandle, Multiaddr)> = Vec::new();
            for i in 0..5 {
                let name = format!("h{half}n{i}");
                let key = if i == 0 {
                    wallet.clone()
                } else {
                    SecretKey::from_seed(&[10 + 5 * half as u8 + i as u8; 32])
                };
                let mut node = Node::open(
                    &name,
                    &dir.path().join(format!("{name}.redb")),
                    key,
                    trust.clone(),
                )
                .expect("node");
                if i == 0 {
                    node.add_allowance(a.clone()).expect("allowance");
                }
                let peers = nodes
                    .last()
                    .map(|(_, addr)| vec![addr.clone()])
                    .unwrap_or_default();
                nodes.push(spawn_node(node, peers, FAST_SYNC).await);
            }
            halves.push(nodes);
        }
        let eur = Currency::new("EUR").expect("code");
        for half in &halves {
            let inv = half[1].0.request(5_000, eur, None).await.expect("invoice");
            let r = half[0].0.pay(inv, half[1].0.peer_id).await.expect("pay");
            assert!(matches!(r, MeshPayment::Paid(_)), "run {run}: {r:?}");
        }
        // Let each half settle, then heal: the two chains' ends meet.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let t = Instant::now();
        halves[0][4]
            .0
            .dial(halves[1][4].1.clone())
            .await
            .expect("dial");
        let all: Vec<&MeshHandle> = halves.iter().flatten().map(|(h, _)| h).collect();
        loop {
            let mut everywhere = true;
            for h in &all {
                if h.status().await.expect("status").proofs == 0 {
                    everywhere = false;
                    break;
                }
            }
            if everywhere {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "proof did not spread"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        results.push(t.elapsed());
        for h in all {
            h.stop().await;
        }
    }
    results.sort();
    println!(
        "conflict proof to all of 10 nodes after the partition heals (two chains of 5, joined at their ends; sync interval 200 ms): median {:.0} ms, worst {:.0} ms over {runs} runs (goal < 1 s)",
        percentile(&results, 0.5).as_secs_f64() * 1e3,
        results.last().expect("some").as_secs_f64() * 1e3,
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn memory_case(headers: usize) {
    let dir = tempfile::tempdir().expect("dir");
    let issuer = SecretKey::from_seed(&[1; 32]);
    let trust = TrustStore::new(issuer.public());
    let mut node = Node::open(
        "n",
        &dir.path().join("n.redb"),
        SecretKey::from_seed(&[2; 32]),
        trust.clone(),
    )
    .expect("node");
    let per = 100;
    let wallets: Vec<(SecretKey, Allowance)> = (0..headers.div_ceil(per))
        .map(|w| {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&(w as u32).to_le_bytes());
            let k = SecretKey::from_seed(&seed);
            let mut a = allowance(&issuer, k.public(), 0);
            a.terms.id = AllowanceId({
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&(w as u32).to_le_bytes());
                id
            });
            (k.clone(), Allowance::sign(a.terms, &issuer))
        })
        .collect();
    for (w, (k, a)) in wallets.iter().enumerate() {
        node.ledger_mut()
            .insert(Entry::Allowance(a.clone()))
            .expect("allowance");
        for s in 0..per.min(headers - w * per) {
            let seq = s as u32 + 1;
            let body = TransferBody {
                payee: k.public().into(),
                nonce: Nonce([s as u8; 16]),
                payer_time: Timestamp(0),
            };
            let t = Transfer::sign(a.id, seq, u64::from(seq) * 100, 100, body, k);
            node.ledger_mut()
                .insert(Entry::Header(t.signed_header()))
                .expect("header");
        }
    }
    node.persist_ledger().expect("persist");
    drop(wallets);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (h, _) = spawn_node(node, vec![], DEFAULT_SYNC).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = h.status().await.expect("status");
        println!(
            "node RSS with {headers} headers in its ledger ({} entries): {:.1} MB",
            s.ledger_entries,
            rss_kib() as f64 / 1024.0
        );
    });
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-case") {
        memory_case(args[i + 1].parse().expect("headers"));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(latency(if quick { 100 } else { 1_000 }));
    runtime.block_on(proof_spread(if quick { 2 } else { 10 }));
    let exe = std::env::current_exe().expect("own path");
    for headers in [0usize, 100_000] {
        let out = std::process::Command::new(&exe)
            .args(["--memory-case", &headers.to_string()])
            .output()
            .expect("child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
