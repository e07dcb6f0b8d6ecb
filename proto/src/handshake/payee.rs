use std::collections::VecDeque;

use super::{HandshakeError, PaymentMessage};
use crate::allowance::{Allowance, Currency, PayeeCredential};
use crate::conflict::ConflictProof;
use crate::crypto::SecretKey;
use crate::time::Millis;
use crate::transfer::{Invoice, Nonce, Receipt, Transfer};
use crate::validate::{CheckContext, PaymentError, VerifiedAllowance, check_payment};

/// How often the payee repeats its invoice while no transfer has come.
pub const INVOICE_RETRY_MS: u64 = 500;

/// Where a payment stands, from the payee's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayeeState {
    /// The invoice is out; no acceptable transfer yet.
    AwaitingTransfer,
    /// A transfer passed the check; waiting for the caller to commit
    /// [`PayeeEffect::PersistReceipt`]. No acknowledgement leaves before.
    AwaitingDurable(Receipt),
    /// Stored and acknowledged. The same transfer again gets the same
    /// acknowledgement.
    Acknowledged(Receipt),
}

impl PayeeState {
    fn name(&self) -> &'static str {
        match self {
            PayeeState::AwaitingTransfer => "awaiting transfer",
            PayeeState::AwaitingDurable(_) => "awaiting durable receipt",
            PayeeState::Acknowledged(_) => "acknowledged",
        }
    }
}

/// What the payee's caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayeeEffect {
    /// Durably store the receipt (and cache the allowance), then call
    /// [`PayeeSession::receipt_persisted`].
    PersistReceipt {
        /// The receipt, already signed by this payee, not yet released.
        receipt: Receipt,
        /// Its allowance.
        allowance: Box<Allowance>,
    },
    /// The payer double-spent: store the proof and spread it first.
    RecordConflict(ConflictProof),
    /// A transfer was refused (the payer was told the rule).
    Refused(PaymentError),
}

/// The payee's side of one payment: one invoice, at most one accepted
/// transfer.
#[derive(Debug)]
pub struct PayeeSession {
    key: SecretKey,
    invoice: Invoice,
    state: PayeeState,
    invoice_retry_at: Millis,
    transmit: VecDeque<PaymentMessage>,
    effects: VecDeque<PayeeEffect>,
}

impl PayeeSession {
    /// Opens an invoice with a fresh nonce from `rng`.
    pub fn new<R: rand_core::CryptoRng + ?Sized>(
        key: SecretKey,
        amount: u64,
        currency: Currency,
        memo: Option<String>,
        credential: Option<Box<PayeeCredential>>,
        rng: &mut R,
        now: Millis,
    ) -> Self {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let invoice = Invoice {
            payee: key.public(),
            amount,
            currency,
            nonce: Nonce(nonce),
            memo,
            credential,
        };
        Self::with_invoice(key, invoice, now)
    }

    /// Opens a given invoice (its payee must be `key`'s public key).
    pub fn with_invoice(key: SecretKey, invoice: Invoice, now: Millis) -> Self {
        let mut transmit = VecDeque::new();
        transmit.push_back(PaymentMessage::Invoice(invoice.clone()));
        PayeeSession {
            key,
            invoice,
            state: PayeeState::AwaitingTransfer,
            invoice_retry_at: now.plus(INVOICE_RETRY_MS),
            transmit,
            effects: VecDeque::new(),
        }
    }

    /// Re-opens an invoice whose receipt was stored before a restart, so a
    /// retried transfer gets its acknowledgement again.
    pub fn resume_acknowledged(key: SecretKey, invoice: Invoice, receipt: Receipt) -> Self {
        PayeeSession {
            key,
            invoice,
            state: PayeeState::Acknowledged(receipt),
            invoice_retry_at: Millis(u64::MAX),
            transmit: VecDeque::new(),
            effects: VecDeque::new(),
        }
    }

    /// The invoice.
    pub fn invoice(&self) -> &Invoice {
        &self.invoice
    }

