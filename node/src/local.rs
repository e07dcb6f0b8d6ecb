//! Nodes in one process, linked in memory: a payment or a sync session
//! runs over a [`MemoryLink`] with the same driving loop as the BLE and
//! emulated links ([`crate::exchange`]). The same machines and the same
//! durable effects as over a network; only the transport is direct.

use meshpay_proto::prelude::*;
use meshpay_proto::sync::{SyncConfig, SyncError, SyncStats};

use crate::exchange::{self, ExchangeError, PayeeSide, PayerSide, Side, SyncSide};
use crate::node::{Node, NodeError};
use crate::transport::MemoryLink;

/// Link time a payment may take before it is given up as uncertain (the
/// payer's retries, 8 x 250 ms by default, fit well within it).
const PAYMENT_LIMIT_MS: u64 = 10_000;
/// Link time a sync session may take.
const SYNC_LIMIT_MS: u64 = 60_000;

/// How a payment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Both sides hold the receipt.
    Paid(Box<Receipt>),
    /// The payee refused the transfer, naming the rule.
    Refused(Rule),
    /// The payer refused before signing.
    PayerRefused(PaymentError),
    /// No answer; the sequence number stays used.
    Uncertain,
}

impl PaymentOutcome {
    /// The outcome a payer's state stands for.
    pub fn of(state: &PayerState) -> PaymentOutcome {
        match state {
            PayerState::Paid(r) => PaymentOutcome::Paid(Box::new(r.clone())),
            PayerState::Rejected { rule, .. } => PaymentOutcome::Refused(*rule),
            PayerState::Refused(e) => PaymentOutcome::PayerRefused(e.clone()),
            _ => PaymentOutcome::Uncertain,
        }
    }
}

/// Runs a whole payment of `amount` from `payer` to `payee`; the payer's
/// user confirms. `now` is both sides' wall clock.
pub fn pay(
    payer: &mut Node,
    payee: &mut Node,
    amount: u64,
    currency: Currency,
    memo: Option<&str>,
    now: Timestamp,
) -> Result<PaymentOutcome, NodeError> {
    let config = PayerConfig {
        // The payee may already hold the allowance from the mesh; if not,
        // it asks and the payer sends it along.
        send_allowance: false,
        ..PayerConfig::default()
    };
    let mut payer_side = PayerSide::new(payer.start_payment(amount, now, config)?);
    let invoice = payee.request(amount, currency, memo.map(str::to_string), Millis(0))?;
    let mut payee_side = PayeeSide::new(invoice, now);
    let (mut payer_link, mut payee_link) = MemoryLink::pair();
    let ended = exchange::drive_pair(
        Side {
            node: payer,
            conversation: &mut payer_side,
            link: &mut payer_link,
        },
        Side {
            node: payee,
            conversation: &mut payee_side,
            link: &mut payee_link,
        },
        PAYMENT_LIMIT_MS,
    );
    match ended {
        Ok(_) | Err(ExchangeError::TimedOut(_)) => Ok(PaymentOutcome::of(payer_side.state())),
        Err(ExchangeError::Node(e)) => Err(e),
        // A memory link neither fails nor carries undecodable messages.
        Err(e) => {
            tracing::warn!(error = %e, "in-process payment ended early");
            Ok(PaymentOutcome::Uncertain)
        }
    }
}

/// Runs one sync session between two nodes and persists both ledgers.
pub fn sync(a: &mut Node, b: &mut Node) -> Result<(SyncStats, SyncStats), SyncFailure> {
    let config = SyncConfig::default();
    let mut sa = SyncSide::new(a, config, Millis(0));
    let mut sb = SyncSide::new(b, config, Millis(0));
    let (mut la, mut lb) = MemoryLink::pair();
    exchange::drive_pair(
        Side {
            node: a,
            conversation: &mut sa,
            link: &mut la,
        },
        Side {
            node: b,
            conversation: &mut sb,
            link: &mut lb,
        },
        SYNC_LIMIT_MS,
    )?;
    a.persist_ledger()?;
    b.persist_ledger()?;
    Ok((sa.stats().clone(), sb.stats().clone()))
}

/// Why an in-process sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncFailure {
    /// The session failed.
    #[error("sync: {0}")]
    Session(#[from] SyncError),
    /// Persisting afterwards failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl From<ExchangeError> for SyncFailure {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Sync(e) => SyncFailure::Session(e),
            ExchangeError::Node(e) => SyncFailure::Node(e),
            ExchangeError::TimedOut(ms) => SyncFailure::Session(SyncError::TimedOut(ms)),
            ExchangeError::Decode(e) => SyncFailure::Session(SyncError::Decode(e)),
            // A memory link is never closed by `sync`; were it, the session
            // would be over.
            ExchangeError::Link(_) => SyncFailure::Session(SyncError::AlreadyFailed),
        }
    }
}
