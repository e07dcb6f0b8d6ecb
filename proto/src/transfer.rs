//! Invoices, transfers (public header + private body) and receipts.

use serde::{Deserialize, Serialize};

use crate::allowance::{AllowanceId, Currency, PayeeCredential};
use crate::bytes::byte_newtype;
use crate::crypto::{Hash, KeyBytes, PublicKey, SecretKey, Signature, domain};
use crate::encoding::Encode;
use crate::signed::{Signed, SignedTerms};
use crate::time::Timestamp;

byte_newtype!(
    /// A fresh random invoice nonce: binds a transfer to one invoice.
    Nonce,
    16
);

/// Longest invoice memo, in bytes of UTF-8.
pub const MAX_MEMO_LEN: usize = 64;

/// Payee -> payer: "pay me this".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// The payee wallet key; the payer's transfer names it and the payee's
    /// acknowledgement is checked against it.
    pub payee: PublicKey,
    /// Amount in minor units.
    pub amount: u64,
    /// Currency or voucher code.
    pub currency: Currency,
    /// Fresh random nonce, never reused by this payee.
    pub nonce: Nonce,
    /// Text shown to the payer, at most [`MAX_MEMO_LEN`] bytes.
    pub memo: Option<String>,
    /// The payee's class credential, for allowances restricted by class.
    pub credential: Option<Box<PayeeCredential>>,
}

impl Encode for Invoice {
    const KIND: &'static str = "invoice";
}

/// The private part of a transfer: seen by payer, payee and settlement only.
/// Relays see only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferBody {
    /// Who is paid (checked as a key only when the receipt's
    /// acknowledgement is verified).
    pub payee: KeyBytes,
    /// The invoice nonce.
    pub nonce: Nonce,
    /// The payer's clock when it signed (advisory only).
    pub payer_time: Timestamp,
}

impl Encode for TransferBody {
    const KIND: &'static str = "transfer body";
}

impl TransferBody {
    /// `SHA-256("meshpay/v1/transfer-body" || 0x00 || body)`.
    pub fn hash(&self) -> Hash {
        Hash::tagged(domain::TRANSFER_BODY, &self.encode_body())
    }
}

/// The public part of a transfer: what the partial ledger holds and every
/// relay sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransferHeader {
    /// The allowance spent from.
    pub allowance: AllowanceId,
    /// 1, 2, 3, ... per allowance.
    pub seq: u32,
    /// Total spent on this allowance up to and including this transfer.
    pub cumulative: u64,
    /// This transfer's amount, in minor units. Public so that any relay
    /// can check that cumulatives account for every transfer, even with
    /// sequence numbers missing in between (see [`crate::conflict`]).
    pub amount: u64,
    /// Hash of the body.
    pub body_hash: Hash,
}

impl Encode for TransferHeader {
    const KIND: &'static str = "transfer header";
}

impl SignedTerms for TransferHeader {
    const DOMAIN: &'static [u8] = domain::TRANSFER_HEADER;
    const SIGNED_KIND: &'static str = "signed transfer header";
}

byte_newtype!(
    /// `SHA-256("meshpay/v1/transfer-header" || 0x00 || header)`: the
    /// identity of a transfer, and what the payee acknowledges.
    TransferId,
    32
);

impl TransferHeader {
    /// The transfer id.
    pub fn id(&self) -> TransferId {
        TransferId(Hash::tagged(domain::TRANSFER_HEADER, &self.encode_body()).0)
    }
}

/// A payer-signed transfer header, as gossiped without its body.
pub type SignedHeader = Signed<TransferHeader>;

/// A payer-signed transfer with its body.
///
/// On the wire the body hash is not sent (it is recomputed from the body),
/// which keeps a receipt within one BLE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    header: TransferHeader,
    body: TransferBody,
    payer_signature: Signature,
}

impl Transfer {
    /// Builds and signs a transfer.
    pub fn sign(
        allowance: AllowanceId,
        seq: u32,
        cumulative: u64,
        amount: u64,
        body: TransferBody,
        payer: &SecretKey,
    ) -> Transfer {
        let header = TransferHeader {
            allowance,
            seq,
            cumulative,
            amount,
            body_hash: body.hash(),
        };
        let signed = Signed::sign(header, payer);
        Transfer {
            header,
            body,
            payer_signature: signed.signature,
        }
    }

