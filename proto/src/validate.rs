//! The payee's offline check, one function per rule.
//!
//! Each rule is a function that returns `Ok(())` or a [`PaymentError`] that
//! names the rule ([`PaymentError::rule`]). [`check_payment`] runs them all
//! in the order of docs/protocol.md, "The payee's check". Settlement repeats
//! the same functions.

use serde::{Deserialize, Serialize};

use crate::allowance::{Allowance, AllowanceId, PayeeCredential, Restriction, TrustStore};
use crate::conflict::{ConflictProof, detect};
use crate::crypto::PublicKey;
use crate::time::Timestamp;
use crate::transfer::{Invoice, MAX_MEMO_LEN, SignedHeader, Transfer};

/// Tolerances of the offline check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentPolicy {
    /// How far a device clock may be off, in seconds. An allowance is
    /// accepted from `issued_at - skew` until `expires_at + skew`.
    pub clock_skew_secs: u64,
}

impl Default for PaymentPolicy {
    /// Ten minutes: offline devices drift, allowances last days.
    fn default() -> Self {
        PaymentPolicy {
            clock_skew_secs: 600,
        }
    }
}

/// What a node has heard from the mesh, as the payee's check needs it.
/// The partial ledger implements it; [`KnownHeaders`](crate::known::KnownHeaders) is a plain one.
pub trait MeshView {
    /// Whether a revocation list the node holds names the allowance or its
    /// wallet.
    fn is_revoked(&self, allowance: &AllowanceId, wallet: &PublicKey) -> bool;
    /// Whether the node holds a conflict proof against the allowance.
    fn has_conflict(&self, allowance: &AllowanceId) -> bool;
    /// Every transfer header of the allowance the node holds (verified).
    fn headers(&self, allowance: &AllowanceId) -> Vec<SignedHeader>;
    /// The allowance, if the node has it cached (already verified).
    fn allowance(&self, id: &AllowanceId) -> Option<VerifiedAllowance>;
}

/// An allowance whose issuer signature and issuer key have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAllowance(Allowance);

impl VerifiedAllowance {
    /// Rules `issuer-trusted` (the issuer key is the root, or certified for
    /// the allowance's whole life) and `issuer-signature`.
    pub fn verify(allowance: Allowance, trust: &TrustStore) -> Result<Self, PaymentError> {
        if !trust.is_issuer_for(&allowance.issuer, allowance.issued_at, allowance.expires_at) {
            return Err(PaymentError::UntrustedIssuer);
        }
        if !allowance.verify_by(&allowance.issuer) {
            return Err(PaymentError::BadIssuerSignature);
        }
        Ok(VerifiedAllowance(allowance))
    }

    /// Wraps an allowance the caller has already verified (the ledger
    /// checks everything before it enters).
    pub(crate) fn checked(allowance: Allowance) -> Self {
        VerifiedAllowance(allowance)
    }

    /// The allowance.
    pub fn allowance(&self) -> &Allowance {
        &self.0
    }

    /// Takes the allowance out.
    pub fn into_inner(self) -> Allowance {
        self.0
    }
}

/// The rules, as a code that travels in a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rule {
    /// The allowance's issuer key is neither the root nor certified by it.
    IssuerTrusted,
    /// The issuer signature on the allowance verifies.
    IssuerSignature,
    /// Not before `issued_at - skew`.
    NotYetValid,
    /// Not after `expires_at + skew`.
    NotExpired,
    /// Neither the allowance nor its wallet is revoked.
    NotRevoked,
    /// No conflict proof is known against the allowance.
    NoKnownConflict,
    /// The transfer names the allowance presented.
    SameAllowance,
    /// The wallet key signed the transfer header.
    PayerSignature,
    /// `1 <= seq <= max_payments`.
    SequenceInRange,
    /// `amount > 0`.
    AmountPositive,
    /// `amount <= max_per_payment`.
    PaymentCap,
    /// `cumulative <= allowance amount`.
    WithinAllowance,
    /// `cumulative >= amount + seq - 1` (every earlier transfer carried at
    /// least 1).
    CumulativeCoversAmount,
    /// No known header with the same sequence number and another body, and
    /// cumulatives account for every amount across known headers (see
    /// [`crate::conflict::undercounts`]).
    ConsistentWithMesh,
    /// `cumulative == previous cumulative + amount` when header `seq - 1` is known.
    CumulativeStep,
    /// The body names this payee.
    InvoicePayee,
    /// The body carries this invoice's nonce.
    InvoiceNonce,
    /// The transfer's amount is the invoice's.
    InvoiceAmount,
    /// The allowance's currency is the invoice's.
    InvoiceCurrency,
    /// The invoice memo is at most 64 bytes.
    MemoLength,
    /// The restriction of the allowance admits this payee.
    PayeeAllowed,
    /// The payee does not hold the allowance: send it along.
    AllowanceKnown,
    /// The invoice was already paid by another transfer.
    InvoiceOpen,
}

