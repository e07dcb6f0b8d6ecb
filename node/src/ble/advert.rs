//! The advertisement: what a node says to everyone around it, in one
//! legacy 31-byte advertising packet, so that BLE 4.x scanners see it and
//! nobody needs a scan response.
//!
//! ```text
//! offset len  AD structure
//!  0      3   02 01 06                 Flags: LE general discoverable, no BR/EDR
//!  3     28   1b 21 <uuid> <data>      Service Data, 128-bit UUID (0x21)
//!  5     16     service UUID, little-endian
//! 21     10     service data:
//! 21      1       version << 4 | flags (urgent 1, gateway 2, invoice 4)
//! 22      4       short node id (the wallet key's first 4 bytes)
//! 26      4       ledger digest's first 4 bytes
//! 30      1       TX power at the antenna, dBm (signed)
//! ```
//!
//! Peers whose digests are equal have nothing to sync and need not
//! connect (unless one has urgent proofs or an invoice). A payee with an
//! invoice pending sets the invoice flag, so a payer can pick the nearest
//! payee: the smallest path loss, TX power less RSSI, like a tap.

use super::SERVICE_UUID;

/// Advertisement format version.
pub const ADVERT_VERSION: u8 = 1;
/// Bytes of service data.
pub const SERVICE_DATA_LEN: usize = 10;
/// A legacy advertising packet's payload.
pub const LEGACY_ADVERT_LEN: usize = 31;

const AD_FLAGS: u8 = 0x01;
const AD_SERVICE_DATA_128: u8 = 0x21;
/// LE General Discoverable Mode, BR/EDR not supported.
const FLAGS_VALUE: u8 = 0x06;

/// What a node advertises it has or wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdvertFlags {
    /// Conflict proofs or a revocation list wait to be spread.
    pub urgent: bool,
    /// The node relays to settlement (it has a network uplink).
    pub gateway: bool,
    /// The node is a payee with an invoice pending.
    pub invoice: bool,
}

impl AdvertFlags {
    fn bits(self) -> u8 {
        u8::from(self.urgent) | u8::from(self.gateway) << 1 | u8::from(self.invoice) << 2
    }

    fn from_bits(b: u8) -> Self {
        AdvertFlags {
            urgent: b & 1 != 0,
            gateway: b & 2 != 0,
            invoice: b & 4 != 0,
        }
    }
}

/// A meshpay advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertisement {
    /// Short node id: the first 4 bytes of the wallet's public key.
    pub node: [u8; 4],
    /// The first 4 bytes of the partial ledger's digest.
    pub digest: [u8; 4],
    /// What the node has or wants.
    pub flags: AdvertFlags,
    /// TX power at the antenna, dBm.
    pub tx_power: i8,
}

/// Why an advertisement was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertError {
    /// An AD structure runs past the end of the packet.
    #[error("advertisement truncated")]
    Truncated,
    /// No meshpay service data in it.
    #[error("not a meshpay advertisement")]
    NotMeshpay,
    /// Service data of the wrong length.
    #[error("meshpay service data of {0} bytes, expected {SERVICE_DATA_LEN}")]
    Length(usize),
    /// A format version this node does not read.
    #[error("advertisement version {0}, expected {ADVERT_VERSION}")]
    Version(u8),
}

impl Advertisement {
    /// The 10 bytes of service data (what BlueZ, btleplug and bluer hand
    /// around keyed by the service UUID).
    pub fn service_data(&self) -> [u8; SERVICE_DATA_LEN] {
        let mut d = [0u8; SERVICE_DATA_LEN];
        d[0] = ADVERT_VERSION << 4 | self.flags.bits();
        d[1..5].copy_from_slice(&self.node);
        d[5..9].copy_from_slice(&self.digest);
        d[9] = self.tx_power.to_le_bytes()[0];
        d
    }