    /// The public header.
    pub fn header(&self) -> &TransferHeader {
        &self.header
    }

    /// The private body.
    pub fn body(&self) -> &TransferBody {
        &self.body
    }

    /// The payer's signature over the header.
    pub fn payer_signature(&self) -> &Signature {
        &self.payer_signature
    }

    /// The transfer id.
    pub fn id(&self) -> TransferId {
        self.header.id()
    }

    /// The header with its signature, without the body (what relays carry).
    pub fn signed_header(&self) -> SignedHeader {
        Signed {
            terms: self.header,
            signature: self.payer_signature,
        }
    }

    /// Puts a signed header and its body back together; `None` if the body
    /// is not the one the header commits to. The payer's signature is not
    /// checked here.
    pub fn from_parts(header: SignedHeader, body: TransferBody) -> Option<Transfer> {
        let matches = header.terms.body_hash == body.hash();
        matches.then_some(Transfer {
            header: header.terms,
            body,
            payer_signature: header.signature,
        })
    }

    /// Whether `payer` signed the header (and so, through the hash, the body).
    pub fn verify_payer(&self, payer: &PublicKey) -> bool {
        self.signed_header().verify_by(payer)
    }
}

#[derive(Serialize, Deserialize)]
struct TransferWire {
    allowance: AllowanceId,
    seq: u32,
    cumulative: u64,
    amount: u64,
    body: TransferBody,
    payer_signature: Signature,
}

impl Serialize for Transfer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TransferWire {
            allowance: self.header.allowance,
            seq: self.header.seq,
            cumulative: self.header.cumulative,
            amount: self.header.amount,
            body: self.body.clone(),
            payer_signature: self.payer_signature,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Transfer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = TransferWire::deserialize(d)?;
        Ok(Transfer {
            header: TransferHeader {
                allowance: w.allowance,
                seq: w.seq,
                cumulative: w.cumulative,
                amount: w.amount,
                body_hash: w.body.hash(),
            },
            body: w.body,
            payer_signature: w.payer_signature,
        })
    }
}

impl Encode for Transfer {
    const KIND: &'static str = "transfer";
}

/// A transfer acknowledged by its payee: the payee's claim, and the payer's
/// proof of payment. This is what reaches settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The transfer.
    pub transfer: Transfer,
    /// The payee's signature over the transfer id.
    pub payee_signature: Signature,
}

impl Encode for Receipt {
    const KIND: &'static str = "receipt";
}

impl Receipt {
    /// The payee acknowledges `transfer`.
    pub fn acknowledge(transfer: Transfer, payee: &SecretKey) -> Receipt {
        let payee_signature = payee.sign(domain::RECEIPT_ACK, transfer.id().as_bytes());
        Receipt {
            transfer,
            payee_signature,
        }
    }

    /// Whether the payee named in the body made the acknowledgement.
    pub fn verify_payee(&self) -> bool {
        self.transfer
            .body
            .payee
            .to_public_key()
            .is_ok_and(|payee| verify_ack(&payee, &self.transfer.id(), &self.payee_signature))
    }

    /// Both signatures: `payer` over the header, the body's payee over the id.
    pub fn verify(&self, payer: &PublicKey) -> bool {
        self.transfer.verify_payer(payer) && self.verify_payee()
    }
}

/// Whether `payee` acknowledged transfer `id` with `signature`.
pub fn verify_ack(payee: &PublicKey, id: &TransferId, signature: &Signature) -> bool {
    payee.verify(domain::RECEIPT_ACK, id.as_bytes(), signature)
}

/// Verifies the payer signatures of many transfers in one batch (what
/// settlement does with a batch of receipts). `true` only if every one is
/// valid; on `false`, verify one by one to find the culprits.
pub fn verify_transfers_batch<'a>(
    items: impl IntoIterator<Item = (&'a Transfer, &'a PublicKey)>,
) -> bool {
    let mut messages = Vec::new();
    let mut signatures = Vec::new();
    let mut keys = Vec::new();
    for (t, k) in items {
        messages.push(t.signed_header().signing_message());
        signatures.push(&t.payer_signature);
        keys.push(*k);
    }
    let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    crate::crypto::verify_batch_parts(&slices, signatures.into_iter(), keys.into_iter())
}
