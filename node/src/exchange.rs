//! Payments and ledger syncs over any [`Link`]: one driving loop for the
//! in-process transport ([`crate::local`]), the emulated BLE link and a
//! real GATT connection.
//!
//! A [`Conversation`] is one side of one protocol run (the payer's, the
//! payee's, or a sync session) with the node's durable effects carried
//! out as messages arrive. Each message on the link starts with a
//! [`Channel`] byte, so a payment and a sync can follow each other on one
//! connection and a late retransmission of one never reaches the other.
//!
//! [`drive_pair`] runs both ends in one thread (tests, benchmarks, the
//! demo); [`drive`] runs one end against a remote peer.

use meshpay_proto::encoding::DecodeError;
use meshpay_proto::prelude::*;
use meshpay_proto::sync::{SyncConfig, SyncError, SyncSession, SyncStats};

use crate::node::{Node, NodeError};
use crate::transport::{Link, LinkError, Wait};

/// Which conversation a message on a link belongs to (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Channel {
    /// The payment handshake ([`PaymentMessage`]s).
    Payment = 1,
    /// A ledger sync session (sync frames).
    Sync = 2,
}

/// What the connecting side of a BLE link wants: one byte in the link's
/// first message (see [`crate::ble::secure`]), since the side connected to
/// cannot tell otherwise (the payee speaks first in a payment, either side
/// in a sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Intent {
    /// Pay the pending invoice of the side connected to, then sync.
    Pay = 1,
    /// Sync ledgers.
    Sync = 2,
}

impl Intent {
    /// Reads the byte.
    pub fn from_byte(b: u8) -> Option<Intent> {
        match b {
            1 => Some(Intent::Pay),
            2 => Some(Intent::Sync),
            _ => None,
        }
    }
}

/// Why an exchange ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The link failed (lost, or the peer broke the framing).
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// The node failed (storage).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The sync session failed.
    #[error("sync: {0}")]
    Sync(#[from] SyncError),
    /// A payment message did not decode.
    #[error("payment message refused: {0}")]
    Decode(#[from] DecodeError),
    /// The exchange did not finish within its time limit (link clock).
    #[error("exchange did not finish within {0} ms")]
    TimedOut(u64),
}

impl From<HandshakeError> for ExchangeError {
    fn from(e: HandshakeError) -> Self {
        ExchangeError::Node(NodeError::Handshake(e))
    }
}

/// One side of one protocol run over a link.
pub trait Conversation {
    /// The channel its messages travel on.
    fn channel(&self) -> Channel;
    /// Handles one message from the peer (without the channel byte).
    fn handle(&mut self, node: &mut Node, message: &[u8], now: Millis)
    -> Result<(), ExchangeError>;
    /// Called before messages are taken for the link: stores what must be
    /// on disk before they leave. Nothing by default (a payment side's
    /// effects store their own).
    fn before_transmit(&mut self, _node: &mut Node) -> Result<(), ExchangeError> {
        Ok(())
    }
    /// The next message to send, if any.
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// When [`Conversation::handle_timeout`] wants to be called.
    fn poll_timeout(&self) -> Option<Millis>;
    /// Drives timers (retransmissions, caps).
    fn handle_timeout(&mut self, node: &mut Node, now: Millis) -> Result<(), ExchangeError>;
    /// Whether this side has reached its end.
    fn is_done(&self) -> bool;
}

/// What both payment sides forward to their session unchanged.
macro_rules! payment_plumbing {
    () => {
        fn poll_transmit(&mut self) -> Option<Vec<u8>> {
            self.session.poll_transmit().map(|m| m.encode())
        }

        fn poll_timeout(&self) -> Option<Millis> {
            self.session.poll_timeout()
        }

        fn handle_timeout(&mut self, _: &mut Node, now: Millis) -> Result<(), ExchangeError> {
            self.session.handle_timeout(now);
            Ok(())
        }
    };
}

/// The payer's side: confirms the invoice (starting the exchange is the
/// user's consent), commits the spend before the transfer leaves, stores
/// the receipt when the acknowledgement comes.
#[derive(Debug)]
pub struct PayerSide {
    session: PayerSession,
    expected: Option<Expected>,
    declined: Option<String>,
}

/// The invoice a payer agreed to before it arrived (a tap: the user typed
/// the amount, the payee's invoice comes over the link). Any other is
/// declined, and nothing is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Amount in minor units.
    pub amount: u64,
    /// Currency.
    pub currency: Currency,
    /// The payee's wallet key (over BLE: the one the link's key exchange
    /// authenticated).
    pub payee: PublicKey,
}

