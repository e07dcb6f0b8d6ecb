//! Byte-level test vectors: docs/vectors/*.json.
//!
//! The files are generated from the fixtures below; this test checks that
//! (1) the files are exactly what this code generates (so they never go
//! stale), and (2) every case in the files decodes, re-encodes, hashes and
//! verifies as the file says, or fails with the error class it names.
//!
//! To regenerate after a deliberate format change:
//! `UPDATE_VECTORS=1 cargo test -p meshpay-proto --test vectors`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::*;
use meshpay_proto::conflict::detect;
use meshpay_proto::encoding::FORMAT_VERSION;
use meshpay_proto::prelude::*;
use serde_json::{Value, json};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/vectors")
}

/// One case of a vector file.
struct Case {
    name: &'static str,
    kind: &'static str,
    bytes: Vec<u8>,
    extra: Value,
}

fn valid<T: Encode>(name: &'static str, kind: &'static str, v: &T, extra: Value) -> Case {
    Case {
        name,
        kind,
        bytes: v.encode(),
        extra,
    }
}

fn invalid(name: &'static str, kind: &'static str, bytes: Vec<u8>, error: &str) -> Case {
    Case {
        name,
        kind,
        bytes,
        extra: json!({ "valid": false, "error": error }),
    }
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

fn to_json(description: &str, cases: Vec<Case>) -> Value {
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|c| {
            let mut v = json!({ "name": c.name, "kind": c.kind, "hex": hex(&c.bytes) });
            if let (Value::Object(m), Value::Object(extra)) = (&mut v, c.extra) {
                m.extend(extra);
            }
            v
        })
        .collect();
    json!({ "description": description, "format_version": FORMAT_VERSION, "cases": cases })
}

fn keys_file() -> Value {
    let keys: Vec<Value> = [("issuer", 1u8), ("payer", 2), ("payee", 3), ("other", 4)]
        .iter()
        .map(|(role, seed)| {
            let k = key(*seed);
            let sig = k.sign(b"meshpay/v1/test", b"hello");
            json!({
                "role": role,
                "seed": hex(&[*seed; 32]),
                "public_key": hex(k.public().as_bytes()),
                "test_signature": {
                    "tag": "meshpay/v1/test",
                    "data_hex": hex(b"hello"),
                    "signature": hex(sig.as_bytes()),
                },
            })
        })
        .collect();
    let h = Hash::tagged(b"meshpay/v1/test", b"hello");
    json!({
        "description": "Ed25519 keys from RFC 8032 seeds of 32 repeated bytes, a signature over tag || 0x00 || data, and SHA-256(tag || 0x00 || data).",
        "keys": keys,
        "test_hash": { "tag": "meshpay/v1/test", "data_hex": hex(b"hello"), "sha256": hex(h.as_bytes()) },
    })
}

fn signed_extra<T: meshpay_proto::signed::SignedTerms>(s: &Signed<T>, signer: &SecretKey) -> Value {
    assert!(s.verify_by(&signer.public()));
    json!({ "valid": true, "signer": hex(signer.public().as_bytes()) })
}

fn other_payee() -> PublicKey {
    key(4).public()
}

