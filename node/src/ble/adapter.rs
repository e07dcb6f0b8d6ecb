//! The radio of `meshpay node run --ble`: this machine's adapter, the
//! central role on btleplug and the peripheral role on bluer (BlueZ).

use meshpay_proto::prelude::PublicKey;

use super::advert::Advertisement;
use super::central::{self, Known};
use super::peripheral::Peripheral;
use super::runtime::{BleHandle, IncomingLink, Radio, RadioError};
use crate::node::NodeError;

/// Why the Bluetooth adapter failed.
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

/// This machine's adapter in both roles.
#[derive(Debug)]
pub struct AdapterRadio {
    runtime: tokio::runtime::Runtime,
    adapter: btleplug::platform::Adapter,
    peripheral: Peripheral,
    known: Known,
}

impl AdapterRadio {
    /// Starts advertising (an empty state until the runtime's first
    /// refresh), serving the GATT service and scanning; reports to
    /// `events`.
    pub fn open(wallet: &PublicKey, events: BleHandle) -> Result<AdapterRadio, BleError> {
        let runtime = tokio::runtime::Runtime::new()?;
        let first = Advertisement {
            node: super::short_id(wallet),
            digest: [0; 4],
            flags: Default::default(),
            tx_power: 0,
        };
        let peripheral = runtime.block_on(Peripheral::start(first, events.clone()))?;
        let adapter = runtime.block_on(central::adapter())?;
        let known = Known::default();
        {
            let (adapter, known) = (adapter.clone(), known.clone());
            runtime.spawn(async move {
                if let Err(e) = central::scan(adapter, known, events).await {
                    tracing::error!(error = %e, "BLE scanning stopped");
                }
            });
        }
        Ok(AdapterRadio {
            runtime,
            adapter,
            peripheral,
            known,
        })
    }
}

impl Radio for AdapterRadio {
    fn advertise(&mut self, advert: &Advertisement) -> Result<(), RadioError> {
        self.runtime
            .block_on(self.peripheral.advertise(*advert))
            .map_err(|e| RadioError(e.to_string()))
    }

    fn connect(&mut self, node: [u8; 4]) -> Result<IncomingLink, RadioError> {
        use btleplug::api::Central as _;
        let id = self
            .known
            .lock()
            .map_err(|_| RadioError("internal state poisoned".into()))?
            .get(&node)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| RadioError(format!("node {} not heard", hex::encode(node))))?;
        let adapter = self.adapter.clone();
        let (port, mtu) = self
            .runtime
            .block_on(async move {
                let p = adapter.peripheral(&id).await?;
                central::connect(&p).await
            })
            .map_err(|e| RadioError(e.to_string()))?;
        tracing::info!(node = %hex::encode(node), mtu, "connected");
        Ok(IncomingLink {
            peer: hex::encode(node),
            node: Some(node),
            port,
            mtu,
        })
    }
}
