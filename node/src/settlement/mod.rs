//! The settlement service: accounts, escrow, receipts settled by the rules
//! of `meshpay_proto::settlement`, signed acknowledgements and revocation
//! lists, over redb or PostgreSQL, behind an HTTP API.

pub mod client;
pub mod http;
pub mod kv;
pub mod service;

pub use kv::{Kv, KvError, PgKv, RedbKv};
pub use service::{IssuePolicy, ReceiptOutcome, Service, ServiceError, StatementEntry, Submitted};