fn valid_cases() -> Vec<Case> {
    let a = allowance();
    let inv = invoice(450, 0x11);
    let t1 = transfer_for(&inv, 1, 450);
    let receipt = Receipt::acknowledge(t1.clone(), &payee());
    let t1b = transfer_raw(&payer(), other_payee(), 450, Nonce([0x22; 16]), 1, 450);
    let t2 = transfer_raw(&payer(), other_payee(), 300, Nonce([0x33; 16]), 2, 400);
    let fork = detect(&t1.signed_header(), &t1b.signed_header()).expect("fork");
    let rewind = detect(&t1.signed_header(), &t2.signed_header()).expect("rewind");
    let over = transfer_raw(
        &payer(),
        other_payee(),
        5_000,
        Nonce([0x44; 16]),
        21,
        10_500,
    );
    let over = ConflictProof::OverLimit {
        header: over.signed_header(),
    };
    for p in [&fork, &rewind, &over] {
        p.verify(&a).expect("fixture proof verifies");
    }

    let restricted = allowance_with(|t| {
        t.id = AllowanceId([0xA2; 16]);
        t.restriction = Some(Restriction::Payees(BTreeSet::from([
            payee().public(),
            other_payee(),
        ])));
    });
    let by_class = allowance_with(|t| {
        t.id = AllowanceId([0xA3; 16]);
        t.restriction = Some(Restriction::PayeeClass(7));
    });
    let cert = IssuerCertificate::sign(
        IssuerCertificateTerms {
            key: key(5).public(),
            not_before: NOW,
            not_after: NOW.plus(365 * 86_400),
        },
        &issuer(),
    );
    let credential = payee_credential(7);
    let revocations = RevocationList::sign(
        RevocationListTerms {
            version: 3,
            issued_at: NOW,
            issuer: issuer().public(),
            entries: BTreeMap::from([
                (
                    Revoked::Allowance(AllowanceId([0xA1; 16])),
                    RevocationReason::DoubleSpend,
                ),
                (
                    Revoked::Wallet(key(6).public()),
                    RevocationReason::LostDevice,
                ),
            ]),
        },
        &issuer(),
    );
    let ack = SettlementAck::sign(
        SettlementAckTerms {
            serial: 9,
            issued_at: NOW,
            issuer: issuer().public(),
            outcomes: BTreeMap::from([
                (t1.id(), Outcome::Settled),
                (t1b.id(), Outcome::Refused(Refusal::Conflicted)),
            ]),
        },
        &issuer(),
    );
    // A later acknowledgement: t1 lost to a fork after all, the risk fund
    // covered 300 of its 450, and a third receipt came too late.
    let ack_covered = SettlementAck::sign(
        SettlementAckTerms {
            serial: 10,
            issued_at: NOW.plus(60),
            issuer: issuer().public(),
            outcomes: BTreeMap::from([
                (
                    t1.id(),
                    Outcome::Covered {
                        refusal: Refusal::Conflicted,
                        by_fund: 300,
                    },
                ),
                (t1b.id(), Outcome::Refused(Refusal::Late)),
            ]),
        },
        &issuer(),
    );
    let mut class_invoice = invoice(450, 0x55);
    class_invoice.credential = Some(Box::new(credential.clone()));
    class_invoice.memo = None;

    vec![
        valid("allowance", "allowance", &a, signed_extra(&a, &issuer())),
        valid(
            "allowance restricted to two payees",
            "allowance",
            &restricted,
            signed_extra(&restricted, &issuer()),
        ),
        valid(
            "allowance restricted to payee class 7",
            "allowance",
            &by_class,
            signed_extra(&by_class, &issuer()),
        ),
        valid(
            "issuer certificate",
            "issuer-certificate",
            &cert,
            signed_extra(&cert, &issuer()),
        ),
        valid(
            "payee credential",
            "payee-credential",
            &credential,
            signed_extra(&credential, &issuer()),
        ),
        valid("invoice", "invoice", &inv, json!({ "valid": true })),
        valid(
            "invoice with credential",
            "invoice",
            &class_invoice,
            json!({ "valid": true }),
        ),
        valid(
            "transfer body",
            "transfer-body",
            t1.body(),
            json!({ "valid": true, "hash": hex(t1.body().hash().as_bytes()) }),
        ),
        valid(
            "transfer header",
            "transfer-header",
            t1.header(),
            json!({ "valid": true, "id": hex(t1.id().as_bytes()) }),
        ),
        valid(
            "signed transfer header",
            "signed-header",
            &t1.signed_header(),
            json!({ "valid": true, "id": hex(t1.id().as_bytes()), "signer": hex(payer().public().as_bytes()) }),
        ),
        valid(
            "transfer",
            "transfer",
            &t1,
            json!({ "valid": true, "id": hex(t1.id().as_bytes()), "signer": hex(payer().public().as_bytes()) }),
        ),
        valid(
            "receipt",
            "receipt",
            &receipt,
            json!({ "valid": true, "id": hex(t1.id().as_bytes()), "signer": hex(payer().public().as_bytes()) }),
        ),
        valid(
            "conflict proof: fork",
            "conflict-proof",
            &fork,
            json!({ "valid": true, "hash": hex(fork.hash().as_bytes()) }),
        ),
        valid(
            "conflict proof: rewind",
            "conflict-proof",
            &rewind,
            json!({ "valid": true, "hash": hex(rewind.hash().as_bytes()) }),
        ),
        valid(
            "conflict proof: over limit",
            "conflict-proof",
            &over,
            json!({ "valid": true, "hash": hex(over.hash().as_bytes()) }),
        ),
        valid(
            "revocation list",
            "revocation-list",
            &revocations,
            signed_extra(&revocations, &issuer()),
        ),
        valid(
            "settlement acknowledgement",
            "settlement-ack",
            &ack,
            signed_extra(&ack, &issuer()),
        ),
        valid(
            "settlement acknowledgement with a covered loss",
            "settlement-ack",
            &ack_covered,
            signed_extra(&ack_covered, &issuer()),
        ),
        valid(
            "message: invoice",
            "payment-message",
            &PaymentMessage::Invoice(inv.clone()),
            json!({ "valid": true }),
        ),
        valid(
            "message: transfer with allowance",
            "payment-message",
            &PaymentMessage::Transfer {
                allowance: Some(Box::new(a.clone())),
                transfer: t1.clone(),
            },
            json!({ "valid": true }),
        ),
        valid(
            "message: transfer without allowance",
            "payment-message",
            &PaymentMessage::Transfer {
                allowance: None,
                transfer: t1.clone(),
            },
            json!({ "valid": true }),
        ),
        valid(
            "message: ack",
            "payment-message",
            &PaymentMessage::Ack {
                transfer: t1.id(),
                signature: receipt.payee_signature,
            },
            json!({ "valid": true }),
        ),
        valid(
            "message: reject",
            "payment-message",
            &PaymentMessage::Reject {
                transfer: t1.id(),
                rule: Rule::PaymentCap,
            },
            json!({ "valid": true }),
        ),
    ]
}

