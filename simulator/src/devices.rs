//! The simulated devices: ledger devices (merchants, carriers, gateways)
//! that run the payee machine and sync sessions over a real
//! [`PartialLedger`], and wallets that only run the payer machine.

use std::collections::BTreeMap;

use meshpay_proto::ledger::{AutomergeReplica, PartialLedger, Replica};
use meshpay_proto::prelude::*;

use crate::world::{DeviceId, SimTime};

/// How a ledger device behaves in sync sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Behaviour {
    /// Follows the protocol.
    Honest,
    /// Corrupts every frame it sends.
    Forger,
    /// Sends its opening messages, then falls silent.
    Staller,
}

/// What a device spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    /// Radio bytes sent, resends included.
    pub bytes_sent: u64,
    /// Radio bytes received.
    pub bytes_received: u64,
    /// Of `bytes_sent`, bytes of sync sessions (gossip).
    pub sync_bytes_sent: u64,
    /// Of `bytes_sent`, bytes of the LAN push of urgent entries (gossip
    /// too): copies published and forwarded.
    pub push_bytes_sent: u64,
    /// Time with a link open (connection set-up, sessions, payments),
    /// microseconds: the energy proxy.
    pub radio_on_us: u64,
}

/// A device with a partial ledger.
pub struct LedgerDevice {
    /// Its wallet key (payee identity).
    pub key: SecretKey,
    /// Its ledger.
    pub ledger: PartialLedger,
    /// Remembered sync state per peer, with the ledger epoch it was made in.
    pub peers: BTreeMap<DeviceId, (u64, <AutomergeReplica as Replica>::PeerState)>,
    /// This ledger's urgent digest when the last session with each peer
    /// ended agreed (as the node keeps it): sessions leave out the
    /// `Urgent` message while it is unchanged.
    pub agreed_urgent: BTreeMap<DeviceId, meshpay_proto::crypto::Hash>,
    /// Whether it takes payments.
    pub accepts_payments: bool,
    /// Whether it uploads to settlement in uplink windows.
    pub gateway: bool,
    /// How it behaves in sync.
    pub behaviour: Behaviour,
    /// Its issuer credential as an approved payee (for restricted value).
    pub credential: Option<Box<PayeeCredential>>,
    /// What it spent.
    pub cost: Cost,
    /// Receipts it holds as payee.
    pub receipts: u64,
    /// When it first held a proof against each allowance.
    pub proof_since: BTreeMap<AllowanceId, SimTime>,
    /// Entries its ledger's rotations dropped so far.
    pub dropped: u64,
    digest: Option<Hash>,
}

impl LedgerDevice {
    /// A new device.
    pub fn new(key: SecretKey, actor: &[u8], trust: TrustStore) -> Self {
        LedgerDevice {
            key,
            ledger: PartialLedger::new(actor, trust),
            peers: BTreeMap::new(),
            agreed_urgent: BTreeMap::new(),
            accepts_payments: false,
            gateway: false,
            behaviour: Behaviour::Honest,
            credential: None,
            cost: Cost::default(),
            receipts: 0,
            proof_since: BTreeMap::new(),
            dropped: 0,
            digest: None,
        }
    }

    /// The ledger digest, cached until [`LedgerDevice::touch`].
    pub fn digest(&mut self) -> Hash {
        *self.digest.get_or_insert_with(|| self.ledger.digest())
    }

    /// The ledger may have changed.
    pub fn touch(&mut self) {
        self.digest = None;
    }

    /// Records that the device holds a proof against `allowance` from `t`.
    pub fn hold_proof(&mut self, allowance: AllowanceId, t: SimTime) {
        self.proof_since.entry(allowance).or_insert(t);
    }
}

/// A device that only pays.
#[derive(Debug, Clone)]
pub struct Wallet {
    /// Its key (shared with its clone, if cloned).
    pub key: SecretKey,
    /// Its allowance (shared with its clone).
    pub allowance: Allowance,
    /// Its durable counter.
    pub spend: SpendState,
    /// The counter before the last payment (what a double spender rewinds
    /// to).
    pub before_last: SpendState,
    /// Home site.
    pub home: u32,
    /// Site of the last payment.
    pub last_site: Option<u32>,
    /// Rewinds its counter when it pays at a new site.
    pub double_spender: bool,
    /// A copy of another wallet (same key and allowance).
    pub clone_of: Option<u32>,
    /// What it spent.
    pub cost: Cost,
}

impl Wallet {
    /// Whether this wallet is an adversary.
    pub fn is_culprit(&self) -> bool {
        self.double_spender || self.clone_of.is_some()
    }
}