/// A failed check, naming the rule and the figures involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// See [`Rule::IssuerTrusted`].
    #[error("rule issuer-trusted: the allowance's issuer key is not trusted")]
    UntrustedIssuer,
    /// See [`Rule::IssuerSignature`].
    #[error("rule issuer-signature: the issuer signature on the allowance is invalid")]
    BadIssuerSignature,
    /// See [`Rule::NotYetValid`].
    #[error("rule not-yet-valid: allowance issued at {issued_at}, now is {now}")]
    NotYetValid {
        /// Allowance issue time.
        issued_at: Timestamp,
        /// The checker's clock.
        now: Timestamp,
    },
    /// See [`Rule::NotExpired`].
    #[error("rule not-expired: allowance expired at {expires_at}, now is {now}")]
    Expired {
        /// Allowance expiry.
        expires_at: Timestamp,
        /// The checker's clock.
        now: Timestamp,
    },
    /// See [`Rule::NotRevoked`].
    #[error("rule not-revoked: the allowance or its wallet is revoked")]
    Revoked,
    /// See [`Rule::NoKnownConflict`].
    #[error("rule no-known-conflict: a conflict proof against this allowance is known")]
    ConflictKnown,
    /// See [`Rule::SameAllowance`].
    #[error("rule same-allowance: the transfer names another allowance")]
    WrongAllowance,
    /// See [`Rule::PayerSignature`].
    #[error("rule payer-signature: the transfer is not signed by the allowance's wallet")]
    BadPayerSignature,
    /// See [`Rule::SequenceInRange`].
    #[error("rule sequence-in-range: sequence {seq} outside 1..={max}")]
    SequenceOutOfRange {
        /// The transfer's sequence number.
        seq: u32,
        /// The allowance's cap.
        max: u32,
    },
    /// See [`Rule::AmountPositive`].
    #[error("rule amount-positive: amount is zero")]
    ZeroAmount,
    /// See [`Rule::PaymentCap`].
    #[error("rule payment-cap: amount {amount} exceeds the per-payment cap {cap}")]
    OverPaymentCap {
        /// The amount.
        amount: u64,
        /// The cap.
        cap: u64,
    },
    /// See [`Rule::WithinAllowance`].
    #[error("rule within-allowance: cumulative {cumulative} exceeds the allowance amount {amount}")]
    OverAllowance {
        /// The transfer's cumulative.
        cumulative: u64,
        /// The allowance amount.
        amount: u64,
    },
    /// See [`Rule::CumulativeCoversAmount`].
    #[error(
        "rule cumulative-covers-amount: cumulative {cumulative} is below the amount {amount} plus one per earlier transfer"
    )]
    CumulativeBelowAmount {
        /// The transfer's cumulative.
        cumulative: u64,
        /// Its amount.
        amount: u64,
    },
    /// See [`Rule::ConsistentWithMesh`]: the payer double-spent, and here is
    /// the proof.
    #[error("rule consistent-with-mesh: the transfer conflicts with a known one")]
    Conflict(Box<ConflictProof>),
    /// See [`Rule::CumulativeStep`].
    #[error(
        "rule cumulative-step: cumulative {cumulative} != previous {previous} + amount {amount}"
    )]
    CumulativeMismatch {
        /// The transfer's cumulative.
        cumulative: u64,
        /// Cumulative of header `seq - 1`.
        previous: u64,
        /// The transfer's amount.
        amount: u64,
    },
    /// See [`Rule::InvoicePayee`].
    #[error("rule invoice-payee: the transfer pays another payee")]
    WrongPayee,
    /// See [`Rule::InvoiceNonce`].
    #[error("rule invoice-nonce: the transfer is for another invoice")]
    WrongNonce,
    /// See [`Rule::InvoiceAmount`].
    #[error("rule invoice-amount: the transfer pays {paid}, the invoice asks {asked}")]
    WrongAmount {
        /// Amount in the transfer.
        paid: u64,
        /// Amount in the invoice.
        asked: u64,
    },
    /// See [`Rule::InvoiceCurrency`].
    #[error("rule invoice-currency: the allowance is in another currency than the invoice")]
    WrongCurrency,
    /// See [`Rule::MemoLength`].
    #[error("rule memo-length: the memo has {len} bytes, at most {MAX_MEMO_LEN} are allowed")]
    MemoTooLong {
        /// Its length.
        len: usize,
    },
    /// See [`Rule::PayeeAllowed`].
    #[error("rule payee-allowed: the allowance's restriction does not admit this payee")]
    PayeeNotAllowed,
    /// See [`Rule::AllowanceKnown`].
    #[error("rule allowance-known: the payee does not hold this allowance")]
    UnknownAllowance,
    /// See [`Rule::InvoiceOpen`].
    #[error("rule invoice-open: this invoice was already paid by another transfer")]
    InvoicePaid,
}

