//! The settlement service over its two backends: the same story gives the
//! same outcomes, balances, statements, acknowledgements and revocations
//! on redb and on PostgreSQL, and money is conserved throughout.
//!
//! PostgreSQL runs when MESHPAY_TEST_POSTGRES holds a URL (`bash
//! .ci/postgres.sh` starts a server and prints one; CI does this);
//! otherwise the PostgreSQL half says it is skipped.

use meshpay_node::settlement::{Kv, PgKv, RedbKv, Service, ServiceError};
use meshpay_proto::crypto::KeyBytes;
use meshpay_proto::prelude::*;
use meshpay_proto::settlement::{Account, SettlementConfig};
use meshpay_proto::wallet_request::{WalletAction, WalletRequest, WalletRequestTerms};
use serde_json::{Value, json};

const T0: Timestamp = Timestamp(1_800_000_000);

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn issue_request(wallet: &SecretKey, nonce: u8, amount: u64, at: Timestamp) -> WalletRequest {
    WalletRequest::sign(
        WalletRequestTerms {
            wallet: wallet.public(),
            issuer: key(1).public(),
            nonce: Nonce([nonce; 16]),
            at,
            action: WalletAction::Issue {
                amount,
                currency: Currency::new("EUR").expect("code"),
                valid_secs: 86_400,
                caps: Caps {
                    max_per_payment: 3_000,
                    max_payments: 100,
                },
            },
        },
        wallet,
    )
}

fn receipt(
    payer: &SecretKey,
    payee: &SecretKey,
    allowance: AllowanceId,
    seq: u32,
    cumulative: u64,
    amount: u64,
    nonce: u8,
) -> Receipt {
    let body = TransferBody {
        payee: payee.public().into(),
        nonce: Nonce([nonce; 16]),
        payer_time: T0,
    };
    Receipt::acknowledge(
        Transfer::sign(allowance, seq, cumulative, amount, body, payer),
        payee,
    )
}

