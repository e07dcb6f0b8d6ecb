//! The dual-offline payment handshake as two sans-I/O state machines.
//!
//! ```text
//!  payee                                   payer
//!  PayeeSession::new ── Invoice ────────▶  handle(Invoice)
//!                                          poll_effect: Confirm (ask the user)
//!                                          confirm()
//!                                          poll_effect: PersistSpend  ── caller commits ──┐
//!                                          spend_persisted()  ◀──────────────────────────┘
//!  handle(Transfer) ◀── Transfer ───────   (retransmitted, unchanged, until acknowledged)
//!  poll_effect: PersistReceipt ── caller commits ──┐
//!  receipt_persisted() ◀──────────────────────────┘
//!                     ── Ack ───────────▶  handle(Ack)
//!                                          poll_effect: StoreReceipt
//! ```
//!
//! Neither machine does I/O, reads a clock or draws randomness: messages come
//! in through `handle`, go out through `poll_transmit`, durable writes are
//! requested through `poll_effect` and confirmed by a call, and timers are
//! driven by `poll_timeout` / `handle_timeout` with a caller-supplied
//! monotonic [`Millis`](crate::time::Millis).

mod message;
mod payee;
mod payer;

pub use message::PaymentMessage;
pub use payee::{INVOICE_RETRY_MS, PayeeEffect, PayeeSession, PayeeState};
pub use payer::{PayerConfig, PayerEffect, PayerSession, PayerState, SpendState};

/// A message that does not fit the machine's state. The machine's state is
/// unchanged; the caller may log it and, for a peer that keeps sending
/// them, drop the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message kind is not expected now.
    #[error("unexpected {message} message while {state}")]
    Unexpected {
        /// What arrived.
        message: &'static str,
        /// The machine's state.
        state: &'static str,
    },
    /// An acknowledgement or rejection for another transfer.
    #[error("reply names another transfer")]
    WrongTransfer,
    /// An acknowledgement whose signature is not the payee's.
    #[error("acknowledgement signature does not verify against the invoice's payee")]
    BadAcknowledgement,
    /// The call does not fit the machine's state (a caller bug).
    #[error("{call} called while {state}")]
    WrongCall {
        /// The method called.
        call: &'static str,
        /// The machine's state.
        state: &'static str,
    },
}
