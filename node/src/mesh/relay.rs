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

/// Most receipt copies a node carries for others.
pub const MAX_CARRIED: usize = 100_000;
/// Most copies of one transfer a node carries (a forged copy must not shut
/// out the genuine one).
pub const MAX_COPIES: usize = 3;
/// Largest sealed receipt a relay takes: an honest one is about 300 bytes.
pub const MAX_SEALED_BYTES: usize = 512;
/// Most hex bytes of sealed receipts in one upload request (the service
/// takes bodies of up to 1 MiB).
const UPLOAD_BYTES: usize = 512 * 1024;
/// Receipts per upload batch (the service's limit).
pub const UPLOAD_BATCH: usize = 1_000;
/// Receipts per relay request to a peer.
pub const RELAY_BATCH: usize = 500;

/// What one trip to settlement brought back.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// Receipts uploaded.
    pub uploaded: usize,
    /// Copies the service could not open, or opened and found forged:
    /// to drop.
    pub refused: Vec<(TransferId, Vec<u8>)>,
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
    let mut refused = Vec::new();
    // Batches by count and by size; one batch the service refuses (a bad
    // copy among them) does not stop the others or the pull below.
    let mut batches: Vec<&[(TransferId, Vec<u8>)]> = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, b)) in outbox.iter().enumerate() {
        if i > start && (i - start >= UPLOAD_BATCH || bytes + 2 * b.len() > UPLOAD_BYTES) {
            batches.push(&outbox[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += 2 * b.len();
    }
    if start < outbox.len() {
        batches.push(&outbox[start..]);
    }
    for batch in batches {
        let body =
            json!({ "sealed": batch.iter().map(|(_, b)| hex::encode(b)).collect::<Vec<_>>() });
        let answer = match client::call(&url, "POST", "/v1/receipts", Some(&body), timeout).await {
            Ok(a) => a,
            Err(client::ClientError::Status { status, message }) => {
                tracing::warn!(status, %message, "settlement refused an upload batch");
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        for field in ["unopened", "rejected"] {
            for i in answer[field].as_array().into_iter().flatten() {
                if let Some(item) = i.as_u64().and_then(|i| batch.get(i as usize)) {
                    refused.push(item.clone());
                }
            }
        }
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
        refused,
        acks,
        revocations: hex_decode(&v["list"]),
    })
}