    /// Reads service data.
    pub fn from_service_data(d: &[u8]) -> Result<Self, AdvertError> {
        let d: &[u8; SERVICE_DATA_LEN] = d.try_into().map_err(|_| AdvertError::Length(d.len()))?;
        if d[0] >> 4 != ADVERT_VERSION {
            return Err(AdvertError::Version(d[0] >> 4));
        }
        let mut node = [0u8; 4];
        node.copy_from_slice(&d[1..5]);
        let mut digest = [0u8; 4];
        digest.copy_from_slice(&d[5..9]);
        Ok(Advertisement {
            node,
            digest,
            flags: AdvertFlags::from_bits(d[0] & 0x0f),
            tx_power: i8::from_le_bytes([d[9]]),
        })
    }

    /// The whole legacy advertising payload.
    pub fn encode(&self) -> [u8; LEGACY_ADVERT_LEN] {
        let mut p = [0u8; LEGACY_ADVERT_LEN];
        p[..3].copy_from_slice(&[2, AD_FLAGS, FLAGS_VALUE]);
        p[3] = (1 + 16 + SERVICE_DATA_LEN) as u8;
        p[4] = AD_SERVICE_DATA_128;
        p[5..21].copy_from_slice(&SERVICE_UUID.to_le_bytes());
        p[21..].copy_from_slice(&self.service_data());
        p
    }

    /// Finds and reads meshpay's service data in an advertising payload
    /// (any order of AD structures, others skipped).
    pub fn decode(payload: &[u8]) -> Result<Self, AdvertError> {
        let mut rest = payload;
        while let Some((&len, tail)) = rest.split_first() {
            if len == 0 {
                // Zero padding ends the significant part.
                break;
            }
            let len = usize::from(len);
            if tail.len() < len {
                return Err(AdvertError::Truncated);
            }
            let (structure, next) = tail.split_at(len);
            if let Some((&AD_SERVICE_DATA_128, body)) = structure.split_first()
                && body.len() >= 16
                && body[..16] == SERVICE_UUID.to_le_bytes()
            {
                return Self::from_service_data(&body[16..]);
            }
            rest = next;
        }
        Err(AdvertError::NotMeshpay)
    }

    /// Path loss in dB for a reception at `rssi` dBm: smaller is nearer.
    pub fn path_loss(&self, rssi: i16) -> i16 {
        i16::from(self.tx_power) - rssi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Advertisement {
        Advertisement {
            node: [0xa1, 0xb2, 0xc3, 0xd4],
            digest: [1, 2, 3, 4],
            flags: AdvertFlags {
                urgent: true,
                gateway: false,
                invoice: true,
            },
            tx_power: -8,
        }
    }

    #[test]
    fn fills_a_legacy_advertisement_exactly_and_round_trips() {
        let a = sample();
        let p = a.encode();
        assert_eq!(p.len(), 31);
        assert_eq!(Advertisement::decode(&p), Ok(a));
        assert_eq!(Advertisement::from_service_data(&a.service_data()), Ok(a));
        // The test vector in docs/ble.md.
        assert_eq!(
            hex::encode(p),
            "0201061b2101f0b2440a1ce3a501796170687365 6d15a1b2c3d401020304f8".replace(' ', "")
        );
    }

    #[test]
    fn other_structures_are_skipped_and_bad_input_is_typed() {
        let a = sample();
        let mut p = vec![3, 0x03, 0x0f, 0x18]; // a 16-bit UUID list
        p.extend_from_slice(&a.encode()[3..]);
        assert_eq!(Advertisement::decode(&p), Ok(a));
        assert_eq!(
            Advertisement::decode(&[2, 1, 6]),
            Err(AdvertError::NotMeshpay)
        );
        assert_eq!(
            Advertisement::decode(&[9, 1, 6]),
            Err(AdvertError::Truncated)
        );
        let mut v2 = a.encode();
        v2[21] = 0x25;
        assert_eq!(Advertisement::decode(&v2), Err(AdvertError::Version(2)));
        assert_eq!(
            Advertisement::from_service_data(&[0x10; 9]),
            Err(AdvertError::Length(9))
        );
    }
}
