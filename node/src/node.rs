//! A node: one wallet key, its storage and its partial ledger, and the
//! glue that turns the protocol machines' effects into durable writes.
//!
//! The node does the bookkeeping; moving messages is a transport's job
//! ([`crate::local`] for nodes in one process).

use std::path::Path;

use meshpay_proto::ledger::{Entry, Inserted, LedgerError, PartialLedger, RetentionPolicy};
use meshpay_proto::prelude::*;

use crate::store::{Role, Store, StoreError};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger refused an entry.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// A protocol machine refused a call.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// No allowance of this wallet can pay the amount.
    #[error("no allowance can pay {amount} (remaining: {remaining})")]
    InsufficientFunds {
        /// The amount asked.
        amount: u64,
        /// The most any one allowance can still pay.
        remaining: u64,
    },
    /// The stored ledger could not be loaded.
    #[error("stored ledger does not load: {0}")]
    LedgerLoad(LedgerError),
    /// A sync session failed.
    #[error("sync: {0}")]
    Sync(meshpay_proto::sync::SyncError),
    /// The operating system's random number generator failed.
    #[error(transparent)]
    Random(#[from] crate::RandomError),
}

/// Incremental ledger saves kept before the next save is a full one.
pub const COMPACT_AFTER: usize = 256;

/// One meshpay node.
#[derive(Debug)]
pub struct Node {
    name: String,
    key: SecretKey,
    store: Store,
    ledger: PartialLedger,
    /// Whether the store holds a full save of the ledger to append to.
    ledger_in_store: bool,
    /// Incremental saves appended since the last full one.
    increments: usize,
    /// The entries held aside as last stored.
    saved_aside: Vec<u8>,
    policy: PaymentPolicy,
}

impl Node {
    /// Opens (or creates) the node whose database is `db` and whose wallet
    /// key is `key`; `trust` holds the pinned issuer root.
    pub fn open(
        name: &str,
        db: &Path,
        key: SecretKey,
        trust: TrustStore,
    ) -> Result<Node, NodeError> {
        let store = Store::open(db)?;
        let actor = store.node_id()?;
        let stored = store.ledger()?;
        let ledger_in_store = stored.is_some();
        let increments = store.ledger_chunks()?.saturating_sub(1);
        let saved_aside = stored
            .as_ref()
            .map(|(_, _, aside)| aside.clone())
            .unwrap_or_default();
        let mut ledger = match stored {
            Some((bytes, epoch, aside)) => {
                PartialLedger::load_with_aside(&bytes, &aside, epoch, &actor, trust)
                    .map_err(NodeError::LedgerLoad)?
            }
            None => PartialLedger::new(&actor, trust),
        };
        // Headers of receipts committed after the last ledger save. Those
        // a rotation left out of the document on purpose stay out: settled
        // ones (held aside while the acknowledgement is held) and those of
        // expired allowances (dropped).
        let expired_before =
            crate::mesh::wall_clock().minus(RetentionPolicy::default().expiry_grace_secs);
        let allowances = store.allowances()?;
        for (receipt, _) in store.receipts()? {
            let header = receipt.transfer.signed_header();
            if ledger.is_settled(&header.id()) {
                // Settled: a rotation moved it aside; written back, it
                // would travel to every peer again.
                continue;
            }
            let allowance = allowances.iter().find(|a| a.id == header.allowance);
            if allowance.is_some_and(|a| a.expires_at < expired_before) {
                // A rotation dropped it with its allowance, a day after
                // the allowance expired; it stays out.
                continue;
            }
            if let Some(a) = allowance {
                let _ = ledger.insert(Entry::Allowance(a.clone()));
            }
            // A received receipt whose allowance the ledger lost with an
            // unsaved tail cannot be checked here; the payer's node will
            // sync it again.
            let _ = ledger.insert(Entry::Header(header));
        }
        Ok(Node {
            name: name.to_string(),
            key,
            store,
            ledger,
            ledger_in_store,
            increments,
            saved_aside,
            policy: PaymentPolicy::default(),
        })
    }

    /// The node's name (for people).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wallet's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// Signs the transcript of a BLE link's key exchange with the wallet
    /// key (domain-separated: the signature is good for nothing else; see
    /// [`crate::ble::secure`]).
    pub fn sign_link(&self, transcript: &[u8]) -> Signature {
        self.key.sign(crate::ble::secure::SIGNATURE_TAG, transcript)
    }

