//! Receipts sealed to the settlement service: only the issuer's key opens
//! them, relays see the header and nothing of the body, and any change to
//! the header, the encapsulated key or the sealed bytes is caught.

use meshpay_proto::prelude::*;
use meshpay_proto::sealed::{SealError, SealedReceipt, seal};

fn receipt() -> (Receipt, SecretKey) {
    let payer = SecretKey::from_seed(&[2; 32]);
    let payee = SecretKey::from_seed(&[3; 32]);
    let body = TransferBody {
        payee: payee.public().into(),
        nonce: Nonce([0xab; 16]),
        payer_time: Timestamp(1_800_000_000),
    };
    let t = Transfer::sign(AllowanceId([9; 16]), 4, 1_000, 250, body, &payer);
    (Receipt::acknowledge(t, &payee), payee)
}

#[test]
fn only_the_issuer_opens_a_sealed_receipt() {
    let issuer = SecretKey::from_seed(&[1; 32]);
    let (r, _) = receipt();
    let sealed = seal(&r, &issuer.public(), [7; 32]).expect("seal");
    assert_eq!(sealed.transfer_id(), r.transfer.id());
    assert_eq!(sealed.open(&issuer), Ok(r.clone()));
    let other = SecretKey::from_seed(&[4; 32]);
    assert_eq!(sealed.open(&other), Err(SealError::Open));
    // Round trip through the canonical encoding.
    let decoded = SealedReceipt::decode(&sealed.encode()).expect("decode");
    assert_eq!(decoded.open(&issuer), Ok(r));
}

#[test]
fn a_relay_sees_the_header_and_nothing_of_the_body() {
    let issuer = SecretKey::from_seed(&[1; 32]);
    let (r, payee) = receipt();
    let bytes = seal(&r, &issuer.public(), [7; 32]).expect("seal").encode();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(payee.public().as_bytes()), "payee key in clear");
    assert!(!contains(&[0xab; 16]), "invoice nonce in clear");
    assert!(!contains(&r.payee_signature.0), "payee signature in clear");
    // Two seals of one receipt share nothing but the header.
    let again = seal(&r, &issuer.public(), [8; 32]).expect("seal");
    assert_ne!(
        again.sealed,
        seal(&r, &issuer.public(), [7; 32]).expect("seal").sealed
    );
}

#[test]
fn every_change_is_caught() {
    let issuer = SecretKey::from_seed(&[1; 32]);
    let (r, _) = receipt();
    let sealed = seal(&r, &issuer.public(), [7; 32]).expect("seal");
    for i in 0..sealed.sealed.len() {
        let mut s = sealed.clone();
        s.sealed[i] ^= 1;
        assert_eq!(s.open(&issuer), Err(SealError::Open), "sealed byte {i}");
    }
    for i in 0..32 {
        let mut s = sealed.clone();
        s.enc[i] ^= 1;
        assert!(s.open(&issuer).is_err(), "enc byte {i}");
    }
    // The same sealed body under another header (another id) does not open.
    let mut moved = sealed.clone();
    moved.header.terms.seq += 1;
    assert_eq!(moved.open(&issuer), Err(SealError::Open));
    let mut short = sealed;
    short.sealed.truncate(10);
    assert_eq!(short.open(&issuer), Err(SealError::Open));
}
