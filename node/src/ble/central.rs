//! The central role with btleplug: scan for meshpay advertisements and
//! report each with its RSSI (the runtime's [`ConnectionPolicy`](super::policy::ConnectionPolicy)
//! decides whom to connect to); connect, check the service's version,
//! subscribe to notifications, and bridge the connection to a
//! [`ChannelPort`] for the exchange.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use btleplug::api::{
    Central as _, CentralEvent, Characteristic, Manager as _, Peripheral as _, ScanFilter,
    WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::StreamExt;
use uuid::Uuid;

use super::adapter::BleError;
use super::advert::Advertisement;
use super::framing::VERSION;
use super::runtime::{BleHandle, RadioEvent};
use super::{ChannelPort, RX_UUID, SERVICE_UUID, TX_UUID, VERSION_UUID};

/// The first Bluetooth adapter.
pub async fn adapter() -> Result<Adapter, BleError> {
    let manager = Manager::new().await?;
    manager
        .adapters()
        .await?
        .into_iter()
        .next()
        .ok_or(BleError::NoAdapter)
}

fn find(p: &Peripheral, uuid: u128) -> Result<Characteristic, BleError> {
    p.characteristics()
        .into_iter()
        .find(|c| {
            c.uuid == Uuid::from_u128(uuid) && c.service_uuid == Uuid::from_u128(SERVICE_UUID)
        })
        .ok_or(BleError::NoService)
}

/// Connects to `p`, checks the service and bridges it to a port; returns
/// the port and the ATT MTU.
pub async fn connect(p: &Peripheral) -> Result<(ChannelPort, u16), BleError> {
    p.connect().await?;
    p.discover_services().await?;
    let rx = find(p, RX_UUID)?;
    let tx = find(p, TX_UUID)?;
    let version = p.read(&find(p, VERSION_UUID)?).await?;
    if version.first() != Some(&VERSION) {
        let _ = p.disconnect().await;
        return Err(BleError::Version(version.first().copied().unwrap_or(0)));
    }
    p.subscribe(&tx).await?;
    let mut notifications = p.notifications().await?;
    let (port, to_port, from_port) = ChannelPort::new();
    let tx_uuid = tx.uuid;
    tokio::spawn(async move {
        while let Some(n) = notifications.next().await {
            if n.uuid == tx_uuid && to_port.send(n.value).is_err() {
                break;
            }
        }
    });
    let writer = p.clone();
    let handle = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        while let Ok(packet) = from_port.recv() {
            let sent = handle.block_on(writer.write(&rx, &packet, WriteType::WithoutResponse));
            if sent.is_err() {
                break;
            }
        }
        // The exchange dropped its port: the link is done.
        let _ = handle.block_on(writer.disconnect());
    });
    Ok((port, p.mtu()))
}

/// Where each node heard is, and what it last advertised, by short id.
pub type Known = Arc<Mutex<HashMap<[u8; 4], (PeripheralId, Advertisement)>>>;

/// The RSSI BlueZ last measured for `id`.
async fn rssi(adapter: &Adapter, id: &PeripheralId) -> Result<i16, BleError> {
    Ok(adapter
        .peripheral(id)
        .await?
        .properties()
        .await?
        .and_then(|p| p.rssi)
        .unwrap_or(i16::MIN))
}

/// Scans until the adapter's event stream ends, reporting every meshpay
/// advertisement with its RSSI to `events` and remembering where each
/// node is in `known`. BlueZ reports service data only when it changes,
/// so a node's RSSI updates are reported too, with the advertisement last
/// heard from it: the transport sees every node in range as fresh.
pub async fn scan(adapter: Adapter, known: Known, events: BleHandle) -> Result<(), BleError> {
    let mut stream = adapter.events().await?;
    // Filtered here, on the service data: the advertisement carries the
    // service UUID only there (see advert.rs).
    adapter.start_scan(ScanFilter::default()).await?;
    while let Some(event) = stream.next().await {
        let heard = match event {
            CentralEvent::ServiceDataAdvertisement { id, service_data } => {
                let Some(data) = service_data.get(&Uuid::from_u128(SERVICE_UUID)) else {
                    continue;
                };
                let Ok(advert) = Advertisement::from_service_data(data) else {
                    continue;
                };
                known
                    .lock()
                    .map_err(|_| BleError::Poisoned)?
                    .insert(advert.node, (id.clone(), advert));
                Some((id, advert))
            }
            CentralEvent::DeviceUpdated(id) => {
                let known = known.lock().map_err(|_| BleError::Poisoned)?;
                known
                    .values()
                    .find(|(k, _)| *k == id)
                    .map(|(_, advert)| (id.clone(), *advert))
            }
            _ => None,
        };
        let Some((id, advert)) = heard else {
            continue;
        };
        let rssi = rssi(&adapter, &id).await?;
        if !events.report(RadioEvent::Heard { advert, rssi }) {
            return Ok(());
        }
    }
    Ok(())
}