impl Rule {
    /// The rule's name as the error messages and docs/protocol.md spell it.
    pub fn name(self) -> &'static str {
        match self {
            Rule::IssuerTrusted => "issuer-trusted",
            Rule::IssuerSignature => "issuer-signature",
            Rule::NotYetValid => "not-yet-valid",
            Rule::NotExpired => "not-expired",
            Rule::NotRevoked => "not-revoked",
            Rule::NoKnownConflict => "no-known-conflict",
            Rule::SameAllowance => "same-allowance",
            Rule::PayerSignature => "payer-signature",
            Rule::SequenceInRange => "sequence-in-range",
            Rule::AmountPositive => "amount-positive",
            Rule::PaymentCap => "payment-cap",
            Rule::WithinAllowance => "within-allowance",
            Rule::CumulativeCoversAmount => "cumulative-covers-amount",
            Rule::ConsistentWithMesh => "consistent-with-mesh",
            Rule::CumulativeStep => "cumulative-step",
            Rule::InvoicePayee => "invoice-payee",
            Rule::InvoiceNonce => "invoice-nonce",
            Rule::InvoiceAmount => "invoice-amount",
            Rule::InvoiceCurrency => "invoice-currency",
            Rule::MemoLength => "memo-length",
            Rule::PayeeAllowed => "payee-allowed",
            Rule::AllowanceKnown => "allowance-known",
            Rule::InvoiceOpen => "invoice-open",
        }
    }
}

impl PaymentError {
    /// The rule that was broken.
    pub fn rule(&self) -> Rule {
        match self {
            PaymentError::UntrustedIssuer => Rule::IssuerTrusted,
            PaymentError::BadIssuerSignature => Rule::IssuerSignature,
            PaymentError::NotYetValid { .. } => Rule::NotYetValid,
            PaymentError::Expired { .. } => Rule::NotExpired,
            PaymentError::Revoked => Rule::NotRevoked,
            PaymentError::ConflictKnown => Rule::NoKnownConflict,
            PaymentError::WrongAllowance => Rule::SameAllowance,
            PaymentError::BadPayerSignature => Rule::PayerSignature,
            PaymentError::SequenceOutOfRange { .. } => Rule::SequenceInRange,
            PaymentError::ZeroAmount => Rule::AmountPositive,
            PaymentError::OverPaymentCap { .. } => Rule::PaymentCap,
            PaymentError::OverAllowance { .. } => Rule::WithinAllowance,
            PaymentError::CumulativeBelowAmount { .. } => Rule::CumulativeCoversAmount,
            PaymentError::Conflict(_) => Rule::ConsistentWithMesh,
            PaymentError::CumulativeMismatch { .. } => Rule::CumulativeStep,
            PaymentError::WrongPayee => Rule::InvoicePayee,
            PaymentError::WrongNonce => Rule::InvoiceNonce,
            PaymentError::WrongAmount { .. } => Rule::InvoiceAmount,
            PaymentError::WrongCurrency => Rule::InvoiceCurrency,
            PaymentError::MemoTooLong { .. } => Rule::MemoLength,
            PaymentError::PayeeNotAllowed => Rule::PayeeAllowed,
            PaymentError::UnknownAllowance => Rule::AllowanceKnown,
            PaymentError::InvoicePaid => Rule::InvoiceOpen,
        }
    }
}

