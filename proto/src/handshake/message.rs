use serde::{Deserialize, Serialize};

use crate::allowance::Allowance;
use crate::crypto::Signature;
use crate::encoding::Encode;
use crate::transfer::{Invoice, Transfer, TransferId};
use crate::validate::Rule;

/// What payer and payee say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentMessage {
    /// Payee -> payer: the request.
    Invoice(Invoice),
    /// Payer -> payee: the signed transfer, with the allowance unless the
    /// payer believes the payee has it.
    Transfer {
        /// The allowance, when sent along.
        allowance: Option<Box<Allowance>>,
        /// The transfer.
        transfer: Transfer,
    },
    /// Payee -> payer: the acknowledgement, sent only once the receipt is
    /// durably stored.
    Ack {
        /// The acknowledged transfer.
        transfer: TransferId,
        /// The payee's signature over it.
        signature: Signature,
    },
    /// Payee -> payer: the transfer fails a rule.
    Reject {
        /// The rejected transfer.
        transfer: TransferId,
        /// The broken rule.
        rule: Rule,
    },
}

impl Encode for PaymentMessage {
    const KIND: &'static str = "payment message";
}

impl PaymentMessage {
    /// Short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            PaymentMessage::Invoice(_) => "invoice",
            PaymentMessage::Transfer { .. } => "transfer",
            PaymentMessage::Ack { .. } => "ack",
            PaymentMessage::Reject { .. } => "reject",
        }
    }
}
