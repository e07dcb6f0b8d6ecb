use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{HandshakeError, PaymentMessage};
use crate::allowance::{Allowance, Restriction};
use crate::crypto::{PublicKey, SecretKey, Signature};
use crate::time::{Millis, Timestamp};
use crate::transfer::{Invoice, Receipt, Transfer, TransferBody, TransferId, verify_ack};
use crate::validate::{self, PaymentError, PaymentPolicy, Rule};

/// The payer's durable counter for one allowance: the next sequence number
/// to use and the cumulative amount signed so far.
///
/// It only moves forward, and it moves (durably) before a signature leaves
/// the device: that is what makes a crash unable to reuse a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendState {
    /// Sequence number of the next transfer.
    pub next_seq: u32,
    /// Cumulative amount of every transfer signed so far, answered or not.
    pub cumulative: u64,
}

impl SpendState {
    /// Nothing spent yet.
    pub const FRESH: SpendState = SpendState {
        next_seq: 1,
        cumulative: 0,
    };
}

/// Payer tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayerConfig {
    /// Wait this long for an acknowledgement before sending the same
    /// transfer again.
    pub retry_interval_ms: u64,
    /// Sends of the transfer before giving up as [`PayerState::Uncertain`].
    pub max_attempts: u32,
    /// Attach the allowance to the first send. A payer that knows the payee
    /// holds it (same mesh) can leave it out; the payee asks for it if not.
    pub send_allowance: bool,
    /// Clock tolerance for the payer's own expiry check.
    pub policy: PaymentPolicy,
}

impl Default for PayerConfig {
    fn default() -> Self {
        PayerConfig {
            retry_interval_ms: 250,
            max_attempts: 8,
            send_allowance: true,
            policy: PaymentPolicy::default(),
        }
    }
}

/// Where a payment stands, from the payer's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayerState {
    /// Waiting for the payee's invoice.
    AwaitingInvoice,
    /// The user is asked to confirm this invoice ([`PayerEffect::Confirm`]).
    AwaitingConfirmation(Invoice),
    /// Signed but not released: waiting for the caller to commit
    /// [`PayerEffect::PersistSpend`].
    AwaitingDurable(Transfer),
    /// Sent; waiting for the acknowledgement.
    AwaitingAck {
        /// The one transfer for this sequence number.
        transfer: Transfer,
        /// Sends so far.
        attempts: u32,
        /// When to send it again.
        retry_at: Millis,
    },
    /// Done: the payee acknowledged.
    Paid(Receipt),
    /// The user declined. Nothing was signed.
    Declined,
    /// The payer refused the invoice before signing. Nothing was signed.
    Refused(PaymentError),
    /// The payee refused the transfer. Its sequence number stays used.
    Rejected {
        /// The refused transfer.
        transfer: Transfer,
        /// The rule the payee named.
        rule: Rule,
    },
    /// No answer after every retry. The sequence number stays used and the
    /// amount counts as spent: the payer's own risk, refunded at settlement
    /// if no receipt for it ever arrives.
    Uncertain(Transfer),
}

impl PayerState {
    fn name(&self) -> &'static str {
        match self {
            PayerState::AwaitingInvoice => "awaiting invoice",
            PayerState::AwaitingConfirmation(_) => "awaiting confirmation",
            PayerState::AwaitingDurable(_) => "awaiting durable spend",
            PayerState::AwaitingAck { .. } => "awaiting acknowledgement",
            PayerState::Paid(_) => "paid",
            PayerState::Declined => "declined",
            PayerState::Refused(_) => "refused",
            PayerState::Rejected { .. } => "rejected",
            PayerState::Uncertain(_) => "uncertain",
        }
    }

    /// Whether the session has ended.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            PayerState::Paid(_)
                | PayerState::Declined
                | PayerState::Refused(_)
                | PayerState::Rejected { .. }
                | PayerState::Uncertain(_)
        )
    }
}

