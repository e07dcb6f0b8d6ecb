//! The peripheral role on Linux with bluer (BlueZ): advertise the node,
//! serve the meshpay GATT service, and hand each central that connects to
//! the exchange as a [`ChannelPort`].
//!
//! Packets use BlueZ's "IO" methods: a write-without-response from the
//! central arrives on a socket (one packet per read), a notification goes
//! out with one send. One central is served at a time.

use bluer::adv::{Advertisement as LeAdvertisement, AdvertisementHandle};
use bluer::gatt::local::{
    Application, ApplicationHandle, Characteristic, CharacteristicControlEvent,
    CharacteristicNotify, CharacteristicNotifyMethod, CharacteristicRead, CharacteristicWrite,
    CharacteristicWriteMethod, Service, characteristic_control,
};
use futures::{FutureExt, StreamExt};
use std::collections::BTreeMap;
use uuid::Uuid;

use super::adapter::BleError;
use super::advert::Advertisement;
use super::framing::VERSION;
use super::runtime::{BleHandle, IncomingLink, RadioEvent};
use super::{ChannelPort, RX_UUID, SERVICE_UUID, TX_UUID, VERSION_UUID};

/// The advertising and GATT server of one adapter; dropping it stops both.
#[derive(Debug)]
pub struct Peripheral {
    adapter: bluer::Adapter,
    advertising: Option<AdvertisementHandle>,
    _app: ApplicationHandle,
}

/// Checks that BlueZ answers and the default adapter is there; returns
/// its name and address.
pub async fn probe() -> Result<String, BleError> {
    let session = bluer::Session::new().await?;
    let adapter = session.default_adapter().await?;
    let powered = adapter.is_powered().await?;
    Ok(format!(
        "{} ({}), {}",
        adapter.name(),
        adapter.address().await?,
        if powered {
            "powered"
        } else {
            "powered off (meshpay will power it on)"
        }
    ))
}

impl Peripheral {
    /// Powers the default adapter on, advertises `advert` and serves the
    /// GATT service; each central that opens both the write and notify
    /// sides is reported to `links` as an [`RadioEvent::Incoming`].
    pub async fn start(advert: Advertisement, links: BleHandle) -> Result<Peripheral, BleError> {
        let session = bluer::Session::new().await?;
        let adapter = session.default_adapter().await?;
        adapter.set_powered(true).await?;
        let (rx_control, rx_handle) = characteristic_control();
        let (tx_control, tx_handle) = characteristic_control();
        let app = Application {
            services: vec![Service {
                uuid: Uuid::from_u128(SERVICE_UUID),
                primary: true,
                characteristics: vec![
                    Characteristic {
                        uuid: Uuid::from_u128(RX_UUID),
                        write: Some(CharacteristicWrite {
                            write_without_response: true,
                            method: CharacteristicWriteMethod::Io,
                            ..Default::default()
                        }),
                        control_handle: rx_handle,
                        ..Default::default()
                    },
                    Characteristic {
                        uuid: Uuid::from_u128(TX_UUID),
                        notify: Some(CharacteristicNotify {
                            notify: true,
                            method: CharacteristicNotifyMethod::Io,
                            ..Default::default()
                        }),
                        control_handle: tx_handle,
                        ..Default::default()
                    },
                    Characteristic {
                        uuid: Uuid::from_u128(VERSION_UUID),
                        read: Some(CharacteristicRead {
                            read: true,
                            fun: Box::new(|_| async { Ok(vec![VERSION]) }.boxed()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let app = adapter.serve_gatt_application(app).await?;
        let mut p = Peripheral {
            adapter,
            advertising: None,
            _app: app,
        };
        p.advertise(advert).await?;
        tokio::spawn(accept(rx_control, tx_control, links));
        Ok(p)
    }

    /// Replaces the advertisement (after a sync changed the digest).
    pub async fn advertise(&mut self, advert: Advertisement) -> Result<(), BleError> {
        self.advertising = None;
        let le = LeAdvertisement {
            service_data: BTreeMap::from([(
                Uuid::from_u128(SERVICE_UUID),
                advert.service_data().to_vec(),
            )]),
            discoverable: Some(true),
            ..Default::default()
        };
        self.advertising = Some(self.adapter.advertise(le).await?);
        Ok(())
    }
}

/// Pairs each central's write session with its notify session and
/// bridges both to a [`ChannelPort`].
async fn accept(
    rx_control: bluer::gatt::local::CharacteristicControl,
    tx_control: bluer::gatt::local::CharacteristicControl,
    links: BleHandle,
) {
    tokio::pin!(rx_control);
    tokio::pin!(tx_control);
    let mut reader = None;
    let mut writer = None;
    loop {
        tokio::select! {
            ev = rx_control.next() => match ev {
                Some(CharacteristicControlEvent::Write(req)) => match req.accept() {
                    Ok(r) => reader = Some(r),
                    Err(e) => tracing::warn!(error = %e, "could not accept a central's writes"),
                },
                Some(_) => {}
                None => return,
            },
            ev = tx_control.next() => match ev {
                Some(CharacteristicControlEvent::Notify(w)) => writer = Some(w),
                Some(_) => {}
                None => return,
            },
        }
        let (Some(r), Some(w)) = (reader.take(), writer.take()) else {
            continue;
        };
        if r.device_address() != w.device_address() {
            // Halves of two different centrals: keep the newer write side.
            reader = Some(r);
            continue;
        }
        // Both MTUs are the ATT MTU of this connection.
        let mtu = u16::try_from(r.mtu().min(w.mtu())).unwrap_or(u16::MAX);
        let peer = r.device_address().to_string();
        let (port, to_port, from_port) = ChannelPort::new();
        tokio::spawn(async move {
            while let Ok(packet) = r.recv().await {
                if to_port.send(packet).is_err() {
                    break;
                }
            }
        });
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            while let Ok(packet) = from_port.recv() {
                if handle.block_on(w.send(&packet)).is_err() {
                    break;
                }
            }
        });
        tracing::info!(%peer, mtu, "central connected");
        let link = IncomingLink {
            peer,
            node: None,
            port,
            mtu,
        };
        if !links.report(RadioEvent::Incoming(link)) {
            return;
        }
    }
}
