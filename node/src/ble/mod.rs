//! The Bluetooth LE transport: how two phones, or a phone and a crew
//! handheld, pay each other and sync ledgers with no network at all.
//!
//! Layers, bottom up (docs/ble.md has the whole picture):
//!
//! - GATT: one meshpay service ([`SERVICE_UUID`]) with a
//!   write-without-response characteristic toward the peripheral
//!   ([`RX_UUID`]), a notify characteristic back ([`TX_UUID`]) and a
//!   read-only version ([`VERSION_UUID`]). The central role runs on
//!   btleplug, the peripheral role on bluer (BlueZ), both behind the
//!   `ble` feature.
//! - [`framing`]: messages cut to the negotiated ATT MTU, reassembled
//!   with a size limit, with credit-based flow control.
//! - [`FramedLink`]: a [`crate::transport::Link`] over any
//!   [`PacketPort`]; payments and syncs run over it through
//!   [`crate::exchange`], unchanged.
//! - [`advert`]: the 31-byte advertisement; [`policy`]: when to connect.
//! - [`runtime`]: the transport of a running node, beside the libp2p
//!   mesh and on the mesh's node: syncs, nearby payments, the
//!   advertisement kept up to date, over any [`runtime::Radio`].
//! - Radios: this machine's adapter ([`adapter`], with the feature), or
//!   the emulated air between processes ([`air`], for tests).
//! - [`emulated`]: a deterministic emulated connection for tests,
//!   benchmarks and the simulator.
//! - [`doctor`]: what this machine lacks for BLE, in plain words.
//!
//! Everything but the adapter's two roles is portable code, built and
//! tested without the feature.

pub mod advert;
#[cfg(unix)]
pub mod air;
pub mod doctor;
pub mod emulated;
pub mod framing;
mod link;
pub mod policy;
pub mod runtime;
pub mod secure;

#[cfg(feature = "ble")]
pub mod adapter;
#[cfg(feature = "ble")]
pub mod central;
#[cfg(feature = "ble")]
pub mod peripheral;

pub use link::{ChannelPort, FramedLink, PacketPort};

/// The meshpay GATT service.
pub const SERVICE_UUID: u128 = 0x6d65_7368_7061_7901_a5e3_1c0a_44b2_f001;
/// Central to peripheral: write without response, one packet per write.
pub const RX_UUID: u128 = 0x6d65_7368_7061_7901_a5e3_1c0a_44b2_f002;
/// Peripheral to central: notify, one packet per notification.
pub const TX_UUID: u128 = 0x6d65_7368_7061_7901_a5e3_1c0a_44b2_f003;
/// Read: the framing version (one byte, [`framing::VERSION`]).
pub const VERSION_UUID: u128 = 0x6d65_7368_7061_7901_a5e3_1c0a_44b2_f004;

/// A node's short id: the first 4 bytes of its wallet key.
pub fn short_id(key: &meshpay_proto::prelude::PublicKey) -> [u8; 4] {
    let mut id = [0u8; 4];
    id.copy_from_slice(&key.as_bytes()[..4]);
    id
}

/// Runs every doctor check on this machine; with the `ble` feature and
/// the file-system checks passed, also asks BlueZ for the adapter.
pub fn check_machine() -> doctor::Report {
    #[allow(unused_mut)]
    let mut report = doctor::diagnose(&doctor::Environment::system());
    #[cfg(feature = "ble")]
    if report.ready {
        let probe = tokio::runtime::Runtime::new()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(async {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        peripheral::probe(),
                    )
                    .await
                    {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("BlueZ did not answer within 5 s".to_string()),
                    }
                })
            });
        let ok = probe.is_ok();
        report.checks.push(doctor::Check {
            name: "BlueZ answers",
            status: if ok {
                doctor::Status::Ok
            } else {
                doctor::Status::Fail
            },
            detail: match probe {
                Ok(adapter) => format!("default adapter {adapter}"),
                Err(e) => format!("BlueZ is there but refused: {e}"),
            },
            fix: (!ok).then(|| {
                "`sudo systemctl restart bluetooth`; `bluetoothctl show` must list a controller"
                    .into()
            }),
        });
        report.ready = ok;
    }
    report
}

/// What `node run --ble` checks before it starts: `Err` is the doctor's
/// first failure in plain words.
pub fn preflight() -> Result<(), String> {
    match check_machine().explain() {
        None => Ok(()),
        Some(why) => Err(format!(
            "cannot run BLE: {why} (`meshpay ble doctor` shows every check)"
        )),
    }
}

/// The radio a node's BLE transport runs on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RadioChoice {
    /// This machine's Bluetooth adapter (the `ble` feature; after
    /// [`preflight`]).
    Adapter,
    /// The emulated air between processes in a directory.
    #[cfg(unix)]
    Emulated(air::AirConfig),
}

/// Starts the BLE transport of the node behind `mesh` on a thread of its
/// own: opens the radio (reporting to `handle`, which the mesh's
/// configuration also holds), then runs [`runtime::run`] until the mesh
/// stops. Returns once the radio is open, or why it could not be.
pub fn start(
    choice: RadioChoice,
    wallet: meshpay_proto::prelude::PublicKey,
    mesh: crate::mesh::MeshHandle,
    handle: runtime::BleHandle,
    events: runtime::BleEvents,
) -> Result<std::thread::JoinHandle<()>, String> {
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ble".into())
        .spawn(move || {
            let policy = policy::PolicyConfig::default();
            let result = match choice {
                #[cfg(feature = "ble")]
                RadioChoice::Adapter => {
                    match adapter::AdapterRadio::open(&wallet, handle.clone()) {
                        Ok(radio) => {
                            let _ = opened_tx.send(Ok(()));
                            runtime::run(radio, mesh, handle, events, policy)
                        }
                        Err(e) => {
                            let _ = opened_tx.send(Err(format!("cannot run BLE: {e}")));
                            return;
                        }
                    }
                }
                #[cfg(not(feature = "ble"))]
                RadioChoice::Adapter => {
                    drop((handle, events, mesh));
                    let _ = opened_tx.send(Err(format!(
                        "this meshpay was built without BLE support. {}",
                        doctor::REBUILD_HINT
                    )));
                    return;
                }
                #[cfg(unix)]
                RadioChoice::Emulated(config) => {
                    match air::AirRadio::open(config, short_id(&wallet), handle.clone()) {
                        Ok(radio) => {
                            let _ = opened_tx.send(Ok(()));
                            runtime::run(radio, mesh, handle, events, policy)
                        }
                        Err(e) => {
                            let _ = opened_tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "the BLE transport stopped");
                eprintln!("ble: stopped: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    match opened.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the BLE thread ended before its radio opened".into()),
    }
}
