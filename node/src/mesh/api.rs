//! How callers drive a running mesh node: its configuration, the
//! handle, and the values it reports.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use meshpay_proto::prelude::*;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::node::NodeError;

/// How a mesh node runs.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0` picks a port).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (with `/p2p/<peer id>` or without).
    pub peers: Vec<Multiaddr>,
    /// Discover peers on the LAN by mDNS.
    pub mdns: bool,
    /// Sync with every connected peer this often.
    pub sync_interval: Duration,
    /// What one peer may ask of this node.
    pub limits: super::limits::PeerLimits,
    /// The settlement service (`http://host:port`): when set, this node is
    /// a gateway and uploads the receipts it holds whenever the service is
    /// reachable, then brings back acknowledgements and revocations.
    pub settlement: Option<String>,
    /// The Bluetooth LE transport running beside the mesh, if any: nearby
    /// payments ([`MeshHandle::pay_nearby`]) go to it.
    pub ble: Option<crate::ble::runtime::BleHandle>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            listen: Vec::new(),
            peers: Vec::new(),
            mdns: true,
            sync_interval: Duration::from_secs(10),
            limits: super::limits::PeerLimits::default(),
            settlement: None,
            ble: None,
        }
    }
}

/// Why the mesh failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// libp2p could not be set up (a bad address, a port in use).
    #[error("network: {0}")]
    Network(String),
    /// The mesh task is gone.
    #[error("the mesh has stopped")]
    Stopped,
    /// A payment could not reach the payee.
    #[error("payment to {peer} failed: {reason}")]
    Unreachable {
        /// The payee's peer id.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
    /// A payment over Bluetooth LE failed, or this node runs no BLE.
    #[error("bluetooth: {0}")]
    Ble(String),
}

/// A node's state as the control API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// This node's libp2p peer id.
    pub peer_id: String,
    /// Where it listens.
    pub listening: Vec<String>,
    /// Connected peers.
    pub peers: Vec<String>,
    /// The wallet key (hex).
    pub wallet: String,
    /// Ledger entries held.
    pub ledger_entries: usize,
    /// Ledger digest (hex).
    pub ledger_digest: String,
    /// Conflict proofs held.
    pub proofs: usize,
    /// Sync sessions completed.
    pub syncs_completed: u64,
    /// Receipts held that settlement has not acknowledged (own and
    /// carried): what this node would upload or hand to a gateway.
    pub outbox: usize,
    /// Receipts carried for others.
    pub carried: usize,
    /// Successful uploads to settlement (gateways only).
    pub uplinks: u64,
    /// What the Bluetooth LE transport sees, if the node runs one.
    pub ble: Option<crate::ble::runtime::BleStatus>,
}

/// One receipt this node is party to.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// The transfer id (hex).
    pub transfer: String,
    /// "paid" or "received".
    pub role: &'static str,
    /// Amount in minor units.
    pub amount: u64,
    /// The allowance (hex) and sequence number.
    pub allowance: String,
    /// Sequence number.
    pub seq: u32,
    /// The payee's wallet key (hex).
    pub payee: String,
}

/// The partial ledger, as `ledger export` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerExport {
    /// Epoch.
    pub epoch: u64,
    /// Digest (hex).
    pub digest: String,
    /// Every transfer header.
    pub headers: Vec<ExportedHeader>,
    /// Allowances with a conflict proof against them (hex ids).
    pub conflicted: Vec<String>,
    /// Every conflict proof held.
    pub proofs: Vec<ExportedProof>,
}

/// One conflict proof in an export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedProof {
    /// The culprit's allowance (hex).
    pub allowance: String,
    /// "fork", "rewind" or "over-limit".
    pub kind: &'static str,
    /// The sequence numbers of the headers it holds.
    pub seqs: Vec<u32>,
    /// The proof's hash (hex).
    pub hash: String,
    /// The proof, canonically encoded (hex), for anyone to check.
    pub encoded: String,
}

/// One header in an export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedHeader {
    /// Allowance id (hex).
    pub allowance: String,
    /// Sequence number.
    pub seq: u32,
    /// Cumulative amount.
    pub cumulative: u64,
    /// Amount.
    pub amount: u64,
    /// Transfer id (hex).
    pub transfer: String,
}

/// How a payment over the mesh ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MeshPayment {
    /// Paid: the transfer id (hex).
    Paid(String),
    /// The payee refused: the rule's name.
    Refused(String),
    /// The payer refused before signing: why.
    PayerRefused(String),
    /// No acknowledgement; the sequence number stays used.
    Uncertain,
}

