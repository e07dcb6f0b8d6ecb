//! The node's database: durability, reopening, and clear errors on files
//! it must not touch.

use meshpay_node::store::{Role, SCHEMA_VERSION, Store, StoreError};
use meshpay_proto::prelude::*;

fn key(b: u8) -> SecretKey {
    SecretKey::from_seed(&[b; 32])
}

fn receipt(seq: u32) -> Receipt {
    let body = TransferBody {
        payee: key(3).public().into(),
        nonce: Nonce([seq as u8; 16]),
        payer_time: Timestamp(1),
    };
    let t = Transfer::sign(
        AllowanceId([1; 16]),
        seq,
        u64::from(seq) * 10,
        10,
        body,
        &key(2),
    );
    Receipt::acknowledge(t, &key(3))
}

#[test]
fn what_was_committed_is_there_after_reopening() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("node.redb");
    let r = receipt(1);
    let spend = SpendState {
        next_seq: 2,
        cumulative: 10,
    };
    let node_id = {
        let s = Store::open(&path).expect("create");
        s.commit_spend(&AllowanceId([1; 16]), spend, Some(&r.transfer))
            .expect("spend");
        s.commit_receipt(&r, Role::Paid).expect("receipt");
        s.save_ledger(b"full", 3, b"aside").expect("ledger");
        s.append_ledger(b"+more", b"aside2").expect("increment");
        s.node_id().expect("id")
    };
    let s = Store::open(&path).expect("reopen");
    assert_eq!(s.node_id().expect("id"), node_id, "the node id is stable");
    // The paid receipt cleared the pending transfer in the same commit.
    assert_eq!(
        s.spend(&AllowanceId([1; 16])).expect("spend"),
        (spend, None)
    );
    assert_eq!(
        s.receipt(&r.transfer.id()).expect("get"),
        Some((r, Role::Paid))
    );
    assert_eq!(
        s.ledger().expect("ledger"),
        Some((b"full+more".to_vec(), 3, b"aside2".to_vec()))
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("node.redb");
    std::fs::write(&path, b"these are not the pages you are looking for").expect("write");
    let err = Store::open(&path).expect_err("refused");
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains("node.redb"), "{err}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"these are not the pages you are looking for"
    );
}

