//! Relay figure (issue #5): time from the gateway reaching the settlement
//! service to every node of a 10-node loopback mesh having pruned what
//! settled.
//!
//! `cargo bench -p meshpay-node --bench relay`
//!
//! Ten nodes in a chain n0 - n1 - ... - n9 (the longest path a mesh of ten
//! can have); n0 is the gateway. n9 pays n8 twenty times while the service
//! is down; the receipts travel to n0 by relay. Then the service starts
//! (on the port the gateway was told), and the clock runs until every
//! node's outbox is empty and nothing is carried. Acknowledgements travel
//! by sync, one hop per sync round at worst, so the bound to compare with
//! is the sync interval times the hops (9), plus the gateway's wait for its
//! next tick.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use meshpay_node::mesh::{Mesh, MeshConfig, MeshHandle, MeshPayment, wall_clock};
use meshpay_node::node::Node;
use meshpay_node::settlement::{Kv, RedbKv, Service, http};
use meshpay_proto::prelude::*;
use meshpay_proto::wallet_request::{WalletAction, WalletRequest, WalletRequestTerms};

const NODES: usize = 10;
const PAYMENTS: usize = 20;

async fn spawn(
    node: Node,
    peers: Vec<Multiaddr>,
    sync: Duration,
    gateway: Option<String>,
) -> (MeshHandle, Multiaddr) {
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        peers,
        mdns: false,
        sync_interval: sync,
        settlement: gateway,
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

/// One run; returns (time to all settled at the service, time to all
/// pruned), both from the service starting.
async fn run(sync: Duration) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("dir");
    let issuer = SecretKey::from_seed(&[1; 32]);
    let trust = TrustStore::new(issuer.public());
    let payer_key = SecretKey::from_seed(&[2; 32]);
    let now = wall_clock();

    // Online, earlier: the payer loads an allowance.
    let kv: Box<dyn Kv> = Box::new(RedbKv::open(&dir.path().join("s.redb")).expect("redb"));
    let mut service = Service::open(kv, issuer.clone(), Default::default()).expect("service");
    service
        .deposit(payer_key.public().into(), 1_000_000, "bench")
        .expect("deposit");
    let request = WalletRequest::sign(
        WalletRequestTerms {
            wallet: payer_key.public(),
            issuer: issuer.public(),
            nonce: Nonce([5; 16]),
            at: now,
            action: WalletAction::Issue {
                amount: 100_000,
                currency: Currency::new("EUR").expect("code"),
                valid_secs: 86_400,
                caps: Caps {
                    max_per_payment: 1_000,
                    max_payments: 500,
                },
            },
        },
        &payer_key,
    );
    let allowance = service
        .issue(&request, AllowanceId([3; 16]), now)
        .expect("issue");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");

    let mut handles: Vec<MeshHandle> = Vec::new();
    let mut prev: Option<Multiaddr> = None;
    for i in 0..NODES {
        let key = if i == NODES - 1 {
            payer_key.clone()
        } else {
            SecretKey::from_seed(&[10 + i as u8; 32])
        };
        let mut node = Node::open(
            &format!("n{i}"),
            &dir.path().join(format!("n{i}.redb")),
            key,
            trust.clone(),
        )
        .expect("node");
        if i == NODES - 1 {
            node.add_allowance(allowance.clone()).expect("allowance");
        }
        let gateway = (i == 0).then(|| url.clone());
        let (h, addr) = spawn(node, prev.take().into_iter().collect(), sync, gateway).await;
        handles.push(h);
        prev = Some(addr);
    }
    let (payer, payee) = (&handles[NODES - 1], &handles[NODES - 2]);
    let eur = Currency::new("EUR").expect("code");
    for _ in 0..PAYMENTS {
        let inv = payee.request(100, eur, None).await.expect("invoice");
        let r = payer.pay(inv, payee.peer_id).await.expect("pay");
        assert!(matches!(r, MeshPayment::Paid(_)), "{r:?}");
    }
    // The receipts reach the gateway while settlement is away.
    loop {
        if handles[0].status().await.expect("status").carried >= PAYMENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The service comes up.
    let start = Instant::now();
    let app = http::AppState::new(service, None);
    let _bound = http::serve(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        app,
        Duration::from_secs(3600),
    )
    .await
    .expect("serve");
    let mut settled_at = None;
    loop {
        let mut all = true;
        for h in &handles {
            let s = h.status().await.expect("status");
            if s.outbox > 0 || s.carried > 0 {
                all = false;
            }
        }
        if settled_at.is_none() && handles[0].status().await.expect("status").uplinks > 0 {
            settled_at = Some(start.elapsed());
        }
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pruned = start.elapsed();
    for h in &handles {
        h.stop().await;
    }
    (settled_at.unwrap_or(pruned), pruned)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("relay: {NODES} nodes in a chain, {PAYMENTS} receipts, gateway at one end");
    for sync in [Duration::from_millis(200), Duration::from_secs(1)] {
        let mut runs: Vec<(Duration, Duration)> =
            (0..3).map(|_| runtime.block_on(run(sync))).collect();
        runs.sort_by_key(|r| r.1);
        let (settled, pruned) = runs[1];
        let bound = sync * (NODES as u32 - 1);
        println!(
            "sync every {:>5} ms: settled at the service {:>6.0} ms, every node pruned {:>6.0} ms (median of 3); hops x interval = {:>5} ms, ratio {:.2}",
            sync.as_millis(),
            settled.as_secs_f64() * 1e3,
            pruned.as_secs_f64() * 1e3,
            bound.as_millis(),
            pruned.as_secs_f64() / bound.as_secs_f64()
        );
    }
}