/// What the payer's caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayerEffect {
    /// Show the invoice to the user; call [`PayerSession::confirm`] or
    /// [`PayerSession::decline`].
    Confirm(Invoice),
    /// Durably commit `spend` as this allowance's counter and keep
    /// `transfer` as the pending one (to resend after a crash); then call
    /// [`PayerSession::spend_persisted`]. Until then nothing is released.
    PersistSpend {
        /// The signed, unreleased transfer.
        transfer: Transfer,
        /// The counter after it.
        spend: SpendState,
    },
    /// Store the receipt: the payer's proof of payment.
    StoreReceipt(Receipt),
}

/// The payer's side of one payment.
#[derive(Debug)]
pub struct PayerSession {
    allowance: Allowance,
    key: SecretKey,
    spend: SpendState,
    wall_clock: Timestamp,
    config: PayerConfig,
    /// The payee's key from the invoice, decoded once, to check its
    /// acknowledgement.
    payee: Option<PublicKey>,
    /// The invoice being paid, to recognise its repeats.
    invoice: Option<Invoice>,
    state: PayerState,
    transmit: VecDeque<PaymentMessage>,
    effects: VecDeque<PayerEffect>,
}

impl PayerSession {
    /// A payment from `allowance`, whose counter stands at `spend`.
    /// `wall_clock` is the payer's clock, used for its own expiry check and
    /// written (advisory) into the transfer.
    pub fn new(
        allowance: Allowance,
        key: SecretKey,
        spend: SpendState,
        wall_clock: Timestamp,
        config: PayerConfig,
    ) -> Self {
        PayerSession {
            allowance,
            key,
            spend,
            wall_clock,
            config,
            payee: None,
            invoice: None,
            state: PayerState::AwaitingInvoice,
            transmit: VecDeque::new(),
            effects: VecDeque::new(),
        }
    }

    /// Picks up a transfer that was persisted as pending before a restart:
    /// it is sent again unchanged, never re-signed.
    pub fn resume(
        allowance: Allowance,
        key: SecretKey,
        pending: Transfer,
        now: Millis,
        config: PayerConfig,
    ) -> Self {
        let spend = SpendState {
            next_seq: pending.header().seq.saturating_add(1),
            cumulative: pending.header().cumulative,
        };
        let wall_clock = pending.body().payer_time;
        let mut s = Self::new(allowance, key, spend, wall_clock, config);
        // Our own transfer: the key was valid when we signed it. Should it
        // somehow not be, no acknowledgement verifies and the payment ends
        // as uncertain.
        s.payee = pending.body().payee.to_public_key().ok();
        s.state = PayerState::AwaitingDurable(pending);
        // Already durable: release it at once.
        let _ = s.spend_persisted(now);
        s
    }

