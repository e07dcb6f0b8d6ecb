//! Unit tests for every rule of the payee's offline check (validate.rs),
//! for conflict proofs (conflict.rs), and for the handshake machines driven
//! by hand (handshake/*.rs).
//!
//! For every [`Rule`] there is at least one case that passes the rule and
//! one that fails it with exactly the matching [`PaymentError`].

mod common;

use std::collections::{BTreeSet, HashSet};

use common::{
    NOW, allowance, allowance_with, invoice, issuer, key, mesh, payee, payer, terms, transfer_for,
    transfer_raw, trust,
};
use meshpay_proto::conflict::{ConflictProofError, detect};
use meshpay_proto::prelude::*;
use meshpay_proto::validate::{
    check_against_known, check_currency, check_invoice_match, check_limits, check_memo,
    check_payer_signature, check_payment, check_restriction, check_standing, check_validity_window,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Asserts that `$result` is an error matching `$pat` whose `rule()` is
/// `$rule`, and evaluates to the error.
macro_rules! assert_fails {
    ($result:expr, $pat:pat $(if $guard:expr)?, $rule:expr $(,)?) => {{
        let err = $result.expect_err("the check should fail");
        assert!(
            matches!(err, $pat $(if $guard)?),
            "wrong error: {err:?}"
        );
        assert_eq!(err.rule(), $rule, "wrong rule for {err:?}");
        err
    }};
}

const SKEW: u64 = 600;

fn policy() -> PaymentPolicy {
    PaymentPolicy {
        clock_skew_secs: SKEW,
    }
}

/// The fixture allowance's id.
fn aid() -> AllowanceId {
    terms().id
}

fn other_aid() -> AllowanceId {
    AllowanceId([0xB2; 16])
}

fn usd() -> Currency {
    Currency::new("USD").expect("valid code")
}

/// A key certified by the root in some tests; never the root itself.
fn delegate() -> SecretKey {
    key(10)
}

/// A key nobody trusts.
fn stranger() -> SecretKey {
    key(9)
}

fn certificate(
    certified: &SecretKey,
    not_before: Timestamp,
    not_after: Timestamp,
    signer: &SecretKey,
) -> IssuerCertificate {
    IssuerCertificate::sign(
        IssuerCertificateTerms {
            key: certified.public(),
            not_before,
            not_after,
        },
        signer,
    )
}

/// The fixture terms, issued at `issued_at`, naming and signed by `signer`.
fn allowance_signed_by(signer: &SecretKey, issued_at: Timestamp) -> Allowance {
    allowance_signed_by_for(signer, issued_at, terms().expires_at)
}

fn allowance_signed_by_for(
    signer: &SecretKey,
    issued_at: Timestamp,
    expires_at: Timestamp,
) -> Allowance {
    let mut t = terms();
    t.issuer = signer.public();
    t.issued_at = issued_at;
    t.expires_at = expires_at;
    Allowance::sign(t, signer)
}

fn credential_for(
    payee_key: PublicKey,
    class: u32,
    expires_at: Timestamp,
    signer: &SecretKey,
) -> PayeeCredential {
    PayeeCredential::sign(
        PayeeCredentialTerms {
            payee: payee_key,
            class,
            expires_at,
            issuer: signer.public(),
        },
        signer,
    )
}

fn credential(class: u32, expires_at: Timestamp, signer: &SecretKey) -> PayeeCredential {
    credential_for(payee().public(), class, expires_at, signer)
}

fn invoice_with_credential(c: Option<PayeeCredential>) -> Invoice {
    let mut inv = invoice(450, 7);
    inv.credential = c.map(Box::new);
    inv
}

/// A signed header with an arbitrary body, for conflict tests.
fn header(signer: &SecretKey, seq: u32, cumulative: u64, nonce: u8) -> SignedHeader {
    transfer_raw(
        signer,
        payee().public(),
        100,
        Nonce([nonce; 16]),
        seq,
        cumulative,
    )
    .signed_header()
}

fn header_of(allowance_id: AllowanceId, seq: u32, cumulative: u64, nonce: u8) -> SignedHeader {
    let body = TransferBody {
        payee: payee().public().into(),
        nonce: Nonce([nonce; 16]),
        payer_time: NOW,
    };
    Transfer::sign(allowance_id, seq, cumulative, 100, body, &payer()).signed_header()
}

/// A node's view for the payee's check.
struct Env {
    trust: TrustStore,
    policy: PaymentPolicy,
    now: Timestamp,
    mesh: KnownHeaders,
}

impl Env {
    fn new() -> Self {
        Env {
            trust: trust(),
            policy: policy(),
            now: NOW,
            mesh: mesh(),
        }
    }

    fn ctx(&self) -> CheckContext<'_> {
        CheckContext {
            trust: &self.trust,
            policy: &self.policy,
            now: self.now,
            mesh: &self.mesh,
        }
    }

    fn check_with(
        &self,
        a: Allowance,
        invoice: &Invoice,
        transfer: &Transfer,
    ) -> Result<(), PaymentError> {
        let a = VerifiedAllowance::verify(a, &self.trust).expect("allowance verifies");
        check_payment(&self.ctx(), invoice, &a, transfer)
    }

    fn check(&self, invoice: &Invoice, transfer: &Transfer) -> Result<(), PaymentError> {
        self.check_with(allowance(), invoice, transfer)
    }

    fn add_header(&mut self, h: SignedHeader) {
        let proof = self.mesh.add_header(h).expect("header accepted");
        assert!(proof.is_none(), "fixture headers must not conflict");
    }
}

// ---------------------------------------------------------------------------
// Rule <-> error mapping
// ---------------------------------------------------------------------------

#[test]
fn every_error_names_a_distinct_rule() {
    let fork = detect(&header(&payer(), 1, 100, 1), &header(&payer(), 1, 100, 2)).expect("a fork");
    let cases = [
        (PaymentError::UntrustedIssuer, Rule::IssuerTrusted),
        (PaymentError::BadIssuerSignature, Rule::IssuerSignature),
        (
            PaymentError::NotYetValid {
                issued_at: NOW,
                now: NOW,
            },
            Rule::NotYetValid,
        ),
        (
            PaymentError::Expired {
                expires_at: NOW,
                now: NOW,
            },
            Rule::NotExpired,
        ),
        (PaymentError::Revoked, Rule::NotRevoked),
        (PaymentError::ConflictKnown, Rule::NoKnownConflict),
        (PaymentError::WrongAllowance, Rule::SameAllowance),
        (PaymentError::BadPayerSignature, Rule::PayerSignature),
        (
            PaymentError::SequenceOutOfRange { seq: 0, max: 1 },
            Rule::SequenceInRange,
        ),
        (PaymentError::ZeroAmount, Rule::AmountPositive),
        (
            PaymentError::OverPaymentCap { amount: 2, cap: 1 },
            Rule::PaymentCap,
        ),
        (
            PaymentError::OverAllowance {
                cumulative: 2,
                amount: 1,
            },
            Rule::WithinAllowance,
        ),
        (
            PaymentError::CumulativeBelowAmount {
                cumulative: 1,
                amount: 2,
            },
            Rule::CumulativeCoversAmount,
        ),
        (
            PaymentError::Conflict(Box::new(fork)),
            Rule::ConsistentWithMesh,
        ),
        (
            PaymentError::CumulativeMismatch {
                cumulative: 3,
                previous: 1,
                amount: 1,
            },
            Rule::CumulativeStep,
        ),
        (PaymentError::WrongPayee, Rule::InvoicePayee),
        (PaymentError::WrongNonce, Rule::InvoiceNonce),
        (
            PaymentError::WrongAmount { paid: 1, asked: 2 },
            Rule::InvoiceAmount,
        ),
        (PaymentError::WrongCurrency, Rule::InvoiceCurrency),
        (PaymentError::MemoTooLong { len: 65 }, Rule::MemoLength),
        (PaymentError::PayeeNotAllowed, Rule::PayeeAllowed),
        (PaymentError::UnknownAllowance, Rule::AllowanceKnown),
        (PaymentError::InvoicePaid, Rule::InvoiceOpen),
    ];
    let mut seen = HashSet::new();
    for (err, rule) in &cases {
        assert_eq!(err.rule(), *rule, "{err:?}");
        assert!(seen.insert(*rule), "{rule:?} named twice");
    }
    assert_eq!(seen.len(), 23);
}

// ---------------------------------------------------------------------------
// issuer-trusted, issuer-signature
// ---------------------------------------------------------------------------

#[test]
fn issuer_root_key_is_trusted() {
    let v = VerifiedAllowance::verify(allowance(), &trust()).expect("root-signed allowance");
    assert_eq!(v.allowance(), &allowance());
    assert_eq!(v.into_inner(), allowance());
}

#[test]
fn issuer_certified_key_is_trusted_inside_its_window() {
    let mut ts = trust();
    let from = NOW.minus(86_400);
    let until = NOW.plus(30 * 86_400);
    assert!(ts.add_certificate(certificate(&delegate(), from, until, &issuer())));
    // The allowance's whole life (issued_at ..= expires_at) inside the window.
    for (issued_at, expires_at) in [(from, NOW), (NOW, until), (from, until)] {
        let a = allowance_signed_by_for(&delegate(), issued_at, expires_at);
        VerifiedAllowance::verify(a, &ts).expect("certified key inside its window");
    }
}

