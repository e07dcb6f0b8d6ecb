//! # meshpay-proto
//!
//! The meshpay payment protocol with no I/O: objects and their canonical
//! encoding, the payee's offline check, the payment handshake as two
//! state machines, and the settlement rules ([`settlement`]). The node,
//! the simulator, the tests and the benchmarks all run this same code.
//!
//! Nothing here reads a clock, touches a file or socket, or draws global
//! randomness: time and randomness are arguments, messages go in and out
//! through method calls, and durable writes are requested as effects that
//! the caller confirms (see [`handshake`]).
//!
//! A whole payment in memory:
//!
//! ```
//! use meshpay_proto::prelude::*;
//! # use rand::SeedableRng;
//! # let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! let issuer = SecretKey::generate(&mut rng);
//! let payer_key = SecretKey::generate(&mut rng);
//! let payee_key = SecretKey::generate(&mut rng);
//! let now = Timestamp(1_800_000_000);
//!
//! // Made online: 100.00 EUR escrowed for offline use.
//! let allowance = Allowance::sign(AllowanceTerms {
//!     id: AllowanceId([1; 16]),
//!     wallet: payer_key.public(),
//!     amount: 10_000,
//!     currency: Currency::new("EUR").unwrap(),
//!     issued_at: now,
//!     expires_at: now.plus(7 * 86_400),
//!     caps: Caps { max_per_payment: 5_000, max_payments: 50 },
//!     tier: 1,
//!     restriction: None,
//!     issuer: issuer.public(),
//! }, &issuer);
//!
//! // Offline from here on.
//! let trust = TrustStore::new(issuer.public());
//! let policy = PaymentPolicy::default();
//! let mesh = KnownHeaders::new();
//! let ctx = CheckContext { trust: &trust, policy: &policy, now, mesh: &mesh };
//!
//! let mut payee = PayeeSession::new(payee_key, 450, Currency::new("EUR").unwrap(),
//!     Some("coffee".into()), None, &mut rng, Millis(0));
//! let mut payer = PayerSession::new(allowance, payer_key, SpendState::FRESH, now,
//!     PayerConfig::default());
//!
//! payer.handle(payee.poll_transmit().unwrap(), Millis(1)).unwrap();   // invoice
//! assert!(matches!(payer.poll_effect(), Some(PayerEffect::Confirm(_))));
//! payer.confirm().unwrap();                                            // the user says yes
//! let Some(PayerEffect::PersistSpend { spend, .. }) = payer.poll_effect() else { panic!() };
//! assert_eq!(spend, SpendState { next_seq: 2, cumulative: 450 });      // commit, then:
//! payer.spend_persisted(Millis(2)).unwrap();
//!
//! payee.handle(payer.poll_transmit().unwrap(), &ctx).unwrap();         // transfer
//! assert!(matches!(payee.poll_effect(), Some(PayeeEffect::PersistReceipt { .. })));
//! payee.receipt_persisted().unwrap();                                  // stored, so:
//! payer.handle(payee.poll_transmit().unwrap(), Millis(3)).unwrap();   // ack
//! assert!(matches!(payer.state(), PayerState::Paid(_)));
//! ```

#![deny(missing_docs, unreachable_pub)]

mod bytes;

pub mod allowance;
pub mod conflict;
pub mod crypto;
pub mod encoding;
pub mod handshake;
pub mod known;
pub mod ledger;
pub mod revocation;
pub mod sealed;
pub mod settlement;
pub mod settlement_ack;
pub mod signed;
pub mod sync;
pub mod time;
pub mod transfer;
pub mod validate;
pub mod verify_memo;
pub mod wallet_request;

/// The names most users need, in one import.
pub mod prelude {
    pub use crate::allowance::{
        Allowance, AllowanceId, AllowanceTerms, Caps, Currency, IssuerCertificate,
        IssuerCertificateTerms, PayeeCredential, PayeeCredentialTerms, Restriction, TrustStore,
    };
    pub use crate::conflict::ConflictProof;
    pub use crate::crypto::{Hash, PublicKey, SecretKey, Signature};
    pub use crate::encoding::{DecodeError, Encode};
    pub use crate::handshake::{
        HandshakeError, PayeeEffect, PayeeSession, PayeeState, PayerConfig, PayerEffect,
        PayerSession, PayerState, PaymentMessage, SpendState,
    };
    pub use crate::known::KnownHeaders;
    pub use crate::revocation::{RevocationList, RevocationListTerms, RevocationReason, Revoked};
    pub use crate::settlement_ack::{Outcome, Refusal, SettlementAck, SettlementAckTerms};
    pub use crate::signed::Signed;
    pub use crate::time::{Millis, Timestamp};
    pub use crate::transfer::{
        Invoice, Nonce, Receipt, SignedHeader, Transfer, TransferBody, TransferHeader, TransferId,
    };
    pub use crate::validate::{
        CheckContext, MeshView, PaymentError, PaymentPolicy, Rule, VerifiedAllowance,
    };
}
