//! `meshpay node run --ble`: both roles on this machine's adapter, and
//! one exchange thread that owns the node and syncs the ledger over each
//! link the roles open, one link at a time.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use meshpay_proto::prelude::Millis;
use meshpay_proto::sync::SyncConfig;

use super::advert::{AdvertFlags, Advertisement};
use super::framing::FramingConfig;
use super::peripheral::Peripheral;
use super::policy::{ConnectionPolicy, OwnState, PolicyConfig};
use super::{ChannelPort, FramedLink, central, short_id};
use crate::exchange::{self, Side, SyncSide};
use crate::node::{Node, NodeError};

/// Link time one sync over BLE may take.
const SYNC_LIMIT_MS: u64 = 120_000;

/// Why the BLE runtime failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BleError {
    /// The central role (btleplug) failed.
    #[error("bluetooth (central): {0}")]
    Central(#[from] btleplug::Error),
    /// The peripheral role (BlueZ through bluer) failed.
    #[error("bluetooth (BlueZ): {0}")]
    Peripheral(#[from] bluer::Error),
    /// No adapter.
    #[error("no Bluetooth adapter")]
    NoAdapter,
    /// The peer lacks the meshpay service or one of its characteristics.
    #[error("the peer has no complete meshpay GATT service")]
    NoService,
    /// The peer speaks another framing version.
    #[error("the peer speaks framing version {0}")]
    Version(u8),
    /// A lock was poisoned by a panicking task.
    #[error("internal state poisoned")]
    Poisoned,
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The async runtime could not start.
    #[error("runtime: {0}")]
    Io(#[from] std::io::Error),
}

/// A connection opened by either role, ready for an exchange.
#[derive(Debug)]
pub struct IncomingLink {
    /// The peer, for logs (short id or Bluetooth address).
    pub peer: String,
    /// Its short id when known (the central role read its advertisement).
    pub node: Option<[u8; 4]>,
    /// The packets.
    pub port: ChannelPort,
    /// The ATT MTU.
    pub mtu: u16,
}

fn own_state(node: &Node) -> OwnState {
    let ledger = node.ledger();
    let mut digest = [0u8; 4];
    digest.copy_from_slice(&ledger.digest().as_bytes()[..4]);
    OwnState {
        node: short_id(&node.public_key()),
        digest,
        urgent: !ledger.proofs().is_empty(),
        paying: false,
    }
}

fn advert(own: &OwnState) -> Advertisement {
    Advertisement {
        node: own.node,
        digest: own.digest,
        flags: AdvertFlags {
            urgent: own.urgent,
            ..AdvertFlags::default()
        },
        tx_power: 0,
    }
}

/// Runs until the process is interrupted.
pub fn run(mut node: Node, policy: PolicyConfig) -> Result<(), BleError> {
    let runtime = tokio::runtime::Runtime::new()?;
    let own = Arc::new(Mutex::new(own_state(&node)));
    let policy = Arc::new(Mutex::new(ConnectionPolicy::new(policy)));
    let (links_tx, links_rx) = mpsc::channel();
    let first = own_state(&node);
    let mut peripheral = runtime.block_on(Peripheral::start(advert(&first), links_tx.clone()))?;
    let adapter = runtime.block_on(central::adapter())?;
    {
        let (own, policy) = (own.clone(), policy.clone());
        runtime.spawn(async move {
            if let Err(e) = central::scan(adapter, own, policy, links_tx).await {
                tracing::error!(error = %e, "BLE scanning stopped");
            }
        });
    }
    eprintln!(
        "ble: node {} advertising, ledger digest {}; scanning",
        hex::encode(first.node),
        hex::encode(first.digest)
    );
    let started = Instant::now();
    while let Ok(link) = links_rx.recv() {
        let mut framed = FramedLink::new(link.port, FramingConfig::with_mtu(link.mtu));
        let mut side = SyncSide::new(&node, SyncConfig::default(), Millis(0));
        let result = exchange::drive(
            Side {
                node: &mut node,
                conversation: &mut side,
                link: &mut framed,
            },
            SYNC_LIMIT_MS,
        );
        node.persist_ledger()?;
        let stats = side.stats();
        match &result {
            Ok(_) => eprintln!(
                "ble: synced with {} at MTU {}: sent {} B, received {} B; ledger {} entries, digest {}",
                link.peer,
                link.mtu,
                stats.bytes_sent,
                stats.bytes_received,
                node.ledger().len(),
                hex::encode(&node.ledger().digest().as_bytes()[..4]),
            ),
            Err(e) => eprintln!("ble: sync with {} ended early: {e}", link.peer),
        }
        drop(framed);
        let now_ms = started.elapsed().as_millis() as u64;
        if let Some(peer) = link.node {
            policy
                .lock()
                .map_err(|_| BleError::Poisoned)?
                .closed(peer, result.is_ok(), now_ms);
        }
        let state = own_state(&node);
        *own.lock().map_err(|_| BleError::Poisoned)? = state;
        runtime.block_on(peripheral.advertise(advert(&state)))?;
    }
    Ok(())
}