/// Rules `not-yet-valid` and `not-expired`, with the clock-skew tolerance.
pub fn check_validity_window(
    allowance: &Allowance,
    now: Timestamp,
    policy: &PaymentPolicy,
) -> Result<(), PaymentError> {
    let skew = policy.clock_skew_secs;
    if now.plus(skew) < allowance.issued_at {
        return Err(PaymentError::NotYetValid {
            issued_at: allowance.issued_at,
            now,
        });
    }
    if now.minus(skew) > allowance.expires_at {
        return Err(PaymentError::Expired {
            expires_at: allowance.expires_at,
            now,
        });
    }
    Ok(())
}

/// Rules `not-revoked` and `no-known-conflict`.
pub fn check_standing(allowance: &Allowance, mesh: &dyn MeshView) -> Result<(), PaymentError> {
    if mesh.is_revoked(&allowance.id, &allowance.wallet) {
        return Err(PaymentError::Revoked);
    }
    if mesh.has_conflict(&allowance.id) {
        return Err(PaymentError::ConflictKnown);
    }
    Ok(())
}

/// Rules `same-allowance` and `payer-signature`.
pub fn check_payer_signature(
    transfer: &Transfer,
    allowance: &Allowance,
) -> Result<(), PaymentError> {
    if transfer.header().allowance != allowance.id {
        return Err(PaymentError::WrongAllowance);
    }
    if !transfer.verify_payer(&allowance.wallet) {
        return Err(PaymentError::BadPayerSignature);
    }
    Ok(())
}

/// Rules `sequence-in-range`, `amount-positive`, `payment-cap`,
/// `within-allowance` and `cumulative-covers-amount`: the checks on the
/// transfer and its allowance alone.
pub fn check_limits(transfer: &Transfer, allowance: &Allowance) -> Result<(), PaymentError> {
    let h = transfer.header();
    let amount = h.amount;
    if h.seq == 0 || h.seq > allowance.caps.max_payments {
        return Err(PaymentError::SequenceOutOfRange {
            seq: h.seq,
            max: allowance.caps.max_payments,
        });
    }
    if amount == 0 {
        return Err(PaymentError::ZeroAmount);
    }
    if amount > allowance.caps.max_per_payment {
        return Err(PaymentError::OverPaymentCap {
            amount,
            cap: allowance.caps.max_per_payment,
        });
    }
    if h.cumulative > allowance.amount {
        return Err(PaymentError::OverAllowance {
            cumulative: h.cumulative,
            amount: allowance.amount,
        });
    }
    if u128::from(h.cumulative) < u128::from(amount) + u128::from(h.seq - 1) {
        return Err(PaymentError::CumulativeBelowAmount {
            cumulative: h.cumulative,
            amount,
        });
    }
    Ok(())
}

/// Rules `consistent-with-mesh` and `cumulative-step`: the transfer against
/// every header of its allowance that the node has heard of. A fork or a
/// rewound cumulative comes back as a [`ConflictProof`].
pub fn check_against_known(
    transfer: &Transfer,
    known: &[SignedHeader],
) -> Result<(), PaymentError> {
    let this = transfer.signed_header();
    let h = transfer.header();
    // Conflicts first, over every header, so the answer does not depend on
    // the order the mesh view lists them in.
    if let Some(proof) = known.iter().find_map(|other| detect(&this, other)) {
        return Err(PaymentError::Conflict(Box::new(proof)));
    }
    for other in known {
        if other.seq.checked_add(1) == Some(h.seq) {
            let amount = h.amount;
            if other.cumulative.checked_add(amount) != Some(h.cumulative) {
                return Err(PaymentError::CumulativeMismatch {
                    cumulative: h.cumulative,
                    previous: other.cumulative,
                    amount,
                });
            }
        }
    }
    Ok(())
}