fn refused(r: Result<impl std::fmt::Debug, ServiceError>) -> String {
    match r {
        Err(ServiceError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Runs the story and returns everything observable, as JSON.
fn story(kv: Box<dyn Kv>) -> Value {
    let issuer = key(1);
    let (alice, bob, carol) = (key(2), key(3), key(4));
    let mut s = Service::open(kv, issuer.clone(), SettlementConfig::default()).expect("open");
    let wallet = |k: &SecretKey| Account::Wallet(KeyBytes::from(k.public()));

    let first = s
        .deposit(alice.public().into(), 10_000, "bank-tx-1")
        .expect("deposit");
    assert_eq!((first.balance, first.repeated), (10_000, false));
    // The operator retries after losing the answer: nothing more is
    // credited, and the first answer comes back. Another deposit under the
    // same reference is refused; bad references are refused.
    let retry = s
        .deposit(alice.public().into(), 10_000, "bank-tx-1")
        .expect("retry");
    assert_eq!((retry.balance, retry.repeated), (10_000, true));
    assert!(refused(s.deposit(alice.public().into(), 9_000, "bank-tx-1")).contains("already used"));
    assert!(refused(s.deposit(bob.public().into(), 10_000, "bank-tx-1")).contains("already used"));
    assert!(refused(s.deposit(alice.public().into(), 1, "")).contains("reference"));
    assert!(refused(s.deposit(alice.public().into(), 1, "a\nb")).contains("reference"));
    assert!(refused(s.deposit(alice.public().into(), 1, &"x".repeat(129))).contains("reference"));
    assert_eq!(s.total().expect("total"), 10_000);
    assert_eq!(s.deposits().expect("deposits"), 10_000);

    // Loading an allowance: signed by the wallet, fresh, within balance.
    let id = AllowanceId([9; 16]);
    let request = issue_request(&alice, 1, 8_000, T0);
    let allowance = s.issue(&request, id, T0).expect("issue");
    assert_eq!(allowance.amount, 8_000);
    assert_eq!(s.balance(&wallet(&alice)).expect("b"), 2_000);
    assert_eq!(s.balance(&Account::Escrow(id)).expect("b"), 8_000);
    // The same signed request again (a client that lost the answer) gets
    // the same allowance and escrows nothing more; another request under
    // a used nonce is a replay.
    let again = s
        .issue(&request, AllowanceId([8; 16]), T0.plus(3_600))
        .expect("again");
    assert_eq!(again, allowance);
    assert_eq!(s.balance(&wallet(&alice)).expect("b"), 2_000);
    let reused = issue_request(&alice, 1, 500, T0);
    assert!(refused(s.issue(&reused, AllowanceId([8; 16]), T0)).contains("replay"));
    let forged = WalletRequest {
        terms: issue_request(&alice, 2, 100, T0).terms,
        signature: issue_request(&bob, 2, 100, T0).signature,
    };
    assert!(refused(s.issue(&forged, AllowanceId([8; 16]), T0)).contains("signature"));
    let mut elsewhere = issue_request(&alice, 5, 100, T0).terms;
    elsewhere.issuer = key(7).public();
    let elsewhere = WalletRequest::sign(elsewhere, &alice);
    assert!(refused(s.issue(&elsewhere, AllowanceId([8; 16]), T0)).contains("another issuer"));
    let stale = issue_request(&alice, 3, 100, T0.minus(3_600));
    assert!(refused(s.issue(&stale, AllowanceId([8; 16]), T0)).contains("clock"));
    let greedy = issue_request(&alice, 4, 3_001, T0);
    assert!(refused(s.issue(&greedy, AllowanceId([8; 16]), T0)).contains("holds"));
    // The issuer, not the wallet, sets the limits: caps above its policy
    // are refused.
    let mut wide = issue_request(&alice, 6, 3_000, T0).terms;
    if let WalletAction::Issue { caps, .. } = &mut wide.action {
        caps.max_payments = 100_000;
    }
    let wide = WalletRequest::sign(wide, &alice);
    assert!(refused(s.issue(&wide, AllowanceId([8; 16]), T0)).contains("policy"));

    // Offline, alice pays bob three times; a clone of her wallet spends
    // sequence 2 again at carol.
    let r1 = receipt(&alice, &bob, id, 1, 1_000, 1_000, 1);
    let r2 = receipt(&alice, &bob, id, 2, 3_000, 2_000, 2);
    let r3 = receipt(&alice, &bob, id, 3, 3_500, 500, 3);
    let fork = receipt(&alice, &carol, id, 2, 3_500, 2_500, 4);
    let mut damaged = r3.clone();
    damaged.payee_signature = r1.payee_signature;

    let mut answers = Vec::new();
    for (i, batch) in [
        vec![r1.clone(), r3.clone()],
        vec![damaged, r1.clone()],
        vec![fork.clone(), r2.clone(), r2.clone()],
        vec![r1.clone(), r2.clone(), r3.clone(), fork.clone()],
    ]
    .iter()
    .enumerate()
    {
        let done = s.submit(batch, T0.plus(3_600 + i as u64)).expect("submit");
        answers.push(json!({
            "receipts": serde_json::to_value(&done.receipts).expect("json"),
            "ack": done.ack.as_ref().map(|a| hex::encode(a.encode())),
        }));
        // Conservation after every batch.
        assert_eq!(s.total().expect("total"), 10_000);
        if let Some(ack) = &done.ack {
            assert!(ack.verify_by(&issuer.public()));
        }
    }
    // The fork was proven: alice's wallet is revoked in a signed list.
    let list = s.revocations().expect("list").expect("a list");
    assert!(list.verify_by(&issuer.public()));
    assert!(list.revokes(&id, &alice.public()));
    // The escrow was never exceeded.
    let settled: i64 = [&bob, &carol]
        .iter()
        .map(|k| s.balance(&wallet(k)).expect("b"))
        .sum();
    assert!(settled <= 8_000, "settled {settled}");
    assert!(settled > 0);

    // After expiry and grace, the unspent escrow returns to alice.
    let late = T0.plus(86_400 + s.config().grace_secs + 1);
    let refunds = s.close_due(late).expect("close");
    assert_eq!(refunds.len(), 1);
    assert_eq!(s.balance(&Account::Escrow(id)).expect("b"), 0);
    assert_eq!(
        s.balance(&wallet(&alice)).expect("b") + settled,
        10_000,
        "alice keeps what was not settled"
    );
    assert!(s.close_due(late.plus(10)).expect("again").is_empty());
    let too_late = receipt(&alice, &bob, id, 4, 3_600, 100, 5);
    let done = s.submit(&[too_late], late.plus(20)).expect("submit");
    assert!(matches!(
        done.receipts[0].outcome,
        Outcome::Refused(Refusal::Late)
    ));
    assert_eq!(s.total().expect("total"), 10_000);

    let acks: Vec<String> = s
        .acks_since(0, 100)
        .expect("acks")
        .iter()
        .map(|a| hex::encode(a.encode()))
        .collect();
    let people = [&alice, &bob, &carol];
    let balances: Vec<i64> = people
        .iter()
        .map(|k| s.balance(&wallet(k)).expect("b"))
        .collect();
    let statements: Vec<Value> = people
        .iter()
        .map(|k| serde_json::to_value(s.statement(&k.public().into()).expect("st")).expect("json"))
        .collect();
    json!({
        "answers": answers,
        "balances": balances,
        "statements": statements,
        "acks": acks,
        "revocations": hex::encode(list.encode()),
        "outcome_r2": format!("{:?}", s.outcome(&r2.transfer.id()).expect("o")),
    })
}

fn postgres_url() -> Option<String> {
    match std::env::var("MESHPAY_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "PostgreSQL half SKIPPED: set MESHPAY_TEST_POSTGRES (bash .ci/postgres.sh prints a URL)"
            );
            None
        }
    }
}

/// A fresh PostgreSQL schema for one test.
fn fresh_pg(url: &str, schema: &str) -> PgKv {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .expect("drop");
    PgKv::connect_schema(url, schema).expect("pg")
}

#[test]
fn the_story_gives_identical_results_on_redb_and_postgres() {
    let dir = tempfile::tempdir().expect("dir");
    let on_redb = story(Box::new(
        RedbKv::open(&dir.path().join("s.redb")).expect("redb"),
    ));
    // Reopening the redb file finds the same state.
    {
        let mut s = Service::open(
            Box::new(RedbKv::open(&dir.path().join("s.redb")).expect("redb")) as Box<dyn Kv>,
            key(1),
            SettlementConfig::default(),
        )
        .expect("reopen");
        assert_eq!(s.total().expect("total"), 10_000);
        assert_eq!(s.deposits().expect("deposits"), 10_000);
        // Another issuer's key is refused, and changes nothing.
        drop(s);
        let other = Service::open(
            Box::new(RedbKv::open(&dir.path().join("s.redb")).expect("redb")) as Box<dyn Kv>,
            key(7),
            SettlementConfig::default(),
        );
        assert!(matches!(other, Err(ServiceError::Mismatch(_))));
    }
    let Some(url) = postgres_url() else {
        return;
    };
    let on_pg = story(Box::new(fresh_pg(&url, "test_story")));
    assert_eq!(on_redb, on_pg);
    // One writer per schema: a second service on it is refused.
    let first = PgKv::connect_schema(&url, "test_story").expect("first");
    let second = PgKv::connect_schema(&url, "test_story");
    assert!(
        matches!(&second, Err(e) if e.to_string().contains("another settlement service")),
        "a second writer was let in"
    );
    drop(first);
}

#[test]
fn a_lost_postgres_connection_is_opened_again_and_nothing_is_lost() {
    let Some(url) = postgres_url() else {
        return;
    };
    let mut s = Service::open(
        Box::new(fresh_pg(&url, "test_reconnect")) as Box<dyn Kv>,
        key(1),
        SettlementConfig::default(),
    )
    .expect("open");
    let alice = key(2);
    s.deposit(alice.public().into(), 1_000, "r-1")
        .expect("deposit");
    // The server drops the service's connection (as a restart does).
    let cut = || {
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("admin");
        let killed: bool = admin
            .query_one(
                "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = 'meshpay-settlement-test_reconnect'",
                &[],
            )
            .expect("terminate")
            .get(0);
        assert!(killed, "no session to cut");
    };
    cut();
    // A write after the cut: connected again, committed once.
    let d = s
        .deposit(alice.public().into(), 500, "r-2")
        .expect("deposit after reconnect");
    assert_eq!((d.balance, d.repeated), (1_500, false));
    cut();
    // A read after the cut.
    assert_eq!(
        s.balance(&Account::Wallet(KeyBytes::from(alice.public())))
            .expect("balance after reconnect"),
        1_500
    );
    assert_eq!(s.deposits().expect("deposits"), 1_500);
    // The writer lock came back with the connection.
    assert!(PgKv::connect_schema(&url, "test_reconnect").is_err());
}
