//! Nodes in one process, linked in memory: a payment runs both protocol
//! machines and hands each message straight to the other side, and a sync
//! session moves frames the same way. The same machines and the same
//! durable effects as over a network; only the transport is direct.

use meshpay_proto::prelude::*;
use meshpay_proto::sync::{SyncConfig, SyncError, SyncSession, SyncStats};

use crate::node::{Node, NodeError};

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
    let t = Millis(0);
    let config = PayerConfig {
        // The payee may already hold the allowance from the mesh; if not,
        // it asks and the payer sends it along.
        send_allowance: false,
        ..PayerConfig::default()
    };
    let mut payer_session = payer.start_payment(amount, now, config)?;
    let mut payee_session = payee.request(amount, currency, memo.map(str::to_string), t)?;
    for _ in 0..32 {
        let mut moved = false;
        while let Some(m) = payee_session.poll_transmit() {
            moved = true;
            // An unexpected message is the other side's business; the
            // machine's state is unchanged.
            let _ = payer_session.handle(m, t);
        }
        if payer.drive_payer(&mut payer_session, t)?.is_some() {
            payer_session.confirm()?;
            payer.drive_payer(&mut payer_session, t)?;
        }
        while let Some(m) = payer_session.poll_transmit() {
            moved = true;
            let ctx = payee.check_context(now);
            let _ = payee_session.handle(m, &ctx);
            payee.drive_payee(&mut payee_session)?;
        }
        payer.drive_payer(&mut payer_session, t)?;
        match payer_session.state() {
            PayerState::Paid(r) => return Ok(PaymentOutcome::Paid(Box::new(r.clone()))),
            PayerState::Rejected { rule, .. } => return Ok(PaymentOutcome::Refused(*rule)),
            PayerState::Refused(e) => return Ok(PaymentOutcome::PayerRefused(e.clone())),
            PayerState::Uncertain(_) => return Ok(PaymentOutcome::Uncertain),
            _ => {}
        }
        if !moved {
            break;
        }
    }
    Ok(PaymentOutcome::Uncertain)
}

/// Runs one sync session between two nodes and persists both ledgers.
pub fn sync(a: &mut Node, b: &mut Node) -> Result<(SyncStats, SyncStats), SyncFailure> {
    let config = SyncConfig::default();
    let mut sa = SyncSession::new(a.ledger(), Default::default(), config, Millis(0));
    let mut sb = SyncSession::new(b.ledger(), Default::default(), config, Millis(0));
    for step in 0..1_000_000u64 {
        let mut moved = false;
        if let Some(f) = sa.poll_transmit() {
            sb.handle_frame(b.ledger_mut(), &f, Millis(step))?;
            moved = true;
        }
        if let Some(f) = sb.poll_transmit() {
            sa.handle_frame(a.ledger_mut(), &f, Millis(step))?;
            moved = true;
        }
        if (sa.is_finished() && sb.is_finished()) || !moved {
            break;
        }
    }
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