#[test]
fn issuer_certified_key_is_untrusted_outside_its_window() {
    let mut ts = trust();
    let from = NOW.minus(86_400);
    let until = NOW.plus(30 * 86_400);
    assert!(ts.add_certificate(certificate(&delegate(), from, until, &issuer())));
    // Issued before the window opens, or living past its end (a retired key
    // cannot sign anything still usable after its certificate ends).
    for (issued_at, expires_at) in [
        (from.minus(1), NOW),
        (NOW, until.plus(1)),
        (until.plus(1), until.plus(2)),
    ] {
        let a = allowance_signed_by_for(&delegate(), issued_at, expires_at);
        assert_fails!(
            VerifiedAllowance::verify(a, &ts),
            PaymentError::UntrustedIssuer,
            Rule::IssuerTrusted,
        );
    }
}

#[test]
fn issuer_uncertified_key_is_untrusted() {
    let a = allowance_signed_by(&delegate(), NOW);
    assert_fails!(
        VerifiedAllowance::verify(a, &trust()),
        PaymentError::UntrustedIssuer,
        Rule::IssuerTrusted,
    );
}

#[test]
fn issuer_certificate_not_signed_by_root_is_ignored() {
    let mut ts = trust();
    let bogus = certificate(&delegate(), NOW.minus(10), NOW.plus(10), &stranger());
    assert!(!ts.add_certificate(bogus));
    // A self-certified key is no better.
    let selfie = certificate(&delegate(), NOW.minus(10), NOW.plus(10), &delegate());
    assert!(!ts.add_certificate(selfie));
    assert_fails!(
        VerifiedAllowance::verify(allowance_signed_by(&delegate(), NOW), &ts),
        PaymentError::UntrustedIssuer,
        Rule::IssuerTrusted,
    );
}

#[test]
fn issuer_certificate_with_inverted_window_is_refused() {
    let mut ts = trust();
    let inverted = certificate(&delegate(), NOW.plus(10), NOW.minus(10), &issuer());
    assert!(!ts.add_certificate(inverted));
    assert!(!ts.is_issuer_at(&delegate().public(), NOW));
}

#[test]
fn issuer_signature_over_tampered_terms_is_refused() {
    let mut a = allowance();
    a.terms.amount = 1_000_000;
    assert_fails!(
        VerifiedAllowance::verify(a, &trust()),
        PaymentError::BadIssuerSignature,
        Rule::IssuerSignature,
    );
}

#[test]
fn issuer_signature_by_another_key_is_refused() {
    // Names the trusted root, but a stranger signed it.
    let a = Allowance::sign(terms(), &stranger());
    assert_fails!(
        VerifiedAllowance::verify(a, &trust()),
        PaymentError::BadIssuerSignature,
        Rule::IssuerSignature,
    );
    // Names a certified key, but the root signed it.
    let mut ts = trust();
    assert!(ts.add_certificate(certificate(
        &delegate(),
        NOW.minus(86_400),
        NOW.plus(30 * 86_400),
        &issuer()
    )));
    let a = allowance_with(|t| t.issuer = delegate().public());
    assert_fails!(
        VerifiedAllowance::verify(a, &ts),
        PaymentError::BadIssuerSignature,
        Rule::IssuerSignature,
    );
}

// ---------------------------------------------------------------------------
// not-yet-valid, not-expired
// ---------------------------------------------------------------------------

#[test]
fn validity_inside_window_passes() {
    check_validity_window(&allowance(), NOW, &policy()).expect("fixture is valid now");
}

#[test]
fn expiry_accepted_just_inside_skew() {
    let a = allowance();
    let edge = a.expires_at.plus(SKEW);
    check_validity_window(&a, a.expires_at, &policy()).expect("at expiry");
    check_validity_window(&a, edge, &policy()).expect("at expiry + skew");
}

#[test]
fn expiry_refused_just_past_skew() {
    let a = allowance();
    let now = a.expires_at.plus(SKEW + 1);
    let err = assert_fails!(
        check_validity_window(&a, now, &policy()),
        PaymentError::Expired { .. },
        Rule::NotExpired,
    );
    assert_eq!(
        err,
        PaymentError::Expired {
            expires_at: a.expires_at,
            now,
        }
    );
}

#[test]
fn expiry_without_skew_refuses_one_second_late() {
    let a = allowance();
    let strict = PaymentPolicy { clock_skew_secs: 0 };
    check_validity_window(&a, a.expires_at, &strict).expect("at expiry");
    assert_fails!(
        check_validity_window(&a, a.expires_at.plus(1), &strict),
        PaymentError::Expired { .. },
        Rule::NotExpired,
    );
}

#[test]
fn not_yet_valid_accepted_just_inside_skew() {
    let a = allowance();
    check_validity_window(&a, a.issued_at, &policy()).expect("at issue");
    check_validity_window(&a, a.issued_at.minus(SKEW), &policy()).expect("at issue - skew");
}

#[test]
fn not_yet_valid_refused_just_before_skew() {
    let a = allowance();
    let now = a.issued_at.minus(SKEW + 1);
    let err = assert_fails!(
        check_validity_window(&a, now, &policy()),
        PaymentError::NotYetValid { .. },
        Rule::NotYetValid,
    );
    assert_eq!(
        err,
        PaymentError::NotYetValid {
            issued_at: a.issued_at,
            now,
        }
    );
}

#[test]
fn validity_window_is_checked_by_check_payment() {
    let inv = invoice(450, 7);
    let t = transfer_for(&inv, 1, 450);
    let mut env = Env::new();
    let a = allowance();

    env.now = a.expires_at.plus(SKEW);
    env.check(&inv, &t).expect("just inside expiry + skew");
    env.now = a.expires_at.plus(SKEW + 1);
    assert_fails!(
        env.check(&inv, &t),
        PaymentError::Expired { .. },
        Rule::NotExpired
    );

    env.now = a.issued_at.minus(SKEW);
    env.check(&inv, &t).expect("just inside issued_at - skew");
    env.now = a.issued_at.minus(SKEW + 1);
    assert_fails!(
        env.check(&inv, &t),
        PaymentError::NotYetValid { .. },
        Rule::NotYetValid
    );
}

// ---------------------------------------------------------------------------
// not-revoked, no-known-conflict
// ---------------------------------------------------------------------------

#[test]
fn standing_clean_passes() {
    let mut m = mesh();
    // Revocations and conflicts about someone else do not matter.
    m.revoke(Revoked::Allowance(other_aid()));
    m.revoke(Revoked::Wallet(stranger().public()));
    let foreign = detect(
        &header_of(other_aid(), 1, 100, 1),
        &header_of(other_aid(), 1, 100, 2),
    )
    .expect("fork of another allowance");
    m.add_conflict(foreign);
    check_standing(&allowance(), &m).expect("clean standing");
}

#[test]
fn standing_revoked_allowance_refused() {
    let mut m = mesh();
    m.revoke(Revoked::Allowance(aid()));
    assert_fails!(
        check_standing(&allowance(), &m),
        PaymentError::Revoked,
        Rule::NotRevoked
    );
}

#[test]
fn standing_revoked_wallet_refused() {
    let mut m = mesh();
    m.revoke(Revoked::Wallet(payer().public()));
    assert_fails!(
        check_standing(&allowance(), &m),
        PaymentError::Revoked,
        Rule::NotRevoked
    );
}

#[test]
fn standing_known_conflict_refused() {
    let mut m = mesh();
    let proof = detect(&header(&payer(), 3, 900, 1), &header(&payer(), 3, 900, 2)).expect("fork");
    m.add_conflict(proof);
    assert_fails!(
        check_standing(&allowance(), &m),
        PaymentError::ConflictKnown,
        Rule::NoKnownConflict
    );
}

#[test]
fn standing_conflict_found_by_mesh_insert_refused() {
    let mut m = mesh();
    assert!(
        m.add_header(header(&payer(), 2, 300, 1))
            .expect("ok")
            .is_none()
    );
    let proof = m
        .add_header(header(&payer(), 2, 300, 2))
        .expect("ok")
        .expect("fork found on insert");
    assert!(matches!(proof, ConflictProof::Fork { .. }));
    assert_eq!(m.conflict(&aid()), Some(&proof));
    assert_fails!(
        check_standing(&allowance(), &m),
        PaymentError::ConflictKnown,
        Rule::NoKnownConflict
    );
}

#[test]
fn standing_is_checked_by_check_payment() {
    let inv = invoice(450, 7);
    let t = transfer_for(&inv, 1, 450);

    let mut env = Env::new();
    env.mesh.revoke(Revoked::Wallet(payer().public()));
    assert_fails!(env.check(&inv, &t), PaymentError::Revoked, Rule::NotRevoked);

    let mut env = Env::new();
    env.mesh.revoke(Revoked::Allowance(aid()));
    assert_fails!(env.check(&inv, &t), PaymentError::Revoked, Rule::NotRevoked);

    let mut env = Env::new();
    env.mesh.add_conflict(
        detect(&header(&payer(), 5, 900, 1), &header(&payer(), 5, 900, 2)).expect("fork"),
    );
    assert_fails!(
        env.check(&inv, &t),
        PaymentError::ConflictKnown,
        Rule::NoKnownConflict
    );
}