    /// The partial ledger.
    pub fn ledger(&self) -> &PartialLedger {
        &self.ledger
    }

    /// The partial ledger, for a sync session.
    pub fn ledger_mut(&mut self) -> &mut PartialLedger {
        &mut self.ledger
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The payee's check context at wall-clock `now`.
    pub fn check_context(&self, now: Timestamp) -> CheckContext<'_> {
        CheckContext {
            trust: self.ledger.trust(),
            policy: &self.policy,
            now,
            mesh: &self.ledger,
        }
    }

    /// Takes an allowance loaded online for this wallet.
    pub fn add_allowance(&mut self, allowance: Allowance) -> Result<(), NodeError> {
        VerifiedAllowance::verify(allowance.clone(), self.ledger.trust())
            .map_err(|e| NodeError::Ledger(LedgerError::Allowance(e)))?;
        self.store.put_allowance(&allowance)?;
        self.ledger.insert(Entry::Allowance(allowance))?;
        self.persist_ledger()
    }

    /// What each allowance can still pay: `(allowance, amount left)`.
    pub fn balances(&self) -> Result<Vec<(Allowance, u64)>, NodeError> {
        let mut out = Vec::new();
        for a in self.store.allowances()? {
            let (spend, _) = self.store.spend(&a.id)?;
            out.push((a.clone(), a.amount.saturating_sub(spend.cumulative)));
        }
        Ok(out)
    }

    /// Starts paying `amount` from the allowance with the most left that can
    /// pay it. A transfer left pending by a crash or a refusal is given up
    /// as uncertain first: its sequence number and amount stay used (the
    /// payer's risk, refunded at settlement if no receipt for it arrives);
    /// it is never re-signed.
    pub fn start_payment(
        &self,
        amount: u64,
        wall_clock: Timestamp,
        config: PayerConfig,
    ) -> Result<PayerSession, NodeError> {
        let balances = self.balances()?;
        for (a, _) in &balances {
            if let (spend, Some(pending)) = self.store.spend(&a.id)? {
                tracing::info!(
                    transfer = %pending.id(),
                    seq = pending.header().seq,
                    "an earlier transfer got no receipt (refused, lost or interrupted); its amount stays counted as spent until settlement refunds it"
                );
                self.store.commit_spend(&a.id, spend, None)?;
            }
        }
        let remaining = balances.iter().map(|(_, left)| *left).max().unwrap_or(0);
        let (allowance, _) = balances
            .into_iter()
            .filter(|(a, left)| *left >= amount && amount <= a.caps.max_per_payment)
            .max_by_key(|(_, left)| *left)
            .ok_or(NodeError::InsufficientFunds { amount, remaining })?;
        let (spend, _) = self.store.spend(&allowance.id)?;
        Ok(PayerSession::new(
            allowance,
            self.key.clone(),
            spend,
            wall_clock,
            config,
        ))
    }

    /// Opens an invoice for `amount`.
    pub fn request(
        &self,
        amount: u64,
        currency: Currency,
        memo: Option<String>,
        now: Millis,
    ) -> Result<PayeeSession, NodeError> {
        let mut rng = crate::os_rng()?;
        Ok(PayeeSession::new(
            self.key.clone(),
            amount,
            currency,
            memo,
            None,
            &mut rng,
            now,
        ))
    }

    /// Carries out the payer's effects: the durable spend before the
    /// transfer is released, the receipt when it comes. Returns whether
    /// the user must be asked to confirm (`Confirm`), which the caller
    /// answers with [`PayerSession::confirm`] or `decline`.
    pub fn drive_payer(
        &mut self,
        session: &mut PayerSession,
        now: Millis,
    ) -> Result<Option<Invoice>, NodeError> {
        let mut confirm = None;
        while let Some(effect) = session.poll_effect() {
            match effect {
                PayerEffect::Confirm(invoice) => confirm = Some(invoice),
                PayerEffect::PersistSpend { transfer, spend } => {
                    let id = transfer.header().allowance;
                    self.store.commit_spend(&id, spend, Some(&transfer))?;
                    session.spend_persisted(now)?;
                }
                PayerEffect::StoreReceipt(receipt) => {
                    self.store.commit_receipt(&receipt, Role::Paid)?;
                    self.learn_header(receipt.transfer.signed_header())?;
                }
            }
        }
        Ok(confirm)
    }

