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
//! - [`emulated`]: a deterministic emulated connection for tests,
//!   benchmarks and the simulator.
//! - [`doctor`]: what this machine lacks for BLE, in plain words.
//!
//! Everything but the two roles is portable code, built and tested
//! without the feature.

pub mod advert;
pub mod doctor;
pub mod emulated;
pub mod framing;
mod link;
pub mod policy;

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