impl Expected {
    /// `None` if `invoice` is the one expected, else why not.
    fn mismatch(&self, invoice: &Invoice) -> Option<String> {
        if invoice.payee != self.payee {
            return Some("the invoice names another payee than the one connected to".into());
        }
        if invoice.amount != self.amount || invoice.currency != self.currency {
            return Some(format!(
                "the payee asks {} {}, not the {} {} agreed",
                invoice.amount, invoice.currency, self.amount, self.currency
            ));
        }
        None
    }
}

impl PayerSide {
    /// Wraps a session from [`Node::start_payment`]; whatever invoice
    /// arrives is confirmed (starting the exchange is the user's consent).
    pub fn new(session: PayerSession) -> Self {
        PayerSide {
            session,
            expected: None,
            declined: None,
        }
    }

    /// Wraps a session that confirms only the `expected` invoice.
    pub fn expecting(session: PayerSession, expected: Expected) -> Self {
        PayerSide {
            expected: Some(expected),
            ..PayerSide::new(session)
        }
    }

    /// Why the invoice that arrived was declined, if it was.
    pub fn declined(&self) -> Option<&str> {
        self.declined.as_deref()
    }

    /// The payment's state.
    pub fn state(&self) -> &PayerState {
        self.session.state()
    }
}

impl Conversation for PayerSide {
    fn channel(&self) -> Channel {
        Channel::Payment
    }

    fn handle(
        &mut self,
        node: &mut Node,
        message: &[u8],
        now: Millis,
    ) -> Result<(), ExchangeError> {
        let message = PaymentMessage::decode(message)?;
        if let Err(e) = self.session.handle(message, now) {
            // A repeated invoice after the transfer left, say: the
            // machine's state is unchanged.
            tracing::debug!(error = %e, "payment message ignored");
        }
        if let Some(invoice) = node.drive_payer(&mut self.session, now)? {
            match self.expected.as_ref().and_then(|e| e.mismatch(&invoice)) {
                None => {
                    self.session.confirm()?;
                    node.drive_payer(&mut self.session, now)?;
                }
                Some(why) => {
                    tracing::info!(%why, "invoice declined");
                    self.session.decline()?;
                    self.declined = Some(why);
                }
            }
        }
        Ok(())
    }

    payment_plumbing!();

    fn is_done(&self) -> bool {
        self.session.state().is_final()
    }
}

/// The payee's side: checks the transfer, stores the receipt before the
/// acknowledgement leaves, answers a repeated transfer with the same
/// acknowledgement.
#[derive(Debug)]
pub struct PayeeSide {
    session: PayeeSession,
    wall_clock: Timestamp,
    refused: Vec<PaymentError>,
}

impl PayeeSide {
    /// Wraps a session from [`Node::request`]; `wall_clock` is the time
    /// transfers are checked against.
    pub fn new(session: PayeeSession, wall_clock: Timestamp) -> Self {
        PayeeSide {
            session,
            wall_clock,
            refused: Vec::new(),
        }
    }

    /// The payment's state.
    pub fn state(&self) -> &PayeeState {
        self.session.state()
    }

    /// Transfers refused so far, with the reason.
    pub fn refused(&self) -> &[PaymentError] {
        &self.refused
    }

    /// The session back (to answer a repeated transfer later).
    pub fn into_session(self) -> PayeeSession {
        self.session
    }
}

impl Conversation for PayeeSide {
    fn channel(&self) -> Channel {
        Channel::Payment
    }