// ---------------------------------------------------------------------------
// same-allowance, payer-signature
// ---------------------------------------------------------------------------

#[test]
fn payer_signature_valid_passes() {
    let t = transfer_for(&invoice(450, 7), 1, 450);
    check_payer_signature(&t, &allowance()).expect("signed by the wallet");
}

#[test]
fn same_allowance_refused_for_other_allowance_id() {
    let inv = invoice(450, 7);
    let body = TransferBody {
        payee: inv.payee.into(),
        nonce: inv.nonce,
        payer_time: NOW,
    };
    let t = Transfer::sign(other_aid(), 1, 450, inv.amount, body, &payer());
    assert_fails!(
        check_payer_signature(&t, &allowance()),
        PaymentError::WrongAllowance,
        Rule::SameAllowance
    );
    assert_fails!(
        Env::new().check(&inv, &t),
        PaymentError::WrongAllowance,
        Rule::SameAllowance
    );
}

#[test]
fn payer_signature_by_another_key_refused() {
    let inv = invoice(450, 7);
    let t = transfer_raw(&stranger(), inv.payee, inv.amount, inv.nonce, 1, 450);
    assert_fails!(
        check_payer_signature(&t, &allowance()),
        PaymentError::BadPayerSignature,
        Rule::PayerSignature
    );
    assert_fails!(
        Env::new().check(&inv, &t),
        PaymentError::BadPayerSignature,
        Rule::PayerSignature
    );
}

#[test]
fn payer_signature_over_another_body_refused() {
    // Same header fields, body amount changed, original signature kept: the
    // body hash no longer matches what the payer signed.
    let good = transfer_raw(&payer(), payee().public(), 450, Nonce([7; 16]), 1, 450);
    let other = transfer_raw(&payer(), payee().public(), 460, Nonce([7; 16]), 1, 450);
    let good_bytes = good.encode();
    let other_bytes = other.encode();
    assert_eq!(good_bytes.len(), other_bytes.len());
    let sig_at = other_bytes.len() - 64;
    assert_eq!(&good_bytes[sig_at..], good.payer_signature().as_bytes());
    let mut forged = other_bytes[..sig_at].to_vec();
    forged.extend_from_slice(&good_bytes[sig_at..]);
    let forged = Transfer::decode(&forged).expect("well-formed transfer");
    assert_eq!(forged.header().amount, 460);
    assert_eq!(forged.payer_signature(), good.payer_signature());
    assert_fails!(
        check_payer_signature(&forged, &allowance()),
        PaymentError::BadPayerSignature,
        Rule::PayerSignature
    );
}

// ---------------------------------------------------------------------------
// sequence-in-range, amount-positive, payment-cap, within-allowance,
// cumulative-covers-amount
// ---------------------------------------------------------------------------

fn limits(amount: u64, seq: u32, cumulative: u64) -> Result<(), PaymentError> {
    let t = transfer_raw(
        &payer(),
        payee().public(),
        amount,
        Nonce([7; 16]),
        seq,
        cumulative,
    );
    check_limits(&t, &allowance())
}

#[test]
fn sequence_in_range_bounds_pass() {
    limits(100, 1, 100).expect("seq 1");
    limits(100, 20, 10_000).expect("seq = max_payments");
}

#[test]
fn sequence_zero_refused() {
    let err = assert_fails!(
        limits(100, 0, 100),
        PaymentError::SequenceOutOfRange { .. },
        Rule::SequenceInRange
    );
    assert_eq!(err, PaymentError::SequenceOutOfRange { seq: 0, max: 20 });
}

#[test]
fn sequence_above_cap_refused() {
    let err = assert_fails!(
        limits(100, 21, 2_100),
        PaymentError::SequenceOutOfRange { .. },
        Rule::SequenceInRange
    );
    assert_eq!(err, PaymentError::SequenceOutOfRange { seq: 21, max: 20 });
}

#[test]
fn amount_positive() {
    limits(1, 1, 1).expect("one minor unit");
    assert_fails!(
        limits(0, 1, 0),
        PaymentError::ZeroAmount,
        Rule::AmountPositive
    );
    // Even with a positive cumulative.
    assert_fails!(
        limits(0, 2, 100),
        PaymentError::ZeroAmount,
        Rule::AmountPositive
    );
}

#[test]
fn payment_cap() {
    limits(5_000, 1, 5_000).expect("exactly the cap");
    let err = assert_fails!(
        limits(5_001, 1, 5_001),
        PaymentError::OverPaymentCap { .. },
        Rule::PaymentCap
    );
    assert_eq!(
        err,
        PaymentError::OverPaymentCap {
            amount: 5_001,
            cap: 5_000
        }
    );
}

#[test]
fn within_allowance() {
    limits(100, 5, 10_000).expect("cumulative = allowance amount");
    let err = assert_fails!(
        limits(100, 5, 10_001),
        PaymentError::OverAllowance { .. },
        Rule::WithinAllowance
    );
    assert_eq!(
        err,
        PaymentError::OverAllowance {
            cumulative: 10_001,
            amount: 10_000
        }
    );
}

#[test]
fn cumulative_covers_amount() {
    limits(450, 1, 450).expect("cumulative = amount");
    let err = assert_fails!(
        limits(450, 2, 449),
        PaymentError::CumulativeBelowAmount { .. },
        Rule::CumulativeCoversAmount
    );
    assert_eq!(
        err,
        PaymentError::CumulativeBelowAmount {
            cumulative: 449,
            amount: 450
        }
    );
}

#[test]
fn limits_are_checked_by_check_payment() {
    let env = Env::new();
    let inv = invoice(5_001, 7);
    assert_fails!(
        env.check(&inv, &transfer_for(&inv, 1, 5_001)),
        PaymentError::OverPaymentCap { .. },
        Rule::PaymentCap
    );
    let inv = invoice(100, 7);
    assert_fails!(
        env.check(&inv, &transfer_for(&inv, 21, 2_100)),
        PaymentError::SequenceOutOfRange { .. },
        Rule::SequenceInRange
    );
    assert_fails!(
        env.check(&inv, &transfer_for(&inv, 3, 10_001)),
        PaymentError::OverAllowance { .. },
        Rule::WithinAllowance
    );
    assert_fails!(
        env.check(&inv, &transfer_for(&inv, 3, 99)),
        PaymentError::CumulativeBelowAmount { .. },
        Rule::CumulativeCoversAmount
    );
}

// ---------------------------------------------------------------------------
// consistent-with-mesh, cumulative-step
// ---------------------------------------------------------------------------

#[test]
fn consistent_with_mesh_passes_with_rising_headers() {
    let inv = invoice(450, 7);
    let known = [
        header(&payer(), 1, 100, 1),
        header(&payer(), 2, 300, 2),
        header(&payer(), 5, 2_000, 3),
    ];
    // seq 3 is between 2 and 5, steps from 300, stays below 2000.
    check_against_known(&transfer_for(&inv, 3, 750), &known).expect("consistent");
    // No headers known at all.
    check_against_known(&transfer_for(&inv, 3, 750), &[]).expect("nothing known");
    // The very same transfer already known is not a conflict.
    let t = transfer_for(&inv, 3, 750);
    check_against_known(&t, &[t.signed_header()]).expect("identical header");
}

#[test]
fn fork_against_known_header_with_same_seq() {
    let known = transfer_for(&invoice(450, 1), 2, 550).signed_header();
    let inv = invoice(450, 2);
    let t = transfer_for(&inv, 2, 550);
    let err = assert_fails!(
        check_against_known(&t, std::slice::from_ref(&known)),
        PaymentError::Conflict(_),
        Rule::ConsistentWithMesh
    );
    let PaymentError::Conflict(proof) = err else {
        unreachable!()
    };
    let ConflictProof::Fork { first, second } = &*proof else {
        panic!("expected a fork, got {proof:?}");
    };
    let mut got = [first.clone(), second.clone()];
    let mut want = [known, t.signed_header()];
    got.sort_by_key(|h| h.id());
    want.sort_by_key(|h| h.id());
    assert_eq!(got, want);
    assert!(first.id() < second.id());
    assert_eq!(proof.allowance(), aid());
    proof
        .verify(&allowance())
        .expect("the fork proves a double spend");
}

#[test]
fn fork_is_found_by_check_payment() {
    let mut env = Env::new();
    env.add_header(transfer_for(&invoice(450, 1), 1, 450).signed_header());
    let inv = invoice(450, 2);
    let t = transfer_for(&inv, 1, 450);
    let err = assert_fails!(
        env.check(&inv, &t),
        PaymentError::Conflict(_),
        Rule::ConsistentWithMesh
    );
    let PaymentError::Conflict(proof) = err else {
        unreachable!()
    };
    assert!(matches!(*proof, ConflictProof::Fork { .. }));
    proof.verify(&allowance()).expect("valid proof");
}