/// Rules `invoice-payee`, `invoice-nonce`, `invoice-amount` and
/// `invoice-currency`.
pub fn check_invoice_match(
    transfer: &Transfer,
    invoice: &Invoice,
    allowance: &Allowance,
) -> Result<(), PaymentError> {
    let body = transfer.body();
    let amount = transfer.header().amount;
    if body.payee != invoice.payee {
        return Err(PaymentError::WrongPayee);
    }
    if body.nonce != invoice.nonce {
        return Err(PaymentError::WrongNonce);
    }
    if amount != invoice.amount {
        return Err(PaymentError::WrongAmount {
            paid: amount,
            asked: invoice.amount,
        });
    }
    check_currency(invoice, allowance)
}

/// Rule `invoice-currency`.
pub fn check_currency(invoice: &Invoice, allowance: &Allowance) -> Result<(), PaymentError> {
    if allowance.currency != invoice.currency {
        return Err(PaymentError::WrongCurrency);
    }
    Ok(())
}

/// Rule `memo-length`.
pub fn check_memo(invoice: &Invoice) -> Result<(), PaymentError> {
    match &invoice.memo {
        Some(m) if m.len() > MAX_MEMO_LEN => Err(PaymentError::MemoTooLong { len: m.len() }),
        _ => Ok(()),
    }
}

/// Rule `payee-allowed`: the allowance's restriction admits the invoice's
/// payee. A class restriction needs the payee's credential in the invoice,
/// signed by a trusted issuer and valid now (with skew).
pub fn check_restriction(
    allowance: &Allowance,
    invoice: &Invoice,
    trust: &TrustStore,
    now: Timestamp,
    policy: &PaymentPolicy,
) -> Result<(), PaymentError> {
    check_payee_admitted(
        allowance,
        &invoice.payee,
        invoice.credential.as_deref(),
        trust,
        now,
        policy,
    )
}

/// Rule `payee-allowed` for a payee and the credential it presents (the
/// invoice's on the payee's device; the issuer's own records at
/// settlement).
pub fn check_payee_admitted(
    allowance: &Allowance,
    payee: &PublicKey,
    credential: Option<&PayeeCredential>,
    trust: &TrustStore,
    now: Timestamp,
    policy: &PaymentPolicy,
) -> Result<(), PaymentError> {
    match &allowance.restriction {
        None => Ok(()),
        Some(Restriction::Payees(set)) if set.contains(payee) => Ok(()),
        Some(Restriction::Payees(_)) => Err(PaymentError::PayeeNotAllowed),
        Some(Restriction::PayeeClass(class)) => {
            let ok = credential.is_some_and(|c| {
                c.payee == *payee
                    && c.class == *class
                    && now.minus(policy.clock_skew_secs) <= c.expires_at
                    && trust.is_issuer_at(&c.issuer, now)
                    && c.verify_by(&c.issuer)
            });
            if ok {
                Ok(())
            } else {
                Err(PaymentError::PayeeNotAllowed)
            }
        }
    }
}

/// Everything the payee's check needs besides the payment itself.
#[derive(Clone, Copy)]
pub struct CheckContext<'a> {
    /// The pinned root and known issuer certificates.
    pub trust: &'a TrustStore,
    /// Tolerances.
    pub policy: &'a PaymentPolicy,
    /// The checker's wall clock.
    pub now: Timestamp,
    /// What the node has heard from the mesh.
    pub mesh: &'a dyn MeshView,
}

/// The payee's whole offline check of `transfer` against `invoice`, in the
/// order of docs/protocol.md. The allowance's signature was checked when it
/// became a [`VerifiedAllowance`].
pub fn check_payment(
    ctx: &CheckContext<'_>,
    invoice: &Invoice,
    allowance: &VerifiedAllowance,
    transfer: &Transfer,
) -> Result<(), PaymentError> {
    let allowance = allowance.allowance();
    check_validity_window(allowance, ctx.now, ctx.policy)?;
    check_standing(allowance, ctx.mesh)?;
    check_payer_signature(transfer, allowance)?;
    check_limits(transfer, allowance)?;
    check_against_known(transfer, &ctx.mesh.headers(&allowance.id))?;
    check_invoice_match(transfer, invoice, allowance)?;
    check_memo(invoice)?;
    check_restriction(allowance, invoice, ctx.trust, ctx.now, ctx.policy)
}