    fn handle(&mut self, node: &mut Node, message: &[u8], _: Millis) -> Result<(), ExchangeError> {
        let message = PaymentMessage::decode(message)?;
        {
            let ctx = node.check_context(self.wall_clock);
            if let Err(e) = self.session.handle(message, &ctx) {
                tracing::debug!(error = %e, "payment message ignored");
            }
        }
        let refused = node.drive_payee(&mut self.session)?;
        self.refused.extend(refused);
        Ok(())
    }

    payment_plumbing!();

    fn is_done(&self) -> bool {
        // A payer told that the allowance is unknown sends it along; any
        // other refusal ends the payment.
        matches!(self.session.state(), PayeeState::Acknowledged(_))
            || self
                .refused
                .iter()
                .any(|e| e.rule() != Rule::AllowanceKnown)
    }
}

/// One side of a ledger sync session. Each sync frame is one link
/// message; the link cuts it to its own packet size.
#[derive(Debug)]
pub struct SyncSide {
    session: SyncSession,
}

impl SyncSide {
    /// Opens a session on `node`'s ledger at `now`, with a fresh peer state.
    pub fn new(node: &Node, config: SyncConfig, now: Millis) -> Self {
        SyncSide {
            session: SyncSession::new(node.ledger(), Default::default(), config, now),
        }
    }

    /// The session's counters.
    pub fn stats(&self) -> &SyncStats {
        self.session.stats()
    }
}

impl Conversation for SyncSide {
    fn channel(&self) -> Channel {
        Channel::Sync
    }

    fn handle(
        &mut self,
        node: &mut Node,
        message: &[u8],
        now: Millis,
    ) -> Result<(), ExchangeError> {
        Ok(self.session.handle_frame(node.ledger_mut(), message, now)?)
    }

    fn before_transmit(&mut self, node: &mut Node) -> Result<(), ExchangeError> {
        Ok(node.store_own_writes()?)
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.session.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Millis> {
        self.session.poll_timeout()
    }

    fn handle_timeout(&mut self, _: &mut Node, now: Millis) -> Result<(), ExchangeError> {
        Ok(self.session.handle_timeout(now)?)
    }

    fn is_done(&self) -> bool {
        self.session.is_finished()
    }
}

/// One end of an exchange: the node, its side of the conversation and
/// its end of the link.
pub struct Side<'a> {
    /// The node.
    pub node: &'a mut Node,
    /// Its side of the protocol run.
    pub conversation: &'a mut dyn Conversation,
    /// Its end of the link.
    pub link: &'a mut dyn Link,
}

impl core::fmt::Debug for Side<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Side")
            .field("node", &self.node.name())
            .field("done", &self.conversation.is_done())
            .finish()
    }
}

/// How an exchange ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The conversation(s) reached their end.
    Finished,
    /// Nothing was in flight and no timer was due: nothing more can
    /// happen on this link.
    Stalled,
}

fn millis(us: u64) -> Millis {
    Millis(us / 1000)
}