#[test]
fn rewound_cumulative_against_earlier_header() {
    let earlier = header(&payer(), 2, 900, 1);
    let inv = invoice(450, 7);
    // seq 4 (seq 3 unknown) but cumulative not above seq 2's.
    let t = transfer_for(&inv, 4, 900);
    let err = assert_fails!(
        check_against_known(&t, std::slice::from_ref(&earlier)),
        PaymentError::Conflict(_),
        Rule::ConsistentWithMesh
    );
    let PaymentError::Conflict(proof) = err else {
        unreachable!()
    };
    assert_eq!(
        *proof,
        ConflictProof::Rewind {
            earlier,
            later: t.signed_header(),
        }
    );
    proof.verify(&allowance()).expect("valid rewind proof");
}

#[test]
fn rewound_cumulative_against_later_header() {
    let later = header(&payer(), 6, 1_000, 1);
    let inv = invoice(450, 7);
    // seq 3 claims more than seq 6 already did.
    let t = transfer_for(&inv, 3, 1_450);
    let err = assert_fails!(
        check_against_known(&t, std::slice::from_ref(&later)),
        PaymentError::Conflict(_),
        Rule::ConsistentWithMesh
    );
    let PaymentError::Conflict(proof) = err else {
        unreachable!()
    };
    assert_eq!(
        *proof,
        ConflictProof::Rewind {
            earlier: t.signed_header(),
            later,
        }
    );
    proof.verify(&allowance()).expect("valid rewind proof");
}

#[test]
fn rewind_is_found_by_check_payment() {
    let mut env = Env::new();
    env.add_header(header(&payer(), 1, 2_000, 1));
    let inv = invoice(450, 7);
    let t = transfer_for(&inv, 3, 1_500);
    let err = assert_fails!(
        env.check(&inv, &t),
        PaymentError::Conflict(_),
        Rule::ConsistentWithMesh
    );
    let PaymentError::Conflict(proof) = err else {
        unreachable!()
    };
    assert!(matches!(*proof, ConflictProof::Rewind { .. }));
    proof.verify(&allowance()).expect("valid proof");
}

#[test]
fn cumulative_step_with_previous_header_known() {
    let previous = header(&payer(), 1, 100, 1);
    let inv = invoice(450, 7);
    check_against_known(&transfer_for(&inv, 2, 550), std::slice::from_ref(&previous))
        .expect("100 + 450 = 550");
    // Over-counting only costs the payer, but breaks the rule.
    for wrong in [551, 600] {
        let err = assert_fails!(
            check_against_known(
                &transfer_for(&inv, 2, wrong),
                std::slice::from_ref(&previous)
            ),
            PaymentError::CumulativeMismatch { .. },
            Rule::CumulativeStep
        );
        assert_eq!(
            err,
            PaymentError::CumulativeMismatch {
                cumulative: wrong,
                previous: 100,
                amount: 450,
            }
        );
    }
}

#[test]
fn cumulative_step_not_required_without_previous_header() {
    // Only seq 1 is known; seq 3 may include an unknown seq 2.
    let known = [header(&payer(), 1, 100, 1)];
    let inv = invoice(450, 7);
    check_against_known(&transfer_for(&inv, 3, 999), &known).expect("gap allowed");
}

#[test]
fn cumulative_step_is_checked_by_check_payment() {
    let mut env = Env::new();
    env.add_header(header(&payer(), 1, 100, 1));
    let inv = invoice(450, 7);
    env.check(&inv, &transfer_for(&inv, 2, 550))
        .expect("exact step");
    assert_fails!(
        env.check(&inv, &transfer_for(&inv, 2, 600)),
        PaymentError::CumulativeMismatch {
            cumulative: 600,
            previous: 100,
            amount: 450
        },
        Rule::CumulativeStep
    );
}

// ---------------------------------------------------------------------------
// invoice-payee, invoice-nonce, invoice-amount, invoice-currency
// ---------------------------------------------------------------------------

#[test]
fn invoice_match_passes() {
    let inv = invoice(450, 7);
    check_invoice_match(&transfer_for(&inv, 1, 450), &inv, &allowance()).expect("matches");
}

#[test]
fn invoice_payee_mismatch_refused() {
    let inv = invoice(450, 7);
    let t = transfer_raw(&payer(), stranger().public(), 450, inv.nonce, 1, 450);
    assert_fails!(
        check_invoice_match(&t, &inv, &allowance()),
        PaymentError::WrongPayee,
        Rule::InvoicePayee
    );
    assert_fails!(
        Env::new().check(&inv, &t),
        PaymentError::WrongPayee,
        Rule::InvoicePayee
    );
}

#[test]
fn invoice_nonce_mismatch_refused() {
    let inv = invoice(450, 7);
    let t = transfer_for(&invoice(450, 8), 1, 450);
    assert_fails!(
        check_invoice_match(&t, &inv, &allowance()),
        PaymentError::WrongNonce,
        Rule::InvoiceNonce
    );
    assert_fails!(
        Env::new().check(&inv, &t),
        PaymentError::WrongNonce,
        Rule::InvoiceNonce
    );
}

#[test]
fn invoice_amount_mismatch_refused() {
    let inv = invoice(450, 7);
    let t = transfer_for(&invoice(400, 7), 1, 400);
    let err = assert_fails!(
        check_invoice_match(&t, &inv, &allowance()),
        PaymentError::WrongAmount { .. },
        Rule::InvoiceAmount
    );
    assert_eq!(
        err,
        PaymentError::WrongAmount {
            paid: 400,
            asked: 450
        }
    );
    assert_fails!(
        Env::new().check(&inv, &t),
        PaymentError::WrongAmount { .. },
        Rule::InvoiceAmount
    );
}

#[test]
fn invoice_currency_mismatch_refused() {
    let mut inv = invoice(450, 7);
    check_currency(&inv, &allowance()).expect("EUR = EUR");
    inv.currency = usd();
    let t = transfer_for(&inv, 1, 450);
    assert_fails!(
        check_currency(&inv, &allowance()),
        PaymentError::WrongCurrency,
        Rule::InvoiceCurrency
    );
    assert_fails!(
        check_invoice_match(&t, &inv, &allowance()),
        PaymentError::WrongCurrency,
        Rule::InvoiceCurrency
    );
    assert_fails!(
        Env::new().check(&inv, &t),
        PaymentError::WrongCurrency,
        Rule::InvoiceCurrency
    );
    // An allowance in the invoice's currency is fine.
    let usd_allowance = allowance_with(|t| t.currency = usd());
    check_currency(&inv, &usd_allowance).expect("USD = USD");
}

// ---------------------------------------------------------------------------
// memo-length
// ---------------------------------------------------------------------------

fn with_memo(memo: Option<String>) -> Invoice {
    let mut inv = invoice(450, 7);
    inv.memo = memo;
    inv
}

#[test]
fn memo_up_to_64_bytes_accepted() {
    check_memo(&with_memo(None)).expect("no memo");
    check_memo(&with_memo(Some(String::new()))).expect("empty memo");
    check_memo(&with_memo(Some("a".repeat(64)))).expect("64 bytes");
    // 32 two-byte characters: 64 bytes.
    check_memo(&with_memo(Some("é".repeat(32)))).expect("64 bytes of UTF-8");
}

#[test]
fn memo_of_65_bytes_refused() {
    let err = assert_fails!(
        check_memo(&with_memo(Some("a".repeat(65)))),
        PaymentError::MemoTooLong { .. },
        Rule::MemoLength
    );
    assert_eq!(err, PaymentError::MemoTooLong { len: 65 });
    // Length counts bytes, not characters: 33 characters, 65 bytes.
    let memo = format!("{}a", "é".repeat(32));
    assert_eq!(memo.chars().count(), 33);
    assert_fails!(
        check_memo(&with_memo(Some(memo))),
        PaymentError::MemoTooLong { len: 65 },
        Rule::MemoLength
    );
}

#[test]
fn memo_length_is_checked_by_check_payment() {
    let env = Env::new();
    let inv = with_memo(Some("a".repeat(64)));
    env.check(&inv, &transfer_for(&inv, 1, 450))
        .expect("64 bytes");
    let inv = with_memo(Some("a".repeat(65)));
    assert_fails!(
        env.check(&inv, &transfer_for(&inv, 1, 450)),
        PaymentError::MemoTooLong { len: 65 },
        Rule::MemoLength
    );
}

// ---------------------------------------------------------------------------
// payee-allowed
// ---------------------------------------------------------------------------

fn restricted(r: Restriction) -> Allowance {
    allowance_with(|t| t.restriction = Some(r))
}

fn restriction(a: &Allowance, inv: &Invoice, ts: &TrustStore) -> Result<(), PaymentError> {
    check_restriction(a, inv, ts, NOW, &policy())
}

const FOOD_VENDOR: u32 = 7;

#[test]
fn unrestricted_allowance_admits_anyone() {
    let inv = invoice(450, 7);
    restriction(&allowance(), &inv, &trust()).expect("no restriction");
}

#[test]
fn payee_set_admits_listed_payee() {
    let set = BTreeSet::from([stranger().public(), payee().public()]);
    let a = restricted(Restriction::Payees(set));
    restriction(&a, &invoice(450, 7), &trust()).expect("listed");
}