fn invalid_cases() -> Vec<Case> {
    let inv = invoice(450, 0x11);
    let t1 = transfer_for(&inv, 1, 450);
    let header = t1.header().encode();
    let receipt = Receipt::acknowledge(t1.clone(), &payee()).encode();

    let mut v2 = header.clone();
    v2[0] = 2;
    let mut trailing = header.clone();
    trailing.push(0);
    // seq = 1 sits right after the version byte and the 16-byte allowance id;
    // 0x81 0x00 is an over-long varint for 1.
    assert_eq!(header[17], 1);
    let mut overlong = header[..17].to_vec();
    overlong.extend_from_slice(&[0x81, 0x00]);
    overlong.extend_from_slice(&header[18..]);
    let truncated = receipt[..receipt.len() - 1].to_vec();

    // Restriction set out of order: swap the two 32-byte keys.
    let restricted = allowance_with(|t| {
        t.restriction = Some(Restriction::Payees(BTreeSet::from([
            payee().public(),
            other_payee(),
        ])));
    })
    .encode();
    let (lo, hi) = {
        let (a, b) = (payee().public(), other_payee());
        if a < b { (a, b) } else { (b, a) }
    };
    let pos = restricted
        .windows(64)
        .position(|w| w[..32] == lo.as_bytes()[..] && w[32..] == hi.as_bytes()[..])
        .expect("keys are adjacent in the encoding");
    let mut unordered = restricted.clone();
    unordered[pos..pos + 32].copy_from_slice(hi.as_bytes());
    unordered[pos + 32..pos + 64].copy_from_slice(lo.as_bytes());

    // The payee key of the invoice replaced by an invalid point and by a
    // small-order point (the identity, y = 1).
    let inv_bytes = inv.encode();
    let mut non_canonical_key = inv_bytes.clone();
    non_canonical_key[1..33].copy_from_slice(&[0xFF; 32]);
    let off_curve = (2u8..=255)
        .map(|b| {
            let mut k = [0u8; 32];
            k[0] = b;
            k
        })
        .find(|k| {
            matches!(
                PublicKey::from_bytes(k),
                Err(meshpay_proto::crypto::KeyError::NotOnCurve)
            )
        })
        .expect("some small y is off the curve");
    let mut not_on_curve = inv_bytes.clone();
    not_on_curve[1..33].copy_from_slice(&off_curve);
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut weak = inv_bytes.clone();
    weak[1..33].copy_from_slice(&identity);
    // Currency "eur" in lower case.
    let mut lower = inv_bytes.clone();
    let cur = lower
        .windows(3)
        .position(|w| w == b"EUR")
        .expect("currency bytes");
    lower[cur..cur + 3].copy_from_slice(b"eur");
    // The memo option tag set to 2.
    let memo_tag = cur + 3 + 16;
    let mut bad_option = inv_bytes.clone();
    assert_eq!(bad_option[memo_tag], 1);
    bad_option[memo_tag] = 2;
    // One bit of the payer's signature flipped: decodes, does not verify.
    let mut flipped = t1.encode();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    // A message variant index past the last one.
    let bad_variant = vec![FORMAT_VERSION, 9];

    vec![
        invalid("empty input", "transfer-header", vec![], "empty"),
        invalid(
            "unknown version 2",
            "transfer-header",
            v2,
            "unknown-version",
        ),
        invalid(
            "trailing zero byte",
            "transfer-header",
            trailing,
            "trailing-bytes",
        ),
        invalid(
            "over-long varint for seq",
            "transfer-header",
            overlong,
            "non-canonical",
        ),
        invalid("truncated receipt", "receipt", truncated, "malformed"),
        invalid(
            "restriction keys out of order",
            "allowance",
            unordered,
            "non-canonical",
        ),
        invalid(
            "payee key not on the curve",
            "invoice",
            not_on_curve,
            "malformed",
        ),
        invalid("payee key of small order", "invoice", weak, "malformed"),
        invalid(
            "payee key with y >= p",
            "invoice",
            non_canonical_key,
            "malformed",
        ),
        invalid("lower-case currency", "invoice", lower, "malformed"),
        invalid("option tag 2", "invoice", bad_option, "malformed"),
        invalid(
            "payer signature bit flipped",
            "transfer",
            flipped,
            "bad-signature",
        ),
        invalid(
            "unknown message variant",
            "payment-message",
            bad_variant,
            "malformed",
        ),
    ]
}

