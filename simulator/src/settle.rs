//! Settlement in the simulation: which receipts reach the settlement
//! service, and what the real rules (`meshpay_proto::settlement`) decide
//! for them.
//!
//! A receipt reaches settlement when its header is held by a gateway
//! during an uplink window (the stand-in for the node's relay of sealed
//! receipts, which is not modelled: a gateway that holds a header is taken
//! to carry its receipt), and a conflict is reported when a gateway holds
//! its proof then. What settlement then does with the receipts is the
//! protocol's own code: one [`AllowanceState`] per allowance, every
//! upload a batch through [`ingest_batch`], final outcomes read from the
//! states at the end (a later fork can reverse an earlier outcome). Each
//! upload's outcomes come back as a settlement acknowledgement that one
//! gateway puts into its ledger (see `Simulation::uplink`), so that
//! ledgers drop what settled when they rotate.

use std::collections::BTreeMap;

use meshpay_proto::ledger::PartialLedger;
use meshpay_proto::prelude::*;
use meshpay_proto::settlement::{
    AllowanceState, SettlementConfig, SettlementContext, ingest_batch,
};
use meshpay_proto::settlement_ack::Outcome;
use meshpay_proto::validate::MeshView;

/// Whether a gateway whose ledger is `ledger`, uploading now, carries the
/// receipt of the transfer with header `header` to settlement: it holds
/// the header, or a proof that carries it (a ledger keeps the losing side
/// of a fork only inside the proof).
pub fn settles(ledger: &PartialLedger, header: &TransferHeader) -> bool {
    let same = |h: &SignedHeader| h.seq == header.seq && h.body_hash == header.body_hash;
    ledger.headers(&header.allowance).iter().any(same)
        || (ledger.has_conflict(&header.allowance)
            && ledger
                .proofs()
                .iter()
                .filter(|p| p.allowance() == header.allowance)
                .any(|p| p.headers().any(same)))
}

/// Whether a gateway whose ledger is `ledger`, uploading now, reports the
/// conflict on `allowance` to settlement.
pub fn reports_conflict(ledger: &dyn MeshView, allowance: &AllowanceId) -> bool {
    ledger.has_conflict(allowance)
}

/// The settlement service of the simulated issuer: the real rules over
/// in-memory states.
pub struct Service {
    trust: TrustStore,
    config: SettlementConfig,
    credentials: BTreeMap<PublicKey, PayeeCredential>,
    states: BTreeMap<AllowanceId, AllowanceState>,
}

impl Service {
    /// A service that issued `allowances` (escrowed at issue) and knows
    /// the payee `credentials`, with the default configuration (the payee
    /// bears conflict losses).
    pub fn new<'a>(
        trust: TrustStore,
        allowances: impl IntoIterator<Item = &'a Allowance>,
        credentials: impl IntoIterator<Item = &'a PayeeCredential>,
    ) -> Service {
        let mut states = BTreeMap::new();
        for a in allowances {
            // The simulator's issuer signed them: they open.
            if let Ok((state, _escrow)) = AllowanceState::open(a.clone(), &trust) {
                states.entry(a.id).or_insert(state);
            }
        }
        Service {
            credentials: credentials
                .into_iter()
                .map(|c| (c.payee, c.clone()))
                .collect(),
            trust,
            config: SettlementConfig::default(),
            states,
        }
    }

    /// Takes a batch of receipts that reached settlement at `now`; the
    /// outcome of each, as settlement said it then.
    pub fn ingest(&mut self, receipts: &[Receipt], now: Timestamp) -> Vec<Outcome> {
        if receipts.is_empty() {
            return Vec::new();
        }
        let ctx = SettlementContext {
            trust: &self.trust,
            config: &self.config,
            credentials: &self.credentials,
        };
        ingest_batch(&mut self.states, receipts, now, &ctx)
            .receipts
            .into_iter()
            .map(|r| r.outcome)
            .collect()
    }

    /// The current outcome for a transfer admitted earlier (a later fork
    /// can have changed it); `None` if it was never admitted.
    pub fn outcome(&self, header: &TransferHeader, id: &TransferId) -> Option<Outcome> {
        self.states
            .get(&header.allowance)
            .and_then(|s| s.outcome(header.seq, id))
    }
}