#[test]
fn payee_set_refuses_unlisted_payee() {
    let inv = invoice(450, 7);
    let a = restricted(Restriction::Payees(BTreeSet::from([stranger().public()])));
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
    let a = restricted(Restriction::Payees(BTreeSet::new()));
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
    // A class credential does not open a key-set restriction.
    let a = restricted(Restriction::Payees(BTreeSet::from([stranger().public()])));
    let inv = invoice_with_credential(Some(credential(FOOD_VENDOR, NOW.plus(86_400), &issuer())));
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
}

#[test]
fn payee_class_valid_credential_accepted() {
    let a = restricted(Restriction::PayeeClass(FOOD_VENDOR));
    let inv = invoice_with_credential(Some(credential(FOOD_VENDOR, NOW.plus(86_400), &issuer())));
    restriction(&a, &inv, &trust()).expect("valid credential");
    // Still accepted within the skew after the credential's expiry.
    let inv = invoice_with_credential(Some(credential(FOOD_VENDOR, NOW.minus(SKEW), &issuer())));
    restriction(&a, &inv, &trust()).expect("credential expired within skew");
}

#[test]
fn payee_class_credential_by_certified_issuer_key_accepted() {
    let mut ts = trust();
    assert!(ts.add_certificate(certificate(
        &delegate(),
        NOW.minus(86_400),
        NOW.plus(30 * 86_400),
        &issuer()
    )));
    let a = restricted(Restriction::PayeeClass(FOOD_VENDOR));
    let inv = invoice_with_credential(Some(credential(FOOD_VENDOR, NOW.plus(86_400), &delegate())));
    restriction(&a, &inv, &ts).expect("certified issuer key");
    // Without the certificate the same credential is refused.
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
}

