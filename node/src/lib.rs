//! # meshpay-node
//!
//! The I/O shell around `meshpay-proto`: storage ([`store`], redb), nodes
//! that turn the protocol machines' effects into durable writes
//! ([`node`]), the libp2p local mesh and its control API ([`mesh`],
//! [`control`]), the Bluetooth LE transport ([`ble`]), in-process links
//! ([`local`]) and the `meshpay demo` scenario ([`demo`]).
//!
//! Payments and syncs run over any [`transport::Link`] through one
//! driving loop ([`exchange`]): in memory, over the emulated BLE link, or
//! over a GATT connection.
//!
//! Still to come (see the open issues): the settlement service and
//! gateway relay.

#![deny(missing_docs, unreachable_pub)]

pub mod ble;
pub mod config;
pub mod control;
pub mod demo;
pub mod exchange;
pub mod keyfile;
pub mod local;
pub mod mesh;
pub mod node;
pub mod settlement;
pub mod store;
pub mod transport;

/// The operating system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

/// A cryptographic RNG seeded from the operating system.
pub fn os_rng() -> Result<rand::rngs::StdRng, RandomError> {
    use rand::SeedableRng;
    rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)
        .map_err(|e| RandomError(e.to_string()))
}