#[test]
fn a_database_of_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("node.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let tx = db.begin_write().expect("tx");
        {
            let mut meta = tx
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .expect("meta");
            meta.insert("schema", (SCHEMA_VERSION + 1).to_le_bytes().as_slice())
                .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let err = Store::open(&path).expect_err("refused");
    assert!(
        matches!(err, StoreError::Schema { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("node.redb"));
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let err = Store::open(std::path::Path::new("/nonexistent-meshpay/dir/node.redb"))
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("/nonexistent-meshpay/dir/node.redb"),
        "{err}"
    );
}

#[test]
fn peer_sync_states_are_kept_per_epoch() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Store::open(&dir.path().join("node.redb")).expect("create");
    s.put_peer_state(b"peer-1", 3, b"state").expect("put");
    assert_eq!(
        s.peer_state(b"peer-1", 3).expect("get"),
        Some(b"state".to_vec())
    );
    assert_eq!(
        s.peer_state(b"peer-1", 4).expect("get"),
        None,
        "another epoch"
    );
    assert_eq!(s.peer_state(b"peer-2", 3).expect("get"), None);
}

/// The stored ledger is a full save plus increments; after
/// `COMPACT_AFTER` increments the next save is a full one, so the pieces
/// stay bounded and the ledger reloads the same.
#[test]
fn the_stored_ledger_is_compacted() {
    use meshpay_node::node::{COMPACT_AFTER, Node};
    use meshpay_proto::ledger::Entry;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("n.redb");
    let issuer = key(1);
    let trust = TrustStore::new(issuer.public());
    let allowance = allowance(&issuer);
    let mut node = Node::open("n", &path, key(4), trust.clone()).expect("node");
    node.ledger_mut()
        .insert(Entry::Allowance(allowance))
        .expect("allowance");
    node.persist_ledger().expect("persist");
    let mut most = 0;
    for seq in 1..=(COMPACT_AFTER as u32 * 2 + 10) {
        let header = receipt(seq).transfer.signed_header();
        node.ledger_mut()
            .insert(Entry::Header(header))
            .expect("header");
        node.persist_ledger().expect("persist");
        most = most.max(node.store().ledger_chunks().expect("chunks"));
    }
    assert!(most <= COMPACT_AFTER + 1, "{most} pieces");
    let (digest, entries) = (node.ledger().digest(), node.ledger().len());
    drop(node);
    let node = Node::open("n", &path, key(4), trust).expect("reopen");
    assert_eq!(node.ledger().digest(), digest);
    assert_eq!(node.ledger().len(), entries);
}

/// Wallet 2's allowance, signed by `issuer`.
fn allowance(issuer: &SecretKey) -> Allowance {
    Allowance::sign(
        AllowanceTerms {
            id: AllowanceId([1; 16]),
            wallet: key(2).public(),
            amount: 1_000_000,
            currency: Currency::new("EUR").expect("code"),
            issued_at: Timestamp(0),
            expires_at: Timestamp(4_000_000_000),
            caps: Caps {
                max_per_payment: 1_000,
                max_payments: 10_000,
            },
            tier: 1,
            restriction: None,
            issuer: issuer.public(),
        },
        issuer,
    )
}

/// A conflict proof learnt from a peer's urgent message is held aside,
/// not written into the replica; the node stores it beside the ledger, in
/// the same commit, so that it survives a restart and so that replica
/// entries checked against its allowance still load.
#[test]
fn entries_held_aside_survive_a_restart() {
    use meshpay_node::node::Node;
    use meshpay_proto::ledger::Entry;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("n.redb");
    let issuer = key(1);
    let trust = TrustStore::new(issuer.public());
    let allowance = allowance(&issuer);
    let fork = |nonce: u8| {
        let body = TransferBody {
            payee: key(3).public().into(),
            nonce: Nonce([nonce; 16]),
            payer_time: Timestamp(1),
        };
        Transfer::sign(AllowanceId([1; 16]), 1, 10, 10, body, &key(2)).signed_header()
    };
    let proof = meshpay_proto::conflict::detect(&fork(1), &fork(2)).expect("a fork");
    let mut node = Node::open("n", &path, key(4), trust.clone()).expect("node");
    node.ledger_mut()
        .insert_urgent(vec![Entry::Allowance(allowance), Entry::Proof(proof)])
        .expect("urgent entries");
    // A later header of that allowance enters the replica, checked against
    // the allowance held aside.
    node.ledger_mut()
        .insert(Entry::Header(receipt(3).transfer.signed_header()))
        .expect("header");
    node.persist_ledger().expect("persist");
    // The header took its allowance into the replica with it (an epoch's
    // document holds the allowance of every header in it): the proof is
    // left aside.
    assert_eq!(node.ledger().aside_len(), 1);
    let (digest, proofs) = (node.ledger().digest(), node.ledger().proofs());
    drop(node);
    let node = Node::open("n", &path, key(4), trust).expect("reopen");
    assert_eq!(node.ledger().digest(), digest);
    assert_eq!(node.ledger().proofs(), proofs);
    assert!(node.ledger().has_conflict(&AllowanceId([1; 16])));
}

/// A rotation into a new epoch is stored at once, in full; after a
/// restart the node is in that epoch, with what it held, and the header of
/// a receipt that settled stays out of the document (held aside).
#[test]
fn a_rotation_is_stored_at_once_and_settled_receipts_stay_out_of_the_document() {
    use meshpay_node::node::Node;
    use meshpay_proto::ledger::{Entry, Replica, epoch_of};
    use meshpay_proto::settlement_ack::{Outcome, SettlementAck, SettlementAckTerms};
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("n.redb");
    let issuer = key(1);
    let trust = TrustStore::new(issuer.public());
    let now = Timestamp(1_800_000_000);
    let mut node = Node::open("n", &path, key(3), trust.clone()).expect("node");
    node.ledger_mut()
        .insert(Entry::Allowance(allowance(&issuer)))
        .expect("allowance");
    for seq in [1, 2] {
        let r = receipt(seq);
        node.store()
            .commit_receipt(&r, Role::Received)
            .expect("receipt");
        node.ledger_mut()
            .insert(Entry::Header(r.transfer.signed_header()))
            .expect("header");
    }
    let ack = SettlementAck::sign(
        SettlementAckTerms {
            serial: 1,
            issued_at: now,
            issuer: issuer.public(),
            outcomes: [(receipt(1).transfer.id(), Outcome::Settled)].into(),
        },
        &issuer,
    );
    node.ledger_mut().insert(Entry::Ack(ack)).expect("ack");
    node.persist_ledger().expect("persist");
    let rotation = node.advance_epoch(now).expect("stored").expect("rotates");
    // The settled receipt's header leaves the document, held aside.
    assert_eq!((rotation.kept, rotation.dropped), (4, 0), "{rotation:?}");
    assert_eq!(node.ledger().aside_len(), 1);
    assert!(node.advance_epoch(now).expect("stored").is_none());
    let (digest, held) = (node.ledger().digest(), node.ledger().held_len());
    drop(node);
    let node = Node::open("n", &path, key(3), trust).expect("reopen");
    assert_eq!(node.ledger().epoch(), epoch_of(now));
    assert_eq!(node.ledger().digest(), digest);
    assert_eq!(node.ledger().held_len(), held);
    // Both headers are held (the settled one still catches a second spend
    // of its number), only the unsettled one is in the document: the
    // restart did not write the settled receipt's header back.
    assert_eq!(node.ledger().headers(&AllowanceId([1; 16])).len(), 2);
    assert_eq!(node.ledger().aside_len(), 1);
    let in_document: Vec<u32> = node
        .ledger()
        .replica()
        .scan("h")
        .iter()
        .filter_map(|(k, _)| u32::from_str_radix(&k[k.len() - 8..], 16).ok())
        .collect();
    assert_eq!(in_document, vec![2]);
}

/// Two nodes in `dir`, "a" (wallet key 3) and "b" (wallet key 5), trusting
/// issuer key 1: their database paths, the issuer and the trust store.
fn two_nodes(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    SecretKey,
    TrustStore,
) {
    let issuer = key(1);
    let trust = TrustStore::new(issuer.public());
    (dir.join("a.redb"), dir.join("b.redb"), issuer, trust)
}

/// `node` is paid, as its payee side does it: the receipt committed, then
/// allowance and header into the ledger as one change, not saved yet.
fn take_payment(node: &mut meshpay_node::node::Node, paid: &Receipt, issuer: &SecretKey) {
    node.store()
        .commit_receipt(paid, Role::Received)
        .expect("receipt");
    node.ledger_mut()
        .insert_payment(allowance(issuer), paid.transfer.signed_header())
        .expect("payment");
}

/// Whether `node`'s ledger holds the header of `r`.
fn holds(node: &meshpay_node::node::Node, r: &Receipt) -> bool {
    node.ledger()
        .all_headers()
        .contains(&r.transfer.signed_header())
}

/// A change of the node's own that left in a sync is on disk before it
/// left. Otherwise a node that stopped before its next save would, after
/// a restart, write other changes under the same sequence numbers, and a
/// peer holding the first would never take anything the node writes in
/// the rest of the epoch.
#[test]
fn a_change_that_left_in_a_sync_was_stored_before_it_left() {
    use meshpay_node::exchange::{Side, SyncSide, drive_pair};
    use meshpay_node::local;
    use meshpay_node::node::Node;
    use meshpay_node::transport::MemoryLink;
    use meshpay_proto::ledger::Entry;
    use meshpay_proto::sync::SyncConfig;
    use meshpay_proto::time::Millis;
    let dir = tempfile::tempdir().expect("dir");
    let (path_a, path_b, issuer, trust) = two_nodes(dir.path());
    let mut a = Node::open("a", &path_a, key(3), trust.clone()).expect("node a");
    let mut b = Node::open("b", &path_b, key(5), trust.clone()).expect("node b");
    let paid = receipt(1);
    take_payment(&mut a, &paid, &issuer);
    // A session carries it to B; A stops before saving anything after it.
    let config = SyncConfig::default();
    let mut sa = SyncSide::new(&a, config, Millis(0));
    let mut sb = SyncSide::new(&b, config, Millis(0));
    let (mut la, mut lb) = MemoryLink::pair();
    drive_pair(
        Side {
            node: &mut a,
            conversation: &mut sa,
            link: &mut la,
        },
        Side {
            node: &mut b,
            conversation: &mut sb,
            link: &mut lb,
        },
        60_000,
    )
    .expect("sync");
    let header = |r: &Receipt| r.transfer.signed_header();
    assert!(holds(&b, &paid), "B took A's payment");
    drop(a);
    // A restarts and is paid again; the next session brings that to B.
    let mut a = Node::open("a", &path_a, key(3), trust).expect("reopen a");
    assert!(holds(&a, &paid), "the change that left was stored");
    let again = receipt(2);
    a.store()
        .commit_receipt(&again, Role::Received)
        .expect("receipt");
    a.ledger_mut()
        .insert(Entry::Header(header(&again)))
        .expect("second payment");
    local::sync(&mut a, &mut b).expect("second sync");
    assert!(holds(&b, &again), "B takes what A wrote after its restart");
}

/// A stored ledger that no longer loads is refused at open, and reset
/// (`meshpay ledger reset`): the receipts stay, the peer sends the ledger
/// again, and the node writes under a new ledger id. Under its old one,
/// its first change after the reset would reuse a sequence number that
/// the peer holds from before, and the peer would refuse it.
#[test]
fn a_reset_ledger_keeps_the_receipts_and_writes_under_a_new_id() {
    use meshpay_node::local;
    use meshpay_node::node::{Node, NodeError};
    let dir = tempfile::tempdir().expect("dir");
    let (path_a, path_b, issuer, trust) = two_nodes(dir.path());
    let open = |path: &std::path::Path, k: u8| Node::open("n", path, key(k), trust.clone());
    let mut a = open(&path_a, 3).expect("node a");
    let mut b = open(&path_b, 5).expect("node b");
    let paid = receipt(1);
    take_payment(&mut a, &paid, &issuer);
    local::sync(&mut a, &mut b).expect("sync");
    assert!(holds(&b, &paid));
    let old_id = a.store().node_id().expect("id");
    drop(a);

    Store::open(&path_a)
        .expect("store")
        .save_ledger(b"not an automerge document", 0, &[])
        .expect("damage");
    assert!(matches!(open(&path_a, 3), Err(NodeError::LedgerLoad(_))));
    let dropped = Store::open(&path_a)
        .expect("store")
        .reset_ledger()
        .expect("reset");
    assert_eq!(dropped, 1);

    let mut a = open(&path_a, 3).expect("opens after the reset");
    assert_ne!(a.store().node_id().expect("id"), old_id);
    assert_eq!(
        a.store().receipt(&paid.transfer.id()).expect("get"),
        Some((paid.clone(), Role::Received)),
        "the receipt is kept"
    );
    // A is paid before it meets B again: its first change in the new
    // document.
    let again = receipt(2);
    take_payment(&mut a, &again, &issuer);
    local::sync(&mut a, &mut b).expect("sync after the reset");
    assert!(holds(&a, &paid), "the peer sent the ledger again");
    assert!(
        holds(&b, &again),
        "the peer takes what A wrote after the reset"
    );
}