fn generated() -> Vec<(&'static str, Value)> {
    vec![
        ("keys.json", keys_file()),
        (
            "objects.json",
            to_json(
                "Valid encodings of every object. 'hex' includes the version byte; hashes and ids are over the encoding without it.",
                valid_cases(),
            ),
        ),
        (
            "invalid.json",
            to_json(
                "Encodings every decoder must refuse, with the class of error.",
                invalid_cases(),
            ),
        ),
    ]
}

#[test]
fn vector_files_match_the_code() {
    let update = std::env::var_os("UPDATE_VECTORS").is_some();
    for (file, value) in generated() {
        let text = serde_json::to_string_pretty(&value).expect("json") + "\n";
        let path = dir().join(file);
        if update {
            std::fs::create_dir_all(dir()).expect("create docs/vectors");
            std::fs::write(&path, &text).expect("write vectors");
        }
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_VECTORS=1)", path.display()));
        assert_eq!(
            on_disk, text,
            "{file} is stale: run with UPDATE_VECTORS=1 and review the diff"
        );
    }
}

fn load(file: &str) -> Value {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path).expect("vector file");
    serde_json::from_str(&text).expect("vector json")
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

/// Re-encoding, id or hash, and whether the signature (or proof) verifies.
type Checked = Result<(Vec<u8>, Option<[u8; 32]>, bool), DecodeError>;