#[test]
fn payee_class_missing_credential_refused() {
    let a = restricted(Restriction::PayeeClass(FOOD_VENDOR));
    assert_fails!(
        restriction(&a, &invoice_with_credential(None), &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
}

#[test]
fn payee_class_wrong_class_refused() {
    let a = restricted(Restriction::PayeeClass(FOOD_VENDOR));
    let inv = invoice_with_credential(Some(credential(
        FOOD_VENDOR + 1,
        NOW.plus(86_400),
        &issuer(),
    )));
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
}

#[test]
fn payee_class_expired_credential_refused() {
    let a = restricted(Restriction::PayeeClass(FOOD_VENDOR));
    let inv = invoice_with_credential(Some(credential(
        FOOD_VENDOR,
        NOW.minus(SKEW + 1),
        &issuer(),
    )));
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
}

#[test]
fn payee_class_credential_by_untrusted_key_refused() {
    let a = restricted(Restriction::PayeeClass(FOOD_VENDOR));
    // Self-consistent, but signed by a key nobody trusts.
    let inv = invoice_with_credential(Some(credential(FOOD_VENDOR, NOW.plus(86_400), &stranger())));
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
    // Names the trusted issuer, but a stranger signed it.
    let forged = PayeeCredential::sign(
        PayeeCredentialTerms {
            payee: payee().public(),
            class: FOOD_VENDOR,
            expires_at: NOW.plus(86_400),
            issuer: issuer().public(),
        },
        &stranger(),
    );
    let inv = invoice_with_credential(Some(forged));
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
}

#[test]
fn payee_class_credential_of_another_payee_refused() {
    let a = restricted(Restriction::PayeeClass(FOOD_VENDOR));
    let c = credential_for(
        stranger().public(),
        FOOD_VENDOR,
        NOW.plus(86_400),
        &issuer(),
    );
    let inv = invoice_with_credential(Some(c));
    assert_fails!(
        restriction(&a, &inv, &trust()),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
}

#[test]
fn restriction_is_checked_by_check_payment() {
    let env = Env::new();
    let by_class = restricted(Restriction::PayeeClass(FOOD_VENDOR));
    let inv = invoice_with_credential(Some(credential(FOOD_VENDOR, NOW.plus(86_400), &issuer())));
    let t = transfer_for(&inv, 1, 450);
    env.check_with(by_class.clone(), &inv, &t)
        .expect("credential admits payee");
    let bare = invoice_with_credential(None);
    assert_fails!(
        env.check_with(by_class, &bare, &transfer_for(&bare, 1, 450)),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );

    let by_key = restricted(Restriction::Payees(BTreeSet::from([payee().public()])));
    env.check_with(by_key, &inv, &t).expect("listed payee");
    let elsewhere = restricted(Restriction::Payees(BTreeSet::from([stranger().public()])));
    assert_fails!(
        env.check_with(elsewhere, &inv, &t),
        PaymentError::PayeeNotAllowed,
        Rule::PayeeAllowed
    );
}

// ---------------------------------------------------------------------------
// check_payment end to end
// ---------------------------------------------------------------------------

#[test]
fn check_payment_accepts_good_payment() {
    let inv = invoice(450, 7);
    Env::new()
        .check(&inv, &transfer_for(&inv, 1, 450))
        .expect("first payment");
}

#[test]
fn check_payment_accepts_payment_following_known_headers() {
    let mut env = Env::new();
    env.add_header(header(&payer(), 1, 100, 1));
    env.add_header(header(&payer(), 2, 300, 2));
    let inv = invoice(5_000, 7);
    env.check(&inv, &transfer_for(&inv, 3, 5_300))
        .expect("third payment at the per-payment cap");
}

#[test]
fn check_payment_accepts_certified_issuer_allowance() {
    let mut env = Env::new();
    assert!(env.trust.add_certificate(certificate(
        &delegate(),
        NOW.minus(86_400),
        NOW.plus(30 * 86_400),
        &issuer()
    )));
    let inv = invoice(450, 7);
    env.check_with(
        allowance_signed_by(&delegate(), NOW.minus(3_600)),
        &inv,
        &transfer_for(&inv, 1, 450),
    )
    .expect("allowance from a certified issuer key");
}

// ---------------------------------------------------------------------------
// ConflictProof::verify and conflict::detect
// ---------------------------------------------------------------------------

fn fork() -> ConflictProof {
    detect(&header(&payer(), 4, 800, 1), &header(&payer(), 4, 800, 2)).expect("fork")
}

fn rewind() -> ConflictProof {
    detect(&header(&payer(), 2, 800, 1), &header(&payer(), 3, 800, 2)).expect("rewind")
}

#[test]
fn conflict_proofs_verify() {
    fork().verify(&allowance()).expect("fork");
    rewind().verify(&allowance()).expect("rewind");
    for h in [
        header(&payer(), 1, 10_001, 1),
        header(&payer(), 0, 100, 1),
        header(&payer(), 21, 100, 1),
    ] {
        ConflictProof::OverLimit { header: h }
            .verify(&allowance())
            .expect("over limit");
    }
}

#[test]
fn conflict_proof_wrong_allowance() {
    let other = allowance_with(|t| t.id = other_aid());
    for proof in [fork(), rewind()] {
        assert_eq!(
            proof.verify(&other),
            Err(ConflictProofError::WrongAllowance)
        );
    }
}

#[test]
fn conflict_proof_bad_signature() {
    // Headers signed by someone other than the allowance's wallet.
    let forged = detect(
        &header(&stranger(), 4, 800, 1),
        &header(&stranger(), 4, 800, 2),
    )
    .expect("shape of a fork");
    assert_eq!(
        forged.verify(&allowance()),
        Err(ConflictProofError::BadSignature)
    );
    // One good header, one forged.
    let mixed = detect(
        &header(&payer(), 4, 800, 1),
        &header(&stranger(), 4, 800, 2),
    )
    .expect("shape of a fork");
    assert_eq!(
        mixed.verify(&allowance()),
        Err(ConflictProofError::BadSignature)
    );
    // The real proof against an allowance of another wallet.
    let other_wallet = allowance_with(|t| t.wallet = stranger().public());
    assert_eq!(
        fork().verify(&other_wallet),
        Err(ConflictProofError::BadSignature)
    );
}

#[test]
fn conflict_proof_no_conflict() {
    let a = allowance();
    let h = header(&payer(), 4, 800, 1);
    let same = ConflictProof::Fork {
        first: h.clone(),
        second: h.clone(),
    };
    assert_eq!(same.verify(&a), Err(ConflictProofError::NoConflict));

    let (x, y) = (header(&payer(), 4, 800, 1), header(&payer(), 5, 900, 2));
    let (first, second) = if x.id() < y.id() { (x, y) } else { (y, x) };
    let different_seq = ConflictProof::Fork { first, second };
    assert_eq!(
        different_seq.verify(&a),
        Err(ConflictProofError::NoConflict)
    );

    // Seq 3 pays 100 on top of seq 2's 800: 900 is consistent.
    let rising = ConflictProof::Rewind {
        earlier: header(&payer(), 2, 800, 1),
        later: header(&payer(), 3, 900, 2),
    };
    assert_eq!(rising.verify(&a), Err(ConflictProofError::NoConflict));

    let fine = ConflictProof::OverLimit {
        header: header(&payer(), 20, 10_000, 1),
    };
    assert_eq!(fine.verify(&a), Err(ConflictProofError::NoConflict));
}

#[test]
fn conflict_proof_not_canonical() {
    let a = allowance();
    let ConflictProof::Fork { first, second } = fork() else {
        panic!("expected a fork");
    };
    let swapped = ConflictProof::Fork {
        first: second,
        second: first,
    };
    assert_eq!(swapped.verify(&a), Err(ConflictProofError::NotCanonical));

    let ConflictProof::Rewind { earlier, later } = rewind() else {
        panic!("expected a rewind");
    };
    let swapped = ConflictProof::Rewind {
        earlier: later,
        later: earlier,
    };
    assert_eq!(swapped.verify(&a), Err(ConflictProofError::NotCanonical));
}

#[test]
fn detect_no_conflict_for_equal_headers() {
    let h = header(&payer(), 4, 800, 1);
    assert_eq!(detect(&h, &h.clone()), None);
}

#[test]
fn detect_no_conflict_across_allowances() {
    // Same seq, different bodies, but different allowances.
    let a = header_of(aid(), 4, 800, 1);
    let b = header_of(other_aid(), 4, 800, 2);
    assert_eq!(detect(&a, &b), None);
    // A would-be rewind across allowances.
    let a = header_of(aid(), 2, 900, 1);
    let b = header_of(other_aid(), 3, 100, 2);
    assert_eq!(detect(&a, &b), None);
    assert_eq!(detect(&b, &a), None);
}

#[test]
fn detect_no_conflict_for_rising_cumulatives() {
    // Each header pays 100 (the fixture amount).
    let a = header(&payer(), 2, 800, 1);
    let b = header(&payer(), 3, 900, 2);
    assert_eq!(detect(&a, &b), None);
    assert_eq!(detect(&b, &a), None);
    // A gap of two sequence numbers needs at least 100 + 2 more.
    let c = header(&payer(), 5, 902, 3);
    assert_eq!(detect(&a, &c), None);
}

/// The hole that public amounts close: skipping sequence numbers to pay
/// full amounts while the cumulative barely moves.
#[test]
fn detect_undercount_across_a_gap_of_sequence_numbers() {
    // Seq 1 paid 100 (cumulative 100); seq 3 pays 100 but claims 200: seq 2,
    // whatever it was, must have cost at least 1 more.
    let a = header(&payer(), 1, 100, 1);
    let b = header(&payer(), 3, 200, 2);
    let Some(proof) = detect(&a, &b) else {
        panic!("an undercount across a gap is a conflict");
    };
    assert!(matches!(proof, ConflictProof::Rewind { .. }));
    proof.verify(&allowance()).expect("the proof verifies");
    assert_eq!(detect(&a, &header(&payer(), 3, 201, 2)), None);
    // And the payee's check refuses it even though seq 2 was never seen.
    let inv = invoice(100, 2);
    let t = transfer_for(&inv, 3, 200);
    assert!(matches!(
        check_against_known(&t, &[a]),
        Err(PaymentError::Conflict(p)) if matches!(*p, ConflictProof::Rewind { .. })
    ));
}

#[test]
fn detect_fork_is_canonical_in_either_order() {
    let a = header(&payer(), 4, 800, 1);
    let b = header(&payer(), 4, 800, 2);
    let ab = detect(&a, &b).expect("fork");
    let ba = detect(&b, &a).expect("fork");
    assert_eq!(ab, ba);
    assert!(matches!(ab, ConflictProof::Fork { .. }));
    ab.verify(&allowance()).expect("canonical");
}

#[test]
fn detect_fork_of_counter_with_same_body() {
    // Same body, same seq, different cumulative: a fork all the same.
    let a = header(&payer(), 4, 800, 1);
    let b = header(&payer(), 4, 900, 1);
    assert_eq!(a.body_hash, b.body_hash);
    let proof = detect(&a, &b).expect("fork");
    assert!(matches!(proof, ConflictProof::Fork { .. }));
    proof.verify(&allowance()).expect("valid");
}

#[test]
fn detect_rewind_in_either_order() {
    let earlier = header(&payer(), 2, 800, 1);
    let later = header(&payer(), 5, 700, 2);
    let want = ConflictProof::Rewind {
        earlier: earlier.clone(),
        later: later.clone(),
    };
    assert_eq!(detect(&earlier, &later), Some(want.clone()));
    assert_eq!(detect(&later, &earlier), Some(want.clone()));
    want.verify(&allowance()).expect("valid");
}

// ---------------------------------------------------------------------------
// Handshake machines, driven by hand
// ---------------------------------------------------------------------------

fn payer_session(spend: SpendState, config: PayerConfig) -> PayerSession {
    PayerSession::new(allowance(), payer(), spend, NOW, config)
}

fn payee_session(inv: &Invoice) -> PayeeSession {
    PayeeSession::with_invoice(payee(), inv.clone(), Millis(0))
}

/// Takes the payee's invoice message.
fn invoice_message(payee: &mut PayeeSession) -> PaymentMessage {
    let m = payee.poll_transmit().expect("invoice out");
    assert!(matches!(m, PaymentMessage::Invoice(_)));
    m
}

/// Runs the payer up to the released transfer; returns it.
fn payer_sends(payer: &mut PayerSession, invoice: PaymentMessage) -> PaymentMessage {
    payer.handle(invoice, Millis(1)).expect("invoice handled");
    assert!(matches!(payer.poll_effect(), Some(PayerEffect::Confirm(_))));
    payer.confirm().expect("confirm");
    assert!(matches!(
        payer.poll_effect(),
        Some(PayerEffect::PersistSpend { .. })
    ));
    payer.spend_persisted(Millis(2)).expect("persisted");
    payer.poll_transmit().expect("transfer released")
}

fn transfer_in(m: &PaymentMessage) -> &Transfer {
    match m {
        PaymentMessage::Transfer { transfer, .. } => transfer,
        other => panic!("expected a transfer, got {other:?}"),
    }
}

#[test]
fn payer_releases_nothing_before_spend_persisted() {
    let inv = invoice(450, 7);
    let mut payee = payee_session(&inv);
    let mut payer = payer_session(SpendState::FRESH, PayerConfig::default());

    payer
        .handle(invoice_message(&mut payee), Millis(1))
        .expect("invoice");
    assert_eq!(payer.poll_effect(), Some(PayerEffect::Confirm(inv.clone())));
    assert_eq!(payer.poll_transmit(), None);

    payer.confirm().expect("confirm");
    let Some(PayerEffect::PersistSpend { transfer, spend }) = payer.poll_effect() else {
        panic!("expected PersistSpend");
    };
    assert_eq!(
        spend,
        SpendState {
            next_seq: 2,
            cumulative: 450
        }
    );
    assert!(matches!(payer.state(), PayerState::AwaitingDurable(t) if *t == transfer));
    // Signed but not released: nothing to send, no timer to resend it by.
    assert_eq!(payer.poll_transmit(), None);
    assert_eq!(payer.poll_timeout(), None);
    payer.handle_timeout(Millis(1_000_000));
    assert_eq!(payer.poll_transmit(), None);
    assert!(matches!(payer.state(), PayerState::AwaitingDurable(_)));

    payer.spend_persisted(Millis(2)).expect("persisted");
    let m = payer.poll_transmit().expect("released now");
    assert_eq!(transfer_in(&m), &transfer);
    assert_eq!(payer.poll_transmit(), None);
    assert!(payer.poll_timeout().is_some());
}

#[test]
fn payee_sends_no_ack_before_receipt_persisted() {
    let inv = invoice(450, 7);
    let env = Env::new();
    let mut payee = payee_session(&inv);
    let mut payer = payer_session(SpendState::FRESH, PayerConfig::default());
    let tm = payer_sends(&mut payer, invoice_message(&mut payee));
    let sent = transfer_in(&tm).clone();

    payee.handle(tm.clone(), &env.ctx()).expect("transfer");
    let Some(PayeeEffect::PersistReceipt {
        receipt,
        allowance: a,
    }) = payee.poll_effect()
    else {
        panic!("expected PersistReceipt");
    };
    assert_eq!(receipt.transfer, sent);
    assert_eq!(*a, allowance());
    assert!(receipt.verify(&common::payer().public()));
    assert!(matches!(payee.state(), PayeeState::AwaitingDurable(_)));
    assert_eq!(payee.poll_transmit(), None);

    // A retry while still storing: still no acknowledgement.
    payee.handle(tm, &env.ctx()).expect("retry");
    assert_eq!(payee.poll_transmit(), None);
    assert_eq!(payee.poll_effect(), None);

    payee.receipt_persisted().expect("stored");
    let ack = payee.poll_transmit().expect("ack now");
    assert_eq!(
        ack,
        PaymentMessage::Ack {
            transfer: sent.id(),
            signature: receipt.payee_signature,
        }
    );
    assert_eq!(payee.poll_transmit(), None);
    assert_eq!(payee.state(), &PayeeState::Acknowledged(receipt.clone()));

    payer.handle(ack, Millis(3)).expect("ack");
    assert_eq!(payer.state(), &PayerState::Paid(receipt.clone()));
    assert_eq!(
        payer.poll_effect(),
        Some(PayerEffect::StoreReceipt(receipt))
    );
}

/// Runs a payment to the payee's acknowledgement; returns the payee, the
/// transfer message and the ack.
fn acknowledged(
    inv: &Invoice,
    env: &Env,
) -> (PayeeSession, PaymentMessage, PaymentMessage, Receipt) {
    let mut payee = payee_session(inv);
    let mut payer = payer_session(SpendState::FRESH, PayerConfig::default());
    let tm = payer_sends(&mut payer, invoice_message(&mut payee));
    payee.handle(tm.clone(), &env.ctx()).expect("transfer");
    let Some(PayeeEffect::PersistReceipt { receipt, .. }) = payee.poll_effect() else {
        panic!("expected PersistReceipt");
    };
    payee.receipt_persisted().expect("stored");
    let ack = payee.poll_transmit().expect("ack");
    (payee, tm, ack, receipt)
}

#[test]
fn duplicate_transfer_after_ack_gets_identical_ack() {
    let inv = invoice(450, 7);
    let env = Env::new();
    let (mut payee, tm, ack, receipt) = acknowledged(&inv, &env);
    assert!(matches!(ack, PaymentMessage::Ack { .. }));

    for _ in 0..2 {
        payee.handle(tm.clone(), &env.ctx()).expect("duplicate");
        assert_eq!(payee.poll_transmit(), Some(ack.clone()));
        assert_eq!(payee.poll_transmit(), None);
        // No second receipt, no refusal.
        assert_eq!(payee.poll_effect(), None);
    }
    // The duplicate without the allowance attached is the same transfer too.
    let PaymentMessage::Transfer { transfer, .. } = tm else {
        unreachable!()
    };
    payee
        .handle(
            PaymentMessage::Transfer {
                allowance: None,
                transfer,
            },
            &env.ctx(),
        )
        .expect("duplicate");
    assert_eq!(payee.poll_transmit(), Some(ack));
    assert_eq!(payee.state(), &PayeeState::Acknowledged(receipt));
}

#[test]
fn different_transfer_after_ack_is_rejected_invoice_open() {
    let inv = invoice(450, 7);
    let env = Env::new();
    let (mut payee, tm, _ack, receipt) = acknowledged(&inv, &env);

    // Another valid-looking transfer for the same invoice (seq 2).
    let second = transfer_for(&inv, 2, 900);
    assert_ne!(&second, transfer_in(&tm));
    payee
        .handle(
            PaymentMessage::Transfer {
                allowance: Some(Box::new(allowance())),
                transfer: second.clone(),
            },
            &env.ctx(),
        )
        .expect("handled");
    assert_eq!(
        payee.poll_transmit(),
        Some(PaymentMessage::Reject {
            transfer: second.id(),
            rule: Rule::InvoiceOpen,
        })
    );
    let Some(PayeeEffect::Refused(err)) = payee.poll_effect() else {
        panic!("expected Refused");
    };
    assert!(matches!(err, PaymentError::InvoicePaid));
    assert_eq!(err.rule(), Rule::InvoiceOpen);
    assert_eq!(payee.state(), &PayeeState::Acknowledged(receipt));
}

#[test]
fn open_invoice_accepts_first_transfer() {
    // The passing side of invoice-open: a fresh session takes the transfer.
    let inv = invoice(450, 7);
    let env = Env::new();
    let mut payee = payee_session(&inv);
    let _ = invoice_message(&mut payee);
    payee
        .handle(
            PaymentMessage::Transfer {
                allowance: None,
                transfer: transfer_for(&inv, 1, 450),
            },
            &env.ctx(),
        )
        .expect("handled");
    assert!(matches!(
        payee.poll_effect(),
        Some(PayeeEffect::PersistReceipt { .. })
    ));
    assert!(matches!(payee.state(), PayeeState::AwaitingDurable(_)));
}

#[test]
fn payee_lacking_allowance_asks_and_payer_resends_same_transfer() {
    let inv = invoice(450, 7);
    let env = Env {
        mesh: KnownHeaders::new(),
        ..Env::new()
    };
    let mut payee = payee_session(&inv);
    let config = PayerConfig {
        send_allowance: false,
        ..PayerConfig::default()
    };
    let mut payer = payer_session(SpendState::FRESH, config);
    let first = payer_sends(&mut payer, invoice_message(&mut payee));
    let PaymentMessage::Transfer {
        allowance: None,
        transfer,
    } = &first
    else {
        panic!("expected a transfer without allowance, got {first:?}");
    };
    let transfer = transfer.clone();

    payee.handle(first, &env.ctx()).expect("handled");
    let reject = payee.poll_transmit().expect("reject");
    assert_eq!(
        reject,
        PaymentMessage::Reject {
            transfer: transfer.id(),
            rule: Rule::AllowanceKnown,
        }
    );
    let Some(PayeeEffect::Refused(err)) = payee.poll_effect() else {
        panic!("expected Refused");
    };
    assert!(matches!(err, PaymentError::UnknownAllowance));
    assert_eq!(err.rule(), Rule::AllowanceKnown);
    assert_eq!(payee.state(), &PayeeState::AwaitingTransfer);

    payer.handle(reject, Millis(3)).expect("reject handled");
    assert!(matches!(payer.state(), PayerState::AwaitingAck { .. }));
    let again = payer.poll_transmit().expect("resend");
    assert_eq!(
        again,
        PaymentMessage::Transfer {
            allowance: Some(Box::new(allowance())),
            transfer: transfer.clone(),
        }
    );
    assert_eq!(payer.poll_effect(), None, "nothing new signed or persisted");

    payee.handle(again, &env.ctx()).expect("handled");
    let Some(PayeeEffect::PersistReceipt { receipt, .. }) = payee.poll_effect() else {
        panic!("expected PersistReceipt");
    };
    assert_eq!(receipt.transfer, transfer);
    payee.receipt_persisted().expect("stored");
    payer
        .handle(payee.poll_transmit().expect("ack"), Millis(4))
        .expect("ack");
    assert!(matches!(payer.state(), PayerState::Paid(_)));
}

#[test]
fn payee_holding_allowance_accepts_transfer_without_it() {
    // The passing side of allowance-known.
    let inv = invoice(450, 7);
    let env = Env::new();
    let mut payee = payee_session(&inv);
    let config = PayerConfig {
        send_allowance: false,
        ..PayerConfig::default()
    };
    let mut payer = payer_session(SpendState::FRESH, config);
    let tm = payer_sends(&mut payer, invoice_message(&mut payee));
    assert!(matches!(
        tm,
        PaymentMessage::Transfer {
            allowance: None,
            ..
        }
    ));
    payee.handle(tm, &env.ctx()).expect("handled");
    assert!(matches!(
        payee.poll_effect(),
        Some(PayeeEffect::PersistReceipt { .. })
    ));
    assert_eq!(payee.poll_transmit(), None);
}

#[test]
fn payee_rejects_fork_and_records_conflict() {
    let inv = invoice(450, 7);
    let mut env = Env::new();
    env.add_header(transfer_for(&invoice(450, 1), 1, 450).signed_header());
    let mut payee = payee_session(&inv);
    let _ = invoice_message(&mut payee);
    let t = transfer_for(&inv, 1, 450);
    payee
        .handle(
            PaymentMessage::Transfer {
                allowance: Some(Box::new(allowance())),
                transfer: t.clone(),
            },
            &env.ctx(),
        )
        .expect("handled");
    assert_eq!(
        payee.poll_transmit(),
        Some(PaymentMessage::Reject {
            transfer: t.id(),
            rule: Rule::ConsistentWithMesh,
        })
    );
    let Some(PayeeEffect::RecordConflict(proof)) = payee.poll_effect() else {
        panic!("expected RecordConflict");
    };
    proof.verify(&allowance()).expect("valid proof");
    assert!(matches!(
        payee.poll_effect(),
        Some(PayeeEffect::Refused(PaymentError::Conflict(_)))
    ));
    assert_eq!(payee.state(), &PayeeState::AwaitingTransfer);
}

#[test]
fn payer_refuses_invoice_over_remaining_allowance_without_signing() {
    let spend = SpendState {
        next_seq: 5,
        cumulative: 9_800,
    };
    let inv = invoice(201, 7);
    let mut payee = payee_session(&inv);
    let mut payer = payer_session(spend, PayerConfig::default());
    payer
        .handle(invoice_message(&mut payee), Millis(1))
        .expect("handled");
    let PayerState::Refused(err) = payer.state() else {
        panic!("expected Refused, got {:?}", payer.state());
    };
    assert_eq!(
        *err,
        PaymentError::OverAllowance {
            cumulative: 10_001,
            amount: 10_000,
        }
    );
    assert_eq!(err.rule(), Rule::WithinAllowance);
    assert!(payer.state().is_final());
    // Nothing asked, nothing signed, nothing sent, counter untouched.
    assert_eq!(payer.poll_effect(), None);
    assert_eq!(payer.poll_transmit(), None);
    assert_eq!(payer.spend(), spend);
    assert!(matches!(
        payer.confirm(),
        Err(HandshakeError::WrongCall { .. })
    ));
    assert_eq!(payer.poll_effect(), None);
    assert_eq!(payer.poll_transmit(), None);
}

#[test]
fn payer_accepts_invoice_that_uses_up_the_allowance() {
    let spend = SpendState {
        next_seq: 5,
        cumulative: 9_800,
    };
    let inv = invoice(200, 7);
    let mut payee = payee_session(&inv);
    let mut payer = payer_session(spend, PayerConfig::default());
    let tm = payer_sends(&mut payer, invoice_message(&mut payee));
    let t = transfer_in(&tm);
    assert_eq!((t.header().seq, t.header().cumulative), (5, 10_000));
    assert_eq!(
        payer.spend(),
        SpendState {
            next_seq: 6,
            cumulative: 10_000
        }
    );
}

#[test]
fn payer_gives_up_uncertain_after_max_attempts_with_one_transfer() {
    let config = PayerConfig {
        retry_interval_ms: 100,
        max_attempts: 3,
        ..PayerConfig::default()
    };
    let inv = invoice(450, 7);
    let mut payee = payee_session(&inv);
    let mut payer = payer_session(SpendState::FRESH, config);
    let first = payer_sends(&mut payer, invoice_message(&mut payee));
    let mut sent = vec![first];

    let mut rounds = 0;
    while let Some(at) = payer.poll_timeout() {
        rounds += 1;
        assert!(rounds <= 10, "the payer never gives up");
        // Too early: nothing happens.
        payer.handle_timeout(Millis(at.0 - 1));
        assert_eq!(payer.poll_transmit(), None);
        payer.handle_timeout(at);
        while let Some(m) = payer.poll_transmit() {
            sent.push(m);
        }
    }
    assert_eq!(sent.len(), 3, "one send per attempt");
    let PayerState::Uncertain(t) = payer.state() else {
        panic!("expected Uncertain, got {:?}", payer.state());
    };
    let t = t.clone();
    for m in &sent {
        assert_eq!(transfer_in(m), &t, "every send is the same transfer");
    }
    // The uncertain amount stays spent.
    assert_eq!(
        payer.spend(),
        SpendState {
            next_seq: 2,
            cumulative: 450
        }
    );
    // Only one PersistSpend was ever requested, and nothing more happens.
    assert_eq!(payer.poll_effect(), None);
    payer.handle_timeout(Millis(u64::MAX));
    assert_eq!(payer.poll_transmit(), None);
    assert_eq!(payer.state(), &PayerState::Uncertain(t));
}

// ---------------------------------------------------------------------------
// Review follow-ups: repeats, late acknowledgements, bounded re-asks,
// over-limit headers, the payer's own restriction check.
// ---------------------------------------------------------------------------

fn ack_for(receipt_payee: &SecretKey, t: &Transfer) -> PaymentMessage {
    let r = Receipt::acknowledge(t.clone(), receipt_payee);
    PaymentMessage::Ack {
        transfer: t.id(),
        signature: r.payee_signature,
    }
}

#[test]
fn payer_ignores_a_repeated_invoice_but_not_a_different_one() {
    let inv = invoice(450, 7);
    let mut payer = payer_session(SpendState::FRESH, PayerConfig::default());
    let sent = payer_sends(&mut payer, PaymentMessage::Invoice(inv.clone()));
    assert!(matches!(sent, PaymentMessage::Transfer { .. }));
    // The payee repeats its invoice until the transfer reaches it.
    payer
        .handle(PaymentMessage::Invoice(inv.clone()), Millis(3))
        .expect("a repeat is not an error");
    assert_eq!(payer.poll_transmit(), None);
    assert_eq!(payer.poll_effect(), None);
    let other = invoice(450, 8);
    assert!(matches!(
        payer.handle(PaymentMessage::Invoice(other), Millis(4)),
        Err(HandshakeError::Unexpected { .. })
    ));
}

#[test]
fn payer_takes_a_late_genuine_ack_after_giving_up() {
    let inv = invoice(450, 7);
    let config = PayerConfig {
        max_attempts: 1,
        ..PayerConfig::default()
    };
    let mut payer = payer_session(SpendState::FRESH, config);
    let sent = payer_sends(&mut payer, PaymentMessage::Invoice(inv));
    let t = transfer_in(&sent).clone();
    payer.handle_timeout(Millis(10_000));
    assert_eq!(payer.state(), &PayerState::Uncertain(t.clone()));
    // A forged acknowledgement changes nothing.
    assert_eq!(
        payer.handle(ack_for(&stranger(), &t), Millis(10_001)),
        Err(HandshakeError::BadAcknowledgement)
    );
    assert_eq!(payer.state(), &PayerState::Uncertain(t.clone()));
    // The real one, late, is the payer's proof of payment.
    payer
        .handle(ack_for(&payee(), &t), Millis(10_002))
        .expect("late ack");
    assert!(matches!(payer.state(), PayerState::Paid(r) if r.transfer == t));
    assert!(matches!(
        payer.poll_effect(),
        Some(PayerEffect::StoreReceipt(r)) if r.verify(&payer_pub())
    ));
}

fn payer_pub() -> PublicKey {
    payer().public()
}

#[test]
fn payer_stops_resending_to_a_payee_that_keeps_asking_for_the_allowance() {
    let inv = invoice(450, 7);
    let config = PayerConfig {
        max_attempts: 3,
        send_allowance: false,
        ..PayerConfig::default()
    };
    let mut payer = payer_session(SpendState::FRESH, config);
    let sent = payer_sends(&mut payer, PaymentMessage::Invoice(inv));
    let id = transfer_in(&sent).id();
    let ask = PaymentMessage::Reject {
        transfer: id,
        rule: Rule::AllowanceKnown,
    };
    let mut resent = 0;
    for i in 0..10 {
        let _ = payer.handle(ask.clone(), Millis(10 + i));
        while let Some(m) = payer.poll_transmit() {
            assert!(matches!(
                m,
                PaymentMessage::Transfer {
                    allowance: Some(_),
                    ..
                }
            ));
            resent += 1;
        }
    }
    assert_eq!(
        resent, 2,
        "three sends in all, the first without the allowance"
    );
    assert!(matches!(
        payer.state(),
        PayerState::Rejected {
            rule: Rule::AllowanceKnown,
            ..
        }
    ));
}

#[test]
fn payer_refuses_a_payee_outside_a_key_set_restriction_without_signing() {
    let a = allowance_with(|t| {
        t.restriction = Some(Restriction::Payees(std::collections::BTreeSet::from([
            stranger().public(),
        ])));
    });
    let mut payer = PayerSession::new(a, payer(), SpendState::FRESH, NOW, PayerConfig::default());
    payer
        .handle(PaymentMessage::Invoice(invoice(450, 7)), Millis(1))
        .expect("handled");
    assert_eq!(
        payer.state(),
        &PayerState::Refused(PaymentError::PayeeNotAllowed)
    );
    assert_eq!(payer.poll_effect(), None);
    assert_eq!(payer.poll_transmit(), None);
}

#[test]
fn known_headers_turn_an_over_limit_header_into_a_proof() {
    // Cumulative above the 100.00 allowance, sequence above the cap of 20,
    // and sequence 0: each invalid on its face.
    for (seq, cumulative) in [(1, 10_001), (21, 500), (0, 500)] {
        let mut m = mesh();
        let t = transfer_raw(
            &payer(),
            payee().public(),
            500,
            Nonce([1; 16]),
            seq,
            cumulative,
        );
        let proof = m
            .add_header(t.signed_header())
            .expect("signed by the wallet")
            .expect("a proof");
        assert!(matches!(proof, ConflictProof::OverLimit { .. }));
        proof.verify(&allowance()).expect("the proof verifies");
        assert!(m.has_conflict(&AllowanceId([0xA1; 16])));
    }
    // Within limits: no proof.
    let mut m = mesh();
    let t = transfer_raw(&payer(), payee().public(), 500, Nonce([1; 16]), 20, 10_000);
    assert_eq!(m.add_header(t.signed_header()), Ok(None));
}

#[test]
fn cumulative_step_undercount_is_a_conflict_not_a_mismatch() {
    let previous = header(&payer(), 1, 100, 1);
    let inv = invoice(450, 7);
    let err = assert_fails!(
        check_against_known(&transfer_for(&inv, 2, 549), std::slice::from_ref(&previous)),
        PaymentError::Conflict(_),
        Rule::ConsistentWithMesh
    );
    let PaymentError::Conflict(proof) = err else {
        unreachable!()
    };
    proof.verify(&allowance()).expect("valid proof");
}

#[test]
fn a_lone_header_must_count_one_per_earlier_transfer() {
    // Seq 5 paying 100 implies four earlier transfers of at least 1 each.
    let a = allowance();
    assert!(meshpay_proto::conflict::over_limit(
        &header(&payer(), 5, 103, 1),
        &a
    ));
    assert!(!meshpay_proto::conflict::over_limit(
        &header(&payer(), 5, 104, 1),
        &a
    ));
    let inv = invoice(100, 3);
    assert_fails!(
        check_limits(&transfer_for(&inv, 5, 103), &a),
        PaymentError::CumulativeBelowAmount { .. },
        Rule::CumulativeCoversAmount
    );
    check_limits(&transfer_for(&inv, 5, 104), &a).expect("100 + 4 earlier");
}