    /// Carries out the payee's effects: the durable receipt before the
    /// acknowledgement is released, conflict proofs into the ledger.
    pub fn drive_payee(
        &mut self,
        session: &mut PayeeSession,
    ) -> Result<Vec<PaymentError>, NodeError> {
        let mut refused = Vec::new();
        while let Some(effect) = session.poll_effect() {
            match effect {
                PayeeEffect::PersistReceipt { receipt, allowance } => {
                    self.store.commit_receipt(&receipt, Role::Received)?;
                    // One replica change for both (peers receive one unit).
                    self.ledger
                        .insert_payment(*allowance, receipt.transfer.signed_header())?;
                    session.receipt_persisted()?;
                }
                PayeeEffect::RecordConflict(proof) => {
                    self.ledger.insert(Entry::Proof(proof))?;
                    self.persist_ledger()?;
                }
                PayeeEffect::Refused(e) => refused.push(e),
            }
        }
        Ok(refused)
    }

    /// Puts a header this node was party to into the ledger. The ledger is
    /// saved later (before the change can leave in a sync, see
    /// [`Node::store_own_writes`], after syncs and on a timer): the
    /// receipt, committed before this, is the durable record, and
    /// [`Node::open`] puts the headers of stored receipts back into the
    /// ledger.
    fn learn_header(&mut self, header: SignedHeader) -> Result<Inserted, NodeError> {
        Ok(self.ledger.insert(Entry::Header(header))?)
    }

    /// Rotates the ledger into the epoch of `now` if it is in an older one
    /// (protocol.md 9.8) and stores the new epoch at once, in full. Every
    /// node does this by its clock before a sync session, so peers meet in
    /// the same epoch; a session open across the rotation is stale and
    /// must be dropped by the caller.
    pub fn advance_epoch(
        &mut self,
        now: Timestamp,
    ) -> Result<Option<meshpay_proto::ledger::Rotation>, NodeError> {
        let rotation = self.ledger.advance(now, &RetentionPolicy::default());
        if rotation.is_some() {
            // The new epoch's document replaces the old one and its
            // increments, with what is held aside beside it.
            self.ledger_in_store = false;
        }
        if !self.ledger_in_store {
            // Also retried here after a failed save: nothing is written
            // under the new epoch's writer before the epoch is stored.
            self.persist_ledger()?;
        }
        let Some(rotation) = rotation else {
            return Ok(None);
        };
        tracing::info!(
            epoch = self.ledger.epoch(),
            kept = rotation.kept,
            written = rotation.written,
            dropped = rotation.dropped,
            "ledger rotated into a new epoch"
        );
        Ok(Some(rotation))
    }

    /// Stores the ledger if this node wrote into it since the last save
    /// (a payment it took, a proof it found, a join of heads). Called
    /// before every sync message leaves: a change of the node's own must
    /// be on disk before a peer can hold it. A node that restarted without
    /// it would write another change under the same sequence number, and
    /// every peer holding the first would refuse the second (protocol.md
    /// 9.7). Changes received from peers may wait: a peer sends them again.
    pub fn store_own_writes(&mut self) -> Result<(), NodeError> {
        if self.ledger.has_unsaved_own_writes() {
            self.persist_ledger()?;
        }
        Ok(())
    }

    /// Appends what changed in the ledger to the store.
    pub fn persist_ledger(&mut self) -> Result<(), NodeError> {
        if !self.ledger_in_store || self.increments >= COMPACT_AFTER {
            // A full save replaces the full save and every increment: the
            // stored ledger stays one document plus at most COMPACT_AFTER
            // increments, and loads in one pass.
            let bytes = self.ledger.save();
            let aside = self.ledger.save_aside();
            self.store
                .save_ledger(&bytes, self.ledger.epoch(), &aside)?;
            self.ledger_in_store = true;
            self.increments = 0;
            self.saved_aside = aside;
        } else {
            let bytes = self.ledger.save_incremental();
            let aside = self.ledger.save_aside();
            if !bytes.is_empty() || aside != self.saved_aside {
                self.store.append_ledger(&bytes, &aside)?;
                if !bytes.is_empty() {
                    self.increments += 1;
                }
                self.saved_aside = aside;
            }
        }
        Ok(())
    }

    /// Receipts this node is party to.
    pub fn receipts(&self) -> Result<Vec<(Receipt, Role)>, NodeError> {
        Ok(self.store.receipts()?)
    }
}