    /// The current state.
    pub fn state(&self) -> &PayeeState {
        &self.state
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<PaymentMessage> {
        self.transmit.pop_front()
    }

    /// The next thing the caller must do, if any.
    pub fn poll_effect(&mut self) -> Option<PayeeEffect> {
        self.effects.pop_front()
    }

    /// When [`PayeeSession::handle_timeout`] wants to be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        matches!(self.state, PayeeState::AwaitingTransfer).then_some(self.invoice_retry_at)
    }

    /// Repeats the invoice while no transfer has come.
    pub fn handle_timeout(&mut self, now: Millis) {
        if matches!(self.state, PayeeState::AwaitingTransfer) && now >= self.invoice_retry_at {
            self.transmit
                .push_back(PaymentMessage::Invoice(self.invoice.clone()));
            self.invoice_retry_at = now.plus(INVOICE_RETRY_MS);
        }
    }

    /// Handles a message from the payer. `ctx` is the node's view of trust,
    /// time and the mesh.
    pub fn handle(
        &mut self,
        message: PaymentMessage,
        ctx: &CheckContext<'_>,
    ) -> Result<(), HandshakeError> {
        let PaymentMessage::Transfer {
            allowance,
            transfer,
        } = message
        else {
            return Err(HandshakeError::Unexpected {
                message: message.kind(),
                state: self.state.name(),
            });
        };
        match &self.state {
            PayeeState::AwaitingTransfer => {
                self.check_and_accept(allowance, transfer, ctx);
            }
            PayeeState::AwaitingDurable(receipt) | PayeeState::Acknowledged(receipt) => {
                if receipt.transfer != transfer {
                    self.refuse(&transfer, PaymentError::InvoicePaid);
                } else if let PayeeState::Acknowledged(receipt) = &self.state {
                    // A retry: the acknowledgement was lost. Same answer.
                    self.transmit.push_back(ack_for(receipt));
                }
                // AwaitingDurable: the acknowledgement goes out once stored.
            }
        }
        Ok(())
    }

    fn check_and_accept(
        &mut self,
        sent: Option<Box<Allowance>>,
        transfer: Transfer,
        ctx: &CheckContext<'_>,
    ) {
        let id = transfer.header().allowance;
        let allowance = match (sent, ctx.mesh.allowance(&id)) {
            (Some(sent), Some(cached)) if *cached.allowance() == *sent => Ok(cached),
            (Some(sent), _) => VerifiedAllowance::verify(*sent, ctx.trust),
            (None, Some(cached)) => Ok(cached),
            (None, None) => Err(PaymentError::UnknownAllowance),
        };
        let result = allowance.and_then(|a| {
            check_payment(ctx, &self.invoice, &a, &transfer)?;
            Ok(a)
        });
        match result {
            Ok(allowance) => {
                let receipt = Receipt::acknowledge(transfer, &self.key);
                self.effects.push_back(PayeeEffect::PersistReceipt {
                    receipt: receipt.clone(),
                    allowance: Box::new(allowance.into_inner()),
                });
                self.state = PayeeState::AwaitingDurable(receipt);
            }
            Err(e) => self.refuse(&transfer, e),
        }
    }

    fn refuse(&mut self, transfer: &Transfer, error: PaymentError) {
        self.transmit.push_back(PaymentMessage::Reject {
            transfer: transfer.id(),
            rule: error.rule(),
        });
        if let PaymentError::Conflict(proof) = &error {
            self.effects
                .push_back(PayeeEffect::RecordConflict((**proof).clone()));
        }
        self.effects.push_back(PayeeEffect::Refused(error));
    }

    /// The caller committed [`PayeeEffect::PersistReceipt`]: release the
    /// acknowledgement.
    pub fn receipt_persisted(&mut self) -> Result<(), HandshakeError> {
        let PayeeState::AwaitingDurable(receipt) = &self.state else {
            return Err(HandshakeError::WrongCall {
                call: "receipt_persisted",
                state: self.state.name(),
            });
        };
        let receipt = receipt.clone();
        self.transmit.push_back(ack_for(&receipt));
        self.state = PayeeState::Acknowledged(receipt);
        Ok(())
    }
}

fn ack_for(receipt: &Receipt) -> PaymentMessage {
    PaymentMessage::Ack {
        transfer: receipt.transfer.id(),
        signature: receipt.payee_signature,
    }
}
