//! When something counts as settled in the simulation.
//!
//! The settlement rules (`meshpay_proto::settlement`, issue #5) are not
//! there yet. Until they are, a transfer counts as settled when its header
//! is held by a gateway during an uplink window, and a conflict as
//! reported when a gateway holds its proof then. These two functions are
//! the only place that decides it: plugging the real rules in means
//! replacing their bodies (and feeding the acknowledgements back into the
//! mesh), not the simulator around them.

use meshpay_proto::prelude::*;
use meshpay_proto::validate::MeshView;

/// Whether a gateway whose ledger is `ledger`, uploading now, settles the
/// transfer with header `header`.
pub fn settles(ledger: &dyn MeshView, header: &TransferHeader) -> bool {
    ledger
        .headers(&header.allowance)
        .iter()
        .any(|h| h.seq == header.seq && h.body_hash == header.body_hash)
}

/// Whether a gateway whose ledger is `ledger`, uploading now, reports the
/// conflict on `allowance` to settlement.
pub fn reports_conflict(ledger: &dyn MeshView, allowance: &AllowanceId) -> bool {
    ledger.has_conflict(allowance)
}