/// Moves everything that can move now on one side: outgoing messages onto
/// the link, arrived messages into the conversation, due timers. Returns
/// whether anything moved.
/// With `leave_rest`, a side that is done takes no further message: what
/// follows on the link belongs to the next conversation on it.
fn pump(side: &mut Side<'_>, leave_rest: bool) -> Result<bool, ExchangeError> {
    let channel = side.conversation.channel() as u8;
    let mut moved = false;
    loop {
        let mut step = false;
        side.conversation.before_transmit(side.node)?;
        while let Some(body) = side.conversation.poll_transmit() {
            let mut message = Vec::with_capacity(body.len() + 1);
            message.push(channel);
            message.extend_from_slice(&body);
            side.link.send(&message)?;
            step = true;
        }
        if leave_rest && side.conversation.is_done() {
            return Ok(moved || step);
        }
        let received = match side.link.try_recv() {
            Ok(m) => m,
            // A peer that hung up after this side finished: this side has
            // its outcome. (Frames of ours still waiting for credit were
            // not needed: the peer finished without them.)
            Err(_) if side.conversation.is_done() => {
                return Ok(moved || step);
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(message) = received {
            step = true;
            let now = millis(side.link.now_us());
            match message.split_first() {
                Some((&c, body)) if c == channel => {
                    side.conversation.handle(side.node, body, now)?;
                }
                _ => tracing::debug!(
                    len = message.len(),
                    "message for another conversation dropped"
                ),
            }
        }
        let now = millis(side.link.now_us());
        if side.conversation.poll_timeout().is_some_and(|t| t <= now) {
            side.conversation.handle_timeout(side.node, now)?;
            step = true;
        }
        if !step {
            return Ok(moved);
        }
        moved = true;
    }
}

fn next_timer_us(timers: impl IntoIterator<Item = Option<Millis>>) -> Option<u64> {
    timers
        .into_iter()
        .flatten()
        .map(|t| t.0.saturating_mul(1000))
        .min()
}

/// Runs both ends of an exchange in this thread until both are done, or
/// `a` is done and nothing is in flight, until the link stalls, or
/// until `limit_ms` of link time has passed. The two links must be the
/// two ends of one pair (they share a clock).
pub fn drive_pair(mut a: Side<'_>, mut b: Side<'_>, limit_ms: u64) -> Result<Ended, ExchangeError> {
    let start = a.link.now_us();
    let limit_us = start.saturating_add(limit_ms.saturating_mul(1000));
    loop {
        let moved = pump(&mut a, false)? | pump(&mut b, false)?;
        let (a_done, b_done) = (a.conversation.is_done(), b.conversation.is_done());
        if a_done && b_done {
            return Ok(Ended::Finished);
        }
        if moved {
            continue;
        }
        if a_done {
            // Let what is in flight land; once nothing is, the other side
            // only has its own timers left.
            match a.link.wait(None) {
                Ok(Wait::Idle) | Err(_) => return Ok(Ended::Finished),
                Ok(_) => continue,
            }
        }
        if a.link.now_us() >= limit_us {
            return Err(ExchangeError::TimedOut(limit_ms));
        }
        let deadline =
            next_timer_us([a.conversation.poll_timeout(), b.conversation.poll_timeout()])
                .unwrap_or(limit_us)
                .min(limit_us);
        if a.link.wait(Some(deadline))? == Wait::Idle {
            return Ok(Ended::Stalled);
        }
    }
}

/// Moves everything that can move now on one end of an exchange against a
/// remote peer (what [`drive`] does between two waits): for a caller that
/// reaches the node only now and then and waits on the link itself.
/// Returns whether anything moved.
pub fn step(side: &mut Side<'_>) -> Result<bool, ExchangeError> {
    pump(side, true)
}

/// Runs one end of an exchange against a remote peer until the
/// conversation is done and its last messages have left this end, or
/// `limit_ms` of link time has passed.
pub fn drive(mut side: Side<'_>, limit_ms: u64) -> Result<Ended, ExchangeError> {
    let start = side.link.now_us();
    let limit_us = start.saturating_add(limit_ms.saturating_mul(1000));
    loop {
        let moved = pump(&mut side, true)?;
        let done = side.conversation.is_done();
        // Done, and the last messages have left (not held for credit):
        // the caller may close the link.
        if done && side.link.is_flushed() {
            return Ok(Ended::Finished);
        }
        if moved {
            continue;
        }
        if side.link.now_us() >= limit_us {
            return Err(ExchangeError::TimedOut(limit_ms));
        }
        let timer = if done {
            None
        } else {
            side.conversation.poll_timeout()
        };
        let deadline = next_timer_us([timer]).unwrap_or(limit_us).min(limit_us);
        match side.link.wait(Some(deadline)) {
            Ok(Wait::Idle) => return Ok(Ended::Stalled),
            Ok(_) => {}
            // Done, and the peer hung up before returning credit for our
            // last frames: it finished without them, and this side has its
            // outcome.
            Err(_) if done => return Ok(Ended::Finished),
            Err(e) => return Err(e.into()),
        }
    }
}
