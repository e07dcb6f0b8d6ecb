//! Nodes on the libp2p mesh over loopback TCP and QUIC: a payment between
//! two of them, and the ledger reaching a third by sync.

use std::time::Duration;

use libp2p::Multiaddr;
use meshpay_node::mesh::{Mesh, MeshConfig, MeshHandle, MeshPayment};
use meshpay_node::node::Node;
use meshpay_proto::prelude::*;

fn now() -> Timestamp {
    meshpay_node::mesh::wall_clock()
}

fn allowance(issuer: &SecretKey, wallet: PublicKey) -> Allowance {
    Allowance::sign(
        AllowanceTerms {
            id: AllowanceId([7; 16]),
            wallet,
            amount: 10_000,
            currency: Currency::new("EUR").expect("code"),
            issued_at: now().minus(60),
            expires_at: now().plus(86_400),
            caps: Caps {
                max_per_payment: 5_000,
                max_payments: 50,
            },
            tier: 1,
            restriction: None,
            issuer: issuer.public(),
        },
        issuer,
    )
}

async fn start(
    dir: &std::path::Path,
    name: &str,
    key: SecretKey,
    trust: &TrustStore,
    peers: Vec<Multiaddr>,
    listen: &str,
) -> (MeshHandle, Multiaddr, tokio::task::JoinHandle<Node>) {
    let node =
        Node::open(name, &dir.join(format!("{name}.redb")), key, trust.clone()).expect("node");
    let config = MeshConfig {
        listen: vec![listen.parse().expect("addr")],
        peers,
        mdns: false,
        sync_interval: Duration::from_millis(300),
        ..MeshConfig::default()
    };
    let (handle, task) = Mesh::spawn(node, config).expect("mesh");
    let addr = handle
        .dial_address(Duration::from_secs(20))
        .await
        .expect("status")
        .expect("listening");
    (handle, addr, task)
}

const TCP: &str = "/ip4/127.0.0.1/tcp/0";
const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_over_loopback_tcp_and_the_ledger_reaching_a_third_node() {
    payment_and_convergence(TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_over_loopback_quic_and_the_ledger_reaching_a_third_node() {
    payment_and_convergence(QUIC).await;
}

/// Three nodes, each listening only on `listen`: a pays b, and the header
/// reaches c through b.
async fn payment_and_convergence(listen: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let issuer = SecretKey::from_seed(&[1; 32]);
    let trust = TrustStore::new(issuer.public());
    let payer_key = SecretKey::from_seed(&[2; 32]);

    // The payer's allowance is loaded before it goes offline.
    {
        let mut n = Node::open(
            "payer",
            &dir.path().join("payer.redb"),
            payer_key.clone(),
            trust.clone(),
        )
        .expect("node");
        n.add_allowance(allowance(&issuer, payer_key.public()))
            .expect("allowance");
    }
    let (c, c_addr, c_task) = start(
        dir.path(),
        "c",
        SecretKey::from_seed(&[4; 32]),
        &trust,
        vec![],
        listen,
    )
    .await;
    let (b, b_addr, b_task) = start(
        dir.path(),
        "b",
        SecretKey::from_seed(&[3; 32]),
        &trust,
        vec![c_addr],
        listen,
    )
    .await;
    let (a, _, a_task) = start(dir.path(), "payer", payer_key, &trust, vec![b_addr], listen).await;

    let invoice = b
        .request(
            450,
            Currency::new("EUR").expect("code"),
            Some("coffee".into()),
        )
        .await
        .expect("invoice");
    let outcome = a.pay(invoice.clone(), b.peer_id).await.expect("pay");
    assert!(matches!(outcome, MeshPayment::Paid(_)), "{outcome:?}");

    // Paying the same invoice again is refused: it is paid.
    let again = a.pay(invoice, b.peer_id).await.expect("pay");
    assert!(matches!(again, MeshPayment::Refused(_)), "{again:?}");

    // Sync carries the header from b to c (a and c never met).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb, sc) = (
            a.status().await.expect("a"),
            b.status().await.expect("b"),
            c.status().await.expect("c"),
        );
        if sa.ledger_digest == sb.ledger_digest
            && sb.ledger_digest == sc.ledger_digest
            && sc.ledger_entries >= 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: {sa:?} {sb:?} {sc:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for h in [&a, &b, &c] {
        h.stop().await;
    }
    let (a_node, b_node, _) = (
        a_task.await.expect("a"),
        b_task.await.expect("b"),
        c_task.await.expect("c"),
    );
    assert_eq!(a_node.receipts().expect("a receipts").len(), 1);
    assert_eq!(b_node.receipts().expect("b receipts").len(), 1);
}

/// A double spend caught at one payee reaches the other nodes by gossip,
/// long before the next periodic sync (set to a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_caught_at_a_payee_is_gossiped_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let issuer = SecretKey::from_seed(&[1; 32]);
    let trust = TrustStore::new(issuer.public());
    let wallet = SecretKey::from_seed(&[2; 32]);
    let a = allowance(&issuer, wallet.public());
    let slow = Duration::from_secs(60);
    let spawn = |name: &str, key: SecretKey, peers: Vec<Multiaddr>, with_allowance: bool| {
        let mut node = Node::open(
            name,
            &dir.path().join(format!("{name}.redb")),
            key,
            trust.clone(),
        )
        .expect("node");
        if with_allowance {
            node.add_allowance(a.clone()).expect("allowance");
        }
        let config = MeshConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            peers,
            mdns: false,
            sync_interval: slow,
            ..MeshConfig::default()
        };
        Mesh::spawn(node, config).expect("mesh").0
    };
    async fn addr(h: &MeshHandle) -> Multiaddr {
        h.dial_address(Duration::from_secs(20))
            .await
            .expect("status")
            .expect("listening")
    }
    let b = spawn("b", SecretKey::from_seed(&[3; 32]), vec![], false);
    let b_addr = addr(&b).await;
    let c = spawn(
        "c",
        SecretKey::from_seed(&[4; 32]),
        vec![b_addr.clone()],
        false,
    );
    let d = spawn(
        "d",
        SecretKey::from_seed(&[5; 32]),
        vec![b_addr.clone()],
        false,
    );
    let payer = spawn("payer", wallet.clone(), vec![b_addr.clone()], true);
    let clone = spawn("clone", wallet, vec![b_addr], true);
    for h in [&c, &d, &payer, &clone] {
        addr(h).await;
    }
    // Let gossipsub learn its peers' subscriptions.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let eur = Currency::new("EUR").expect("code");
    let inv = b.request(4_000, eur, None).await.expect("invoice");
    assert!(matches!(
        payer.pay(inv, b.peer_id).await.expect("pay"),
        MeshPayment::Paid(_)
    ));
    // The clone spends sequence 1 again, at the same payee: caught there.
    let inv = b.request(4_000, eur, None).await.expect("invoice");
    let r = clone.pay(inv, b.peer_id).await.expect("pay");
    assert!(matches!(r, MeshPayment::Refused(_)), "{r:?}");
    let t = tokio::time::Instant::now();
    loop {
        let (sc, sd) = (c.status().await.expect("c"), d.status().await.expect("d"));
        if sc.proofs > 0 && sd.proofs > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "proof not gossiped: {sc:?} {sd:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(t.elapsed() < slow);
}
