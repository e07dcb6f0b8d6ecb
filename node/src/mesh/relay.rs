//! The relay: receipts travel from node to node toward whichever node
//! reaches settlement (a gateway), and what settlement says comes back
//! through the mesh.
//!
//! - Every node keeps an outbox: the receipts it is party to and those it
//!   carries for others, less what a settlement acknowledgement in its
//!   ledger already covers.
//! - Receipts leave their parties sealed to the settlement service
//!   (`meshpay_proto::sealed`, HPKE): relays see the signed header, never
//!   the body or the payee.
//! - After each sync with a peer, a node hands the peer the outbox
//!   receipts it has not handed it before (`MeshRequest::Relay`). The peer
//!   keeps those whose header's payer signature verifies against an
//!   allowance in its ledger, up to [`MAX_CARRIED`].
//! - A gateway (`node run --settlement URL`) uploads its outbox in batches
//!   every sync interval while the service answers, and brings back the
//!   acknowledgements and the revocation list. Both are issuer-signed
//!   ledger entries: they spread by sync (and revocations by gossip), and
//!   every node drops the carried receipts they cover.

use std::time::Duration;

use meshpay_proto::prelude::*;
use serde_json::json;

use crate::settlement::client;

/// Most receipts a node carries for others.
pub const MAX_CARRIED: usize = 100_000;
/// Receipts per upload batch (the service's limit).
pub const UPLOAD_BATCH: usize = 1_000;
/// Receipts per relay request to a peer.
pub const RELAY_BATCH: usize = 500;

/// What one trip to settlement brought back.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// Receipts uploaded.
    pub uploaded: usize,
    /// Carried receipts the service could not open (damaged or forged on
    /// the way): to drop.
    pub unopened: Vec<TransferId>,
    /// Acknowledgements newer than the last one held.
    pub acks: Vec<SettlementAck>,
    /// The current revocation list.
    pub revocations: Option<RevocationList>,
}

fn hex_decode<T: Encode>(v: &serde_json::Value) -> Option<T> {
    T::decode(&hex::decode(v.as_str()?).ok()?).ok()
}

/// Uploads `outbox` (encoded receipts) to the service at `url`, then pulls
/// acknowledgements after serial `since` and the revocation list.
pub async fn uplink(
    url: String,
    outbox: Vec<(TransferId, Vec<u8>)>,
    since: u64,
) -> Result<Uplink, String> {
    let timeout = Duration::from_secs(30);
    let mut unopened = Vec::new();
    for batch in outbox.chunks(UPLOAD_BATCH) {
        let body =
            json!({ "sealed": batch.iter().map(|(_, b)| hex::encode(b)).collect::<Vec<_>>() });
        let answer = client::call(&url, "POST", "/v1/receipts", Some(&body), timeout)
            .await
            .map_err(|e| e.to_string())?;
        let bad: Vec<String> = answer["unopened"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        unopened.extend(
            batch
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| bad.contains(&id.to_string())),
        );
    }
    let mut acks = Vec::new();
    let mut after = since;
    loop {
        let v = client::call(
            &url,
            "GET",
            &format!("/v1/acks?since={after}"),
            None,
            timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        let page: Vec<SettlementAck> = v["acks"]
            .as_array()
            .map(|a| a.iter().filter_map(hex_decode).collect())
            .unwrap_or_default();
        let Some(last) = page.last().map(|a| a.serial) else {
            break;
        };
        if last <= after {
            break;
        }
        after = last;
        acks.extend(page);
    }
    let v = client::call(&url, "GET", "/v1/revocations", None, timeout)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Uplink {
        uploaded: outbox.len(),
        unopened,
        acks,
        revocations: hex_decode(&v["list"]),
    })
}