    /// The current state.
    pub fn state(&self) -> &PayerState {
        &self.state
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<PaymentMessage> {
        self.transmit.pop_front()
    }

    /// The next thing the caller must do, if any.
    pub fn poll_effect(&mut self) -> Option<PayerEffect> {
        self.effects.pop_front()
    }

    /// When [`PayerSession::handle_timeout`] wants to be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match &self.state {
            PayerState::AwaitingAck { retry_at, .. } => Some(*retry_at),
            _ => None,
        }
    }

    /// Handles a message from the payee.
    pub fn handle(&mut self, message: PaymentMessage, now: Millis) -> Result<(), HandshakeError> {
        match message {
            PaymentMessage::Invoice(invoice) => self.handle_invoice(invoice),
            PaymentMessage::Ack {
                transfer,
                signature,
            } => self.handle_ack(transfer, signature),
            PaymentMessage::Reject { transfer, rule } => self.handle_reject(transfer, rule, now),
            PaymentMessage::Transfer { .. } => Err(self.unexpected("transfer")),
        }
    }

    fn handle_invoice(&mut self, invoice: Invoice) -> Result<(), HandshakeError> {
        if !matches!(self.state, PayerState::AwaitingInvoice) {
            // The payee repeats its invoice until a transfer reaches it: a
            // repeat of the one in hand is not an error.
            let same = self.invoice.as_ref() == Some(&invoice)
                || self.released().is_some_and(|t| {
                    t.body().nonce == invoice.nonce && t.body().payee == invoice.payee
                });
            return if same {
                Ok(())
            } else {
                Err(self.unexpected("invoice"))
            };
        }
        self.invoice = Some(invoice.clone());
        match self.precheck(&invoice) {
            Ok(()) => {
                self.payee = Some(invoice.payee);
                self.effects
                    .push_back(PayerEffect::Confirm(invoice.clone()));
                self.state = PayerState::AwaitingConfirmation(invoice);
            }
            Err(e) => self.state = PayerState::Refused(e),
        }
        Ok(())
    }

    /// The one transfer released in this session, if any.
    fn released(&self) -> Option<&Transfer> {
        match &self.state {
            PayerState::AwaitingAck { transfer, .. }
            | PayerState::Rejected { transfer, .. }
            | PayerState::Uncertain(transfer) => Some(transfer),
            _ => None,
        }
    }

    fn handle_ack(&mut self, id: TransferId, signature: Signature) -> Result<(), HandshakeError> {
        if matches!(self.state, PayerState::Paid(_)) {
            return Ok(()); // a duplicate
        }
        let Some(transfer) = self.released() else {
            return Err(self.unexpected("ack"));
        };
        if id != transfer.id() {
            return Err(HandshakeError::WrongTransfer);
        }
        let acknowledged = self
            .payee
            .as_ref()
            .is_some_and(|payee| verify_ack(payee, &id, &signature));
        if !acknowledged {
            return Err(HandshakeError::BadAcknowledgement);
        }
        // Also after giving up or after a rejection: a late but genuine
        // acknowledgement is the payer's proof of payment.
        let receipt = Receipt {
            transfer: transfer.clone(),
            payee_signature: signature,
        };
        self.effects
            .push_back(PayerEffect::StoreReceipt(receipt.clone()));
        self.state = PayerState::Paid(receipt);
        Ok(())
    }

    fn handle_reject(
        &mut self,
        id: TransferId,
        rule: Rule,
        now: Millis,
    ) -> Result<(), HandshakeError> {
        if self.state.is_final() {
            return Ok(()); // late or duplicate
        }
        let PayerState::AwaitingAck {
            transfer,
            attempts,
            retry_at,
        } = &mut self.state
        else {
            return Err(self.unexpected("reject"));
        };
        if id != transfer.id() {
            return Err(HandshakeError::WrongTransfer);
        }
        if rule == Rule::AllowanceKnown && *attempts < self.config.max_attempts {
            // The payee lacks the allowance: the same transfer again, this
            // time with it. Counted as an attempt, so a payee that keeps
            // asking cannot keep the payer sending.
            // With it now, and on every retry from now on.
            self.config.send_allowance = true;
            self.transmit
                .push_back(transfer_message(&self.allowance, true, transfer));
            *attempts += 1;
            *retry_at = now.plus(self.config.retry_interval_ms);
        } else {
            // Unauthenticated: the transfer may still have reached the
            // payee, so its sequence number stays used either way.
            self.state = PayerState::Rejected {
                transfer: transfer.clone(),
                rule,
            };
        }
        Ok(())
    }

    fn unexpected(&self, message: &'static str) -> HandshakeError {
        HandshakeError::Unexpected {
            message,
            state: self.state.name(),
        }
    }

    /// The payer's own checks before asking the user: would this payment
    /// be valid at all?
    fn precheck(&self, invoice: &Invoice) -> Result<(), PaymentError> {
        let a = &self.allowance;
        validate::check_currency(invoice, a)?;
        // A key-set restriction the payer can check itself; a class
        // restriction needs the payee's credential checked against the
        // trust store, which the payee does.
        if let Some(Restriction::Payees(set)) = &a.restriction
            && !set.contains(&invoice.payee)
        {
            return Err(PaymentError::PayeeNotAllowed);
        }
        validate::check_memo(invoice)?;
        validate::check_validity_window(a, self.wall_clock, &self.config.policy)?;
        if invoice.amount == 0 {
            return Err(PaymentError::ZeroAmount);
        }
        if invoice.amount > a.caps.max_per_payment {
            return Err(PaymentError::OverPaymentCap {
                amount: invoice.amount,
                cap: a.caps.max_per_payment,
            });
        }
        if self.spend.next_seq == 0 || self.spend.next_seq > a.caps.max_payments {
            return Err(PaymentError::SequenceOutOfRange {
                seq: self.spend.next_seq,
                max: a.caps.max_payments,
            });
        }
        match self.spend.cumulative.checked_add(invoice.amount) {
            Some(c) if c <= a.amount => Ok(()),
            _ => Err(PaymentError::OverAllowance {
                cumulative: self.spend.cumulative.saturating_add(invoice.amount),
                amount: a.amount,
            }),
        }
    }

    /// The user confirmed: sign the transfer and ask the caller to persist
    /// the spend. The signature is not released yet.
    pub fn confirm(&mut self) -> Result<(), HandshakeError> {
        let PayerState::AwaitingConfirmation(invoice) = &self.state else {
            return Err(self.wrong_call("confirm"));
        };
        // precheck() guaranteed these do not overflow.
        let seq = self.spend.next_seq;
        let cumulative = self.spend.cumulative + invoice.amount;
        let body = TransferBody {
            payee: invoice.payee.into(),
            nonce: invoice.nonce,
            payer_time: self.wall_clock,
        };
        let transfer = Transfer::sign(
            self.allowance.id,
            seq,
            cumulative,
            invoice.amount,
            body,
            &self.key,
        );
        self.spend = SpendState {
            next_seq: seq + 1,
            cumulative,
        };
        self.effects.push_back(PayerEffect::PersistSpend {
            transfer: transfer.clone(),
            spend: self.spend,
        });
        self.state = PayerState::AwaitingDurable(transfer);
        Ok(())
    }

    /// The user declined: nothing is signed.
    pub fn decline(&mut self) -> Result<(), HandshakeError> {
        if !matches!(self.state, PayerState::AwaitingConfirmation(_)) {
            return Err(self.wrong_call("decline"));
        }
        self.state = PayerState::Declined;
        Ok(())
    }

    /// The caller committed [`PayerEffect::PersistSpend`]: release the
    /// transfer.
    pub fn spend_persisted(&mut self, now: Millis) -> Result<(), HandshakeError> {
        let PayerState::AwaitingDurable(transfer) = &self.state else {
            return Err(self.wrong_call("spend_persisted"));
        };
        let transfer = transfer.clone();
        self.transmit.push_back(transfer_message(
            &self.allowance,
            self.config.send_allowance,
            &transfer,
        ));
        self.state = PayerState::AwaitingAck {
            transfer,
            attempts: 1,
            retry_at: now.plus(self.config.retry_interval_ms),
        };
        Ok(())
    }

    /// Drives retries: the same transfer again, or give up as uncertain.
    pub fn handle_timeout(&mut self, now: Millis) {
        let PayerState::AwaitingAck {
            transfer,
            attempts,
            retry_at,
        } = &mut self.state
        else {
            return;
        };
        if now < *retry_at {
            return;
        }
        if *attempts >= self.config.max_attempts {
            self.state = PayerState::Uncertain(transfer.clone());
            return;
        }
        *attempts += 1;
        *retry_at = now.plus(self.config.retry_interval_ms);
        self.transmit.push_back(transfer_message(
            &self.allowance,
            self.config.send_allowance,
            transfer,
        ));
    }

    /// The counter as it stands after this session.
    pub fn spend(&self) -> SpendState {
        self.spend
    }

    fn wrong_call(&self, call: &'static str) -> HandshakeError {
        HandshakeError::WrongCall {
            call,
            state: self.state.name(),
        }
    }
}

/// The one transfer of a session, with the allowance attached if asked.
fn transfer_message(allowance: &Allowance, attach: bool, transfer: &Transfer) -> PaymentMessage {
    PaymentMessage::Transfer {
        allowance: attach.then(|| Box::new(allowance.clone())),
        transfer: transfer.clone(),
    }
}