/// Decodes `bytes` as `kind`; returns the re-encoding, the id or hash the
/// object has, and whether its signature verifies against `signer`.
fn check_kind(kind: &str, bytes: &[u8], signer: Option<PublicKey>) -> Checked {
    fn signed<T: meshpay_proto::signed::SignedTerms>(
        b: &[u8],
        signer: Option<PublicKey>,
    ) -> Checked {
        let s = Signed::<T>::decode(b)?;
        let ok = signer.is_none_or(|k| s.verify_by(&k));
        Ok((s.encode(), None, ok))
    }
    match kind {
        "allowance" => signed::<AllowanceTerms>(bytes, signer),
        "issuer-certificate" => signed::<IssuerCertificateTerms>(bytes, signer),
        "payee-credential" => signed::<PayeeCredentialTerms>(bytes, signer),
        "revocation-list" => signed::<RevocationListTerms>(bytes, signer),
        "settlement-ack" => signed::<SettlementAckTerms>(bytes, signer),
        "signed-header" => {
            let s = SignedHeader::decode(bytes)?;
            let ok = signer.is_none_or(|k| s.verify_by(&k));
            Ok((s.encode(), Some(s.id().0), ok))
        }
        "invoice" => Invoice::decode(bytes).map(|v| (v.encode(), None, true)),
        "transfer-body" => {
            TransferBody::decode(bytes).map(|v| (v.encode(), Some(v.hash().0), true))
        }
        "transfer-header" => {
            TransferHeader::decode(bytes).map(|v| (v.encode(), Some(v.id().0), true))
        }
        "transfer" => Transfer::decode(bytes).map(|v| {
            let ok = signer.is_none_or(|k| v.verify_payer(&k));
            (v.encode(), Some(v.id().0), ok)
        }),
        "receipt" => Receipt::decode(bytes).map(|v| {
            let ok = signer.is_none_or(|k| v.verify(&k));
            (v.encode(), Some(v.transfer.id().0), ok)
        }),
        "conflict-proof" => ConflictProof::decode(bytes).map(|v| {
            let ok = v.verify(&allowance()).is_ok();
            (v.encode(), Some(v.hash().0), ok)
        }),
        "payment-message" => PaymentMessage::decode(bytes).map(|v| (v.encode(), None, true)),
        other => panic!("unknown kind {other} in vectors"),
    }
}

fn error_class(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Empty => "empty",
        DecodeError::UnknownVersion(_) => "unknown-version",
        DecodeError::TrailingBytes { .. } => "trailing-bytes",
        DecodeError::NonCanonical { .. } => "non-canonical",
        DecodeError::Malformed { .. } => "malformed",
        DecodeError::TooLarge { .. } => "too-large",
        _ => "other",
    }
}

#[test]
fn keys_and_hash_match_the_file() {
    let v = load("keys.json");
    for k in v["keys"].as_array().expect("keys") {
        let seed: [u8; 32] = unhex(&k["seed"]).try_into().expect("32-byte seed");
        let sk = SecretKey::from_seed(&seed);
        assert_eq!(unhex(&k["public_key"]), sk.public().as_bytes().to_vec());
        let t = &k["test_signature"];
        let tag = t["tag"].as_str().expect("tag").as_bytes();
        let data = unhex(&t["data_hex"]);
        let sig = Signature(unhex(&t["signature"]).try_into().expect("64 bytes"));
        assert!(sk.public().verify(tag, &data, &sig));
        assert!(!sk.public().verify(b"meshpay/v1/other", &data, &sig));
    }
    let h = &v["test_hash"];
    let got = Hash::tagged(
        h["tag"].as_str().expect("tag").as_bytes(),
        &unhex(&h["data_hex"]),
    );
    assert_eq!(got.as_bytes().to_vec(), unhex(&h["sha256"]));
}

#[test]
fn valid_vectors_decode_reencode_hash_and_verify() {
    let v = load("objects.json");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for c in cases {
        let name = c["name"].as_str().expect("name");
        let bytes = unhex(&c["hex"]);
        let signer = c
            .get("signer")
            .map(|s| PublicKey::from_bytes(&unhex(s).try_into().expect("32")).expect("key"));
        let (re, id, sig_ok) = check_kind(c["kind"].as_str().expect("kind"), &bytes, signer)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(re, bytes, "{name}: re-encoding differs");
        assert!(sig_ok, "{name}: signature or proof does not verify");
        for field in ["id", "hash"] {
            if let Some(want) = c.get(field) {
                assert_eq!(id.map(|b| b.to_vec()), Some(unhex(want)), "{name}: {field}");
            }
        }
    }
}

#[test]
fn invalid_vectors_are_refused_with_the_named_error() {
    let v = load("invalid.json");
    for c in v["cases"].as_array().expect("cases") {
        let name = c["name"].as_str().expect("name");
        let want = c["error"].as_str().expect("error");
        let bytes = unhex(&c["hex"]);
        let result = check_kind(
            c["kind"].as_str().expect("kind"),
            &bytes,
            Some(payer().public()),
        );
        match (want, result) {
            ("bad-signature", Ok((_, _, ok))) => assert!(!ok, "{name}: signature verified"),
            (_, Ok(_)) => panic!("{name}: decoded, expected {want}"),
            (_, Err(e)) => assert_eq!(error_class(&e), want, "{name}: got {e}"),
        }
    }
}
