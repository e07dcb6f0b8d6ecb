//! Deterministic fixtures shared by the integration tests, the benchmarks
//! and the test-vector generator.
#![allow(dead_code, unreachable_pub, missing_docs)]

use meshpay_proto::prelude::*;

/// 2027-01-15T08:00:00Z, the "now" of every fixture.
pub const NOW: Timestamp = Timestamp(1_800_000_000);

/// A key from a fixed seed byte (RFC 8032 seed = 32 copies of `b`).
pub fn key(b: u8) -> SecretKey {
    SecretKey::from_seed(&[b; 32])
}

pub fn issuer() -> SecretKey {
    key(1)
}
pub fn payer() -> SecretKey {
    key(2)
}
pub fn payee() -> SecretKey {
    key(3)
}
pub fn eur() -> Currency {
    Currency::new("EUR").expect("valid code")
}

/// Allowance terms: 100.00 EUR, 50.00 per payment, 20 payments, a week.
pub fn terms() -> AllowanceTerms {
    AllowanceTerms {
        id: AllowanceId([0xA1; 16]),
        wallet: payer().public(),
        amount: 10_000,
        currency: eur(),
        issued_at: NOW.minus(3_600),
        expires_at: NOW.plus(7 * 86_400),
        caps: Caps {
            max_per_payment: 5_000,
            max_payments: 20,
        },
        tier: 1,
        restriction: None,
        issuer: issuer().public(),
    }
}

pub fn allowance() -> Allowance {
    Allowance::sign(terms(), &issuer())
}

pub fn allowance_with(f: impl FnOnce(&mut AllowanceTerms)) -> Allowance {
    let mut t = terms();
    f(&mut t);
    Allowance::sign(t, &issuer())
}

pub fn trust() -> TrustStore {
    TrustStore::new(issuer().public())
}

/// The fixture payee's credential for `class`, valid for 30 days.
pub fn payee_credential(class: u32) -> PayeeCredential {
    PayeeCredential::sign(
        PayeeCredentialTerms {
            payee: payee().public(),
            class,
            expires_at: NOW.plus(30 * 86_400),
            issuer: issuer().public(),
        },
        &issuer(),
    )
}

pub fn invoice(amount: u64, nonce: u8) -> Invoice {
    Invoice {
        payee: payee().public(),
        amount,
        currency: eur(),
        nonce: Nonce([nonce; 16]),
        memo: Some("coffee".into()),
        credential: None,
    }
}

/// A transfer from the fixture payer, paying `invoice`.
pub fn transfer_for(invoice: &Invoice, seq: u32, cumulative: u64) -> Transfer {
    transfer_raw(
        &payer(),
        invoice.payee,
        invoice.amount,
        invoice.nonce,
        seq,
        cumulative,
    )
}

pub fn transfer_raw(
    signer: &SecretKey,
    payee: PublicKey,
    amount: u64,
    nonce: Nonce,
    seq: u32,
    cumulative: u64,
) -> Transfer {
    let body = TransferBody {
        payee: payee.into(),
        nonce,
        payer_time: NOW,
    };
    Transfer::sign(
        AllowanceId([0xA1; 16]),
        seq,
        cumulative,
        amount,
        body,
        signer,
    )
}

/// A mesh view that holds the fixture allowance.
pub fn mesh() -> KnownHeaders {
    let mut m = KnownHeaders::new();
    m.add_allowance(VerifiedAllowance::verify(allowance(), &trust()).expect("fixture allowance"));
    m
}

/// Wallet `i`: its key and an allowance of 1,000.00 with 1,000 payments,
/// signed by the fixture issuer.
pub fn wallet(i: u32) -> (SecretKey, Allowance) {
    let mut seed = [0x77u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    let key = SecretKey::from_seed(&seed);
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_le_bytes());
    id[15] = 0xEE;
    let a = Allowance::sign(
        AllowanceTerms {
            id: AllowanceId(id),
            wallet: key.public(),
            amount: 100_000,
            currency: eur(),
            issued_at: NOW.minus(3_600),
            expires_at: NOW.plus(7 * 86_400),
            caps: Caps {
                max_per_payment: 10_000,
                max_payments: 1_000,
            },
            tier: 1,
            restriction: None,
            issuer: issuer().public(),
        },
        &issuer(),
    );
    (key, a)
}

/// A header of `allowance` signed by `key`; `nonce` tells bodies apart.
pub fn header(
    key: &SecretKey,
    allowance: &Allowance,
    seq: u32,
    cumulative: u64,
    nonce: u8,
) -> SignedHeader {
    let body = TransferBody {
        payee: payee().public().into(),
        nonce: Nonce([nonce; 16]),
        payer_time: NOW,
    };
    Transfer::sign(allowance.id, seq, cumulative, 100, body, key).signed_header()
}