pub(super) enum Command {
    Request {
        amount: u64,
        currency: Currency,
        memo: Option<String>,
        reply: oneshot::Sender<Result<Invoice, MeshError>>,
    },
    Pay {
        invoice: Invoice,
        peer: PeerId,
        reply: oneshot::Sender<Result<MeshPayment, MeshError>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    History {
        reply: oneshot::Sender<Result<Vec<HistoryEntry>, MeshError>>,
    },
    Ledger {
        reply: oneshot::Sender<LedgerExport>,
    },
    AddAllowance {
        allowance: Box<Allowance>,
        reply: oneshot::Sender<Result<(), MeshError>>,
    },
    /// Pays the nearest payee advertising an invoice over BLE.
    PayNearby {
        amount: u64,
        currency: Currency,
        reply: oneshot::Sender<Result<MeshPayment, MeshError>>,
    },
    /// Runs work of a transport beside the mesh (BLE) on the node.
    WithNode(NodeJob),
    SyncNow,
    Dial(Multiaddr),
    Disconnect(PeerId),
    /// Starts (Some) or stops (None) being a gateway.
    SetSettlement(Option<String>),
    /// What a gateway's trip to settlement brought back.
    Uplink(Result<super::relay::Uplink, String>),
    Stop,
}

/// Work a transport beside the mesh runs on the mesh's node.
pub(super) type NodeJob = Box<dyn FnOnce(&mut super::NodeAccess<'_>) + Send>;

/// Drives a running mesh node.
#[derive(Clone)]
pub struct MeshHandle {
    pub(super) tx: mpsc::Sender<Command>,
    /// The node's peer id.
    pub peer_id: PeerId,
}

impl MeshHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MeshError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Opens an invoice on this node (it is the payee).
    pub async fn request(
        &self,
        amount: u64,
        currency: Currency,
        memo: Option<String>,
    ) -> Result<Invoice, MeshError> {
        self.call(|reply| Command::Request {
            amount,
            currency,
            memo,
            reply,
        })
        .await?
    }

    /// Pays `invoice` to the payee node `peer` (this node is the payer).
    pub async fn pay(&self, invoice: Invoice, peer: PeerId) -> Result<MeshPayment, MeshError> {
        self.call(|reply| Command::Pay {
            invoice,
            peer,
            reply,
        })
        .await?
    }

    /// Pays `amount` to the nearest payee that advertises an invoice over
    /// Bluetooth LE (a tap); only an invoice for exactly this amount and
    /// currency is signed.
    pub async fn pay_nearby(
        &self,
        amount: u64,
        currency: Currency,
    ) -> Result<MeshPayment, MeshError> {
        self.call(|reply| Command::PayNearby {
            amount,
            currency,
            reply,
        })
        .await?
    }

    /// Runs `job` on the mesh's node, between two of the mesh's events,
    /// and returns what it returns: how a transport beside the mesh (BLE)
    /// runs its exchanges against the one node. The mesh waits while the
    /// job runs, so jobs are bounded (an exchange has a time limit).
    /// Blocks: call it from a thread outside the async runtime.
    pub fn with_node<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut super::NodeAccess<'_>) -> T + Send + 'static,
    ) -> Result<T, MeshError> {
        let (reply, rx) = oneshot::channel();
        let job: NodeJob = Box::new(move |access| {
            let _ = reply.send(job(access));
        });
        self.tx
            .blocking_send(Command::WithNode(job))
            .map_err(|_| MeshError::Stopped)?;
        rx.blocking_recv().map_err(|_| MeshError::Stopped)
    }

    /// The node's state.
    pub async fn status(&self) -> Result<Status, MeshError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// The address peers dial to reach this node (its first listening
    /// address, with `/p2p/<peer id>`), once it listens; `None` if it does
    /// not within `patience`.
    pub async fn dial_address(
        &self,
        patience: std::time::Duration,
    ) -> Result<Option<libp2p::Multiaddr>, MeshError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let s = self.status().await?;
            if let Some(a) = s.listening.first()
                && let Ok(addr) = format!("{a}/p2p/{}", s.peer_id).parse()
            {
                return Ok(Some(addr));
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Receipts this node is party to.
    pub async fn history(&self) -> Result<Vec<HistoryEntry>, MeshError> {
        self.call(|reply| Command::History { reply }).await?
    }

    /// The partial ledger.
    pub async fn ledger(&self) -> Result<LedgerExport, MeshError> {
        self.call(|reply| Command::Ledger { reply }).await
    }

    /// Takes an allowance loaded online for this node's wallet.
    pub async fn add_allowance(&self, allowance: Allowance) -> Result<(), MeshError> {
        self.call(|reply| Command::AddAllowance {
            allowance: Box::new(allowance),
            reply,
        })
        .await?
    }

    /// Closes every connection to `peer` and refuses new ones until
    /// [`MeshHandle::dial`] dials it again (a network split, in the demo
    /// and tests).
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), MeshError> {
        self.tx
            .send(Command::Disconnect(peer))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Makes this node a gateway to the settlement service at `url`
    /// (`http://host:port`), or stops it being one (`None`): a ship's
    /// satellite link coming and going.
    pub async fn set_settlement(&self, url: Option<String>) -> Result<(), MeshError> {
        self.tx
            .send(Command::SetSettlement(url))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Dials a peer (and remembers its address).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), MeshError> {
        self.tx
            .send(Command::Dial(addr))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Starts a sync with every connected peer now.
    pub async fn sync_now(&self) -> Result<(), MeshError> {
        self.tx
            .send(Command::SyncNow)
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Stops the mesh task.
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }
}
