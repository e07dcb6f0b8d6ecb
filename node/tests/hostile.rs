//! A hostile peer on the mesh: garbage and truncated messages on
//! `/meshpay/1` get refusals, never a panic, and change nothing; a flood
//! is refused past the peer's rate limit and the flooder disconnected.

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, noise, tcp, yamux};
use meshpay_node::mesh::{
    Mesh, MeshConfig, MeshHandle, MeshRequest, MeshResponse, PROTOCOL, WireCodec,
};
use meshpay_node::node::Node;
use meshpay_proto::prelude::*;

/// A node on loopback that nobody else talks to, and its address.
async fn victim(dir: &std::path::Path) -> (MeshHandle, Multiaddr) {
    let trust = TrustStore::new(SecretKey::from_seed(&[1; 32]).public());
    let node = Node::open(
        "victim",
        &dir.join("v.redb"),
        SecretKey::from_seed(&[2; 32]),
        trust,
    )
    .expect("node");
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        peers: vec![],
        mdns: false,
        sync_interval: Duration::from_secs(60),
        ..MeshConfig::default()
    };
    let (victim, _task) = Mesh::spawn(node, config).expect("mesh");
    let addr: Multiaddr = victim
        .dial_address(Duration::from_secs(20))
        .await
        .expect("status")
        .expect("listening");
    (victim, addr)
}

/// A bare libp2p peer speaking `/meshpay/1`, dialing `victim`.
fn attacker(victim: &MeshHandle, addr: Multiaddr) -> Swarm<request_response::Behaviour<WireCodec>> {
    let mut attacker = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            request_response::Behaviour::<WireCodec>::new(
                [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })
        .expect("behaviour")
        .build();
    attacker.add_peer_address(victim.peer_id, addr.clone());
    attacker.dial(addr).expect("dial");
    attacker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_wire_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let (victim, addr) = victim(dir.path()).await;
    let before = victim.status().await.expect("status");
    let mut attacker = attacker(&victim, addr);

    // A valid transfer to truncate.
    let payer = SecretKey::from_seed(&[3; 32]);
    let body = TransferBody {
        payee: payer.public().into(),
        nonce: Nonce([1; 16]),
        payer_time: Timestamp(0),
    };
    let transfer = Transfer::sign(AllowanceId([1; 16]), 1, 100, 100, body, &payer);
    let full = PaymentMessage::Transfer {
        allowance: None,
        transfer,
    }
    .encode();
    let mut junk = vec![0u8; 300];
    for (i, b) in junk.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    let requests = vec![
        MeshRequest::Payment(junk.clone()),
        MeshRequest::Payment(full[..full.len() / 2].to_vec()),
        MeshRequest::Payment(Vec::new()),
        MeshRequest::Payment(
            PaymentMessage::Invoice(Invoice {
                payee: payer.public(),
                amount: 1,
                currency: Currency::new("EUR").expect("code"),
                nonce: Nonce([0; 16]),
                memo: None,
                credential: None,
            })
            .encode(),
        ),
        // Last: a sync session with garbage frames, which gets us dropped.
        MeshRequest::Sync {
            first: true,
            frames: vec![junk.clone(), vec![0x01], vec![]],
        },
    ];
    let expected = requests.len();
    let mut sent = false;
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refused < expected {
        let event = tokio::time::timeout_at(deadline, attacker.select_next_some())
            .await
            .expect("the victim answers every request");
        match event {
            SwarmEvent::ConnectionEstablished { .. } if !sent => {
                sent = true;
                for r in requests.clone() {
                    attacker.behaviour_mut().send_request(&victim.peer_id, r);
                }
            }
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => {
                assert!(matches!(response, MeshResponse::Refused(_)), "{response:?}");
                refused += 1;
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                // The victim hung up on the garbage sync before answering.
                refused += 1;
            }
            _ => {}
        }
    }
    // The victim still runs, and holds nothing new.
    let after = victim.status().await.expect("victim still answers");
    assert_eq!(after.ledger_digest, before.ledger_digest);
    assert_eq!(after.ledger_entries, 0);
    victim.stop().await;
}

/// A peer sending requests far faster than its limit: the first burst is
/// served (here: refused as garbage), the rest refused as rate limited,
/// and a peer that keeps going is disconnected. The node still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_rate_limited_then_disconnected() {
    let dir = tempfile::tempdir().expect("dir");
    let (victim, addr) = victim(dir.path()).await;
    let mut attacker = attacker(&victim, addr);
    let limits = meshpay_node::mesh::PeerLimits::default();
    let flood = usize::try_from(limits.request_burst).expect("small") * 3;
    let (mut served, mut limited, mut failed) = (0, 0, 0);
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(closed && served + limited + failed == flood) {
        let event = tokio::time::timeout_at(deadline, attacker.select_next_some())
            .await
            .expect("the flood ends in answers and a disconnect");
        match event {
            SwarmEvent::ConnectionEstablished { .. } => {
                for _ in 0..flood {
                    attacker
                        .behaviour_mut()
                        .send_request(&victim.peer_id, MeshRequest::Payment(vec![0xff]));
                }
            }
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => match response {
                MeshResponse::Refused(why) if why == "rate limited" => limited += 1,
                MeshResponse::Refused(_) => served += 1,
                other => panic!("unexpected answer {other:?}"),
            },
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => failed += 1,
            SwarmEvent::ConnectionClosed { .. } => closed = true,
            _ => {}
        }
    }
    // The victim served no more than the burst and what refilled while
    // the flood lasted (answers in flight when it hung up are lost to the
    // flooder), and cut the flooder off within its strikes.
    let burst = usize::try_from(limits.request_burst).expect("small");
    assert!(served > 0 && served <= burst + 100, "served {served}");
    // Every other request was refused as rate limited or lost at the
    // hang-up (the loop above waits for all of them): how the two split
    // depends on scheduling, as the refusals race the disconnect.
    assert!(failed >= 1, "the flooder was not disconnected");
    assert!(closed);
    let status = victim.status().await.expect("the victim still serves");
    assert_eq!(status.ledger_entries, 0);
    victim.stop().await;
}
