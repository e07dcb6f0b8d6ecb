//! The node's storage: one redb database per node.
//!
//! Every write that a promise depends on is committed (redb's default
//! immediate durability: fsync before `commit` returns) before the promise
//! is made: a used sequence number before the signature leaves, a received
//! receipt before the acknowledgement leaves.

use std::path::{Path, PathBuf};

use meshpay_proto::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Own allowances, by id.
const ALLOWANCES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("allowances");
/// Payer counters and pending transfers, by allowance id.
const SPENDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("spends");
/// Receipts this node is party to, by transfer id.
const RECEIPTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("receipts");
/// The partial ledger: a full save at 0, incremental saves after it.
const LEDGER: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("ledger");
/// What sync sessions remembered about each peer, by transport peer id.
const PEERS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("peers");
/// Receipts sealed to settlement, carried for others.
const CARRIED: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("carried");

/// Why the store failed. Each names the database file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be opened or created.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::DatabaseError>,
    },
    /// The file was written by another schema version.
    #[error(
        "database {path} has schema version {found}; this build reads version {SCHEMA_VERSION}"
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// What it holds.
        found: u32,
    },
    /// Reading or writing failed.
    #[error("database {path}: {what}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The error.
        message: String,
    },
    /// A stored record does not decode: the file is damaged.
    #[error("database {path}: damaged record in {table}: {message}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The decoding error.
        message: String,
    },
}

/// Which side of a receipt this node was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// This node paid.
    Paid,
    /// This node was paid.
    Received,
}

#[derive(Serialize, Deserialize)]
struct StoredSpend {
    spend: SpendState,
    pending: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct StoredReceipt {
    role: Role,
    receipt: Vec<u8>,
}

/// The node's database.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl core::fmt::Debug for Store {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it if absent. A file of
    /// another schema version, or one that is not a database, is an error
    /// that names the file; nothing is changed in it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let path = path.to_path_buf();
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: Box::new(e),
        })?;
        let store = Store { db, path };
        match store.schema()? {
            // Tables added within this schema version are created on open.
            Some(v) if v == SCHEMA_VERSION => store.write(|tx| {
                tx.open_table(CARRIED)?;
                Ok(())
            })?,
            Some(found) => {
                return Err(StoreError::Schema {
                    path: store.path,
                    found,
                });
            }
            None => store.write(|tx| {
                let mut meta = tx.open_table(META)?;
                meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())?;
                let mut rng = crate::os_rng()?;
                let mut node_id = [0u8; 8];
                rand::Rng::fill_bytes(&mut rng, &mut node_id);
                meta.insert("node_id", node_id.as_slice())?;
                // The transport identity (libp2p), separate from the wallet
                // key and stable across restarts.
                let mut p2p = [0u8; 32];
                rand::Rng::fill_bytes(&mut rng, &mut p2p);
                meta.insert("p2p_key", p2p.as_slice())?;
                drop(meta);
                // Create every table so that readers never meet a missing one.
                tx.open_table(ALLOWANCES)?;
                tx.open_table(SPENDS)?;
                tx.open_table(RECEIPTS)?;
                tx.open_table(LEDGER)?;
                tx.open_table(PEERS)?;
                tx.open_table(CARRIED)?;
                Ok(())
            })?,
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fixed-size value of the meta table; `what` names it in errors.
    fn meta_array<const N: usize>(&self, key: &str, what: &str) -> Result<[u8; N], StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.io("read")(e.to_string()))?;
        let meta = tx
            .open_table(META)
            .map_err(|e| self.io("open meta")(e.to_string()))?;
        let v = meta
            .get(key)
            .map_err(|e| self.io("get")(e.to_string()))?
            .ok_or_else(|| self.damaged("meta", format!("no {what}")))?;
        v.value()
            .try_into()
            .map_err(|_| self.damaged("meta", format!("{what} is not {N} bytes")))
    }

    /// The seed of this node's transport (libp2p) key, made when the
    /// database was created.
    pub fn p2p_seed(&self) -> Result<[u8; 32], StoreError> {
        self.meta_array("p2p_key", "transport key")
    }

    /// This node's random 8-byte id, made when the database was created:
    /// its ledger actor (a copied wallet key on another device still
    /// writes under its own id).
    pub fn node_id(&self) -> Result<[u8; 8], StoreError> {
        self.meta_array("node_id", "node id")
    }

    fn io(&self, what: &'static str) -> impl Fn(String) -> StoreError + '_ {
        move |message| StoreError::Io {
            path: self.path.clone(),
            what,
            message,
        }
    }

    fn damaged(&self, table: &'static str, message: impl ToString) -> StoreError {
        StoreError::Damaged {
            path: self.path.clone(),
            table,
            message: message.to_string(),
        }
    }

    fn schema(&self) -> Result<Option<u32>, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.io("read")(e.to_string()))?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.io("open meta")(e.to_string())),
        };
        let Some(v) = meta
            .get("schema")
            .map_err(|e| self.io("read schema")(e.to_string()))?
        else {
            return Ok(None);
        };
        let bytes: [u8; 4] = v
            .value()
            .try_into()
            .map_err(|_| self.damaged("meta", "schema version is not 4 bytes"))?;
        Ok(Some(u32::from_le_bytes(bytes)))
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), Box<dyn std::error::Error>>,
    ) -> Result<(), StoreError> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| self.io("begin write")(e.to_string()))?;
        f(&tx).map_err(|e| self.io("write")(e.to_string()))?;
        tx.commit().map_err(|e| self.io("commit")(e.to_string()))
    }

    /// A table of the latest committed state, for reading.
    fn table(
        &self,
        table: TableDefinition<'_, &[u8], &[u8]>,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        self.db
            .begin_read()
            .map_err(|e| self.io("read")(e.to_string()))?
            .open_table(table)
            .map_err(|e| self.io("open table")(e.to_string()))
    }

    fn read<T>(
        &self,
        table: TableDefinition<'_, &[u8], &[u8]>,
        key: &[u8],
        name: &'static str,
        decode: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, StoreError> {
        let t = self.table(table)?;
        let Some(v) = t.get(key).map_err(|e| self.io("get")(e.to_string()))? else {
            return Ok(None);
        };
        decode(v.value())
            .map(Some)
            .map_err(|m| self.damaged(name, m))
    }

    fn all<T>(
        &self,
        table: TableDefinition<'_, &[u8], &[u8]>,
        name: &'static str,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<Vec<T>, StoreError> {
        let t = self.table(table)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.io("iterate")(e.to_string()))? {
            let (_, v) = item.map_err(|e| self.io("iterate")(e.to_string()))?;
            out.push(decode(v.value()).map_err(|m| self.damaged(name, m))?);
        }
        Ok(out)
    }

    /// Keeps an allowance this wallet may spend.
    pub fn put_allowance(&self, allowance: &Allowance) -> Result<(), StoreError> {
        let bytes = allowance.encode();
        self.write(|tx| {
            tx.open_table(ALLOWANCES)?
                .insert(allowance.id.as_bytes().as_slice(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// Every allowance this wallet holds.
    pub fn allowances(&self) -> Result<Vec<Allowance>, StoreError> {
        self.all(ALLOWANCES, "allowances", |b| {
            Allowance::decode(b).map_err(|e| e.to_string())
        })
    }

    /// Durably records an allowance's counter and its pending transfer.
    /// The payer calls this on [`PayerEffect::PersistSpend`] and releases
    /// the transfer only after it returns.
    pub fn commit_spend(
        &self,
        allowance: &AllowanceId,
        spend: SpendState,
        pending: Option<&Transfer>,
    ) -> Result<(), StoreError> {
        let record = postcard::to_allocvec(&StoredSpend {
            spend,
            pending: pending.map(Encode::encode),
        })
        .map_err(|e| self.io("encode spend")(e.to_string()))?;
        self.write(|tx| {
            tx.open_table(SPENDS)?
                .insert(allowance.as_bytes().as_slice(), record.as_slice())?;
            Ok(())
        })
    }

    /// An allowance's counter and its pending transfer, if any.
    pub fn spend(
        &self,
        allowance: &AllowanceId,
    ) -> Result<(SpendState, Option<Transfer>), StoreError> {
        let found = self.read(SPENDS, allowance.as_bytes(), "spends", |b| {
            let s: StoredSpend = postcard::from_bytes(b).map_err(|e| e.to_string())?;
            let pending = s
                .pending
                .map(|p| Transfer::decode(&p))
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok((s.spend, pending))
        })?;
        Ok(found.unwrap_or((SpendState::FRESH, None)))
    }

    /// Durably stores a receipt. A payee calls this on
    /// [`PayeeEffect::PersistReceipt`] and acknowledges only after it
    /// returns; a payer on [`PayerEffect::StoreReceipt`], clearing its
    /// pending transfer in the same transaction.
    pub fn commit_receipt(&self, receipt: &Receipt, role: Role) -> Result<(), StoreError> {
        let record = postcard::to_allocvec(&StoredReceipt {
            role,
            receipt: receipt.encode(),
        })
        .map_err(|e| self.io("encode receipt")(e.to_string()))?;
        let id = receipt.transfer.id();
        let allowance = receipt.transfer.header().allowance;
        // One transaction: the receipt, and for a paid one, the pending
        // transfer it settles cleared (read and written under the same lock).
        self.write(|tx| {
            tx.open_table(RECEIPTS)?
                .insert(id.as_bytes().as_slice(), record.as_slice())?;
            if role == Role::Paid {
                let mut spends = tx.open_table(SPENDS)?;
                let stored: Option<StoredSpend> = spends
                    .get(allowance.as_bytes().as_slice())?
                    .map(|v| postcard::from_bytes(v.value()))
                    .transpose()?;
                if let Some(s) = stored
                    && s.pending
                        .as_deref()
                        .and_then(|p| Transfer::decode(p).ok())
                        .is_some_and(|p| p.id() == id)
                {
                    let cleared = postcard::to_allocvec(&StoredSpend {
                        spend: s.spend,
                        pending: None,
                    })?;
                    spends.insert(allowance.as_bytes().as_slice(), cleared.as_slice())?;
                }
            }
            Ok(())
        })
    }

    /// The stored receipt for a transfer, if any.
    pub fn receipt(&self, id: &TransferId) -> Result<Option<(Receipt, Role)>, StoreError> {
        self.read(RECEIPTS, id.as_bytes(), "receipts", decode_receipt)
    }

    /// Keeps receipts sealed to settlement that this node carries for
    /// others, in one transaction. Several copies of one transfer may be
    /// kept (a forged copy must not shut out the genuine one); each is
    /// stored under the transfer id followed by the start of its hash.
    pub fn put_carried(&self, copies: &[(TransferId, Vec<u8>)]) -> Result<(), StoreError> {
        if copies.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut t = tx.open_table(CARRIED)?;
            for (id, sealed) in copies {
                t.insert(carried_key(id, sealed).as_slice(), sealed.as_slice())?;
            }
            Ok(())
        })
    }

    /// The copies of `id` carried, and whether `sealed` is one of them.
    pub fn carried_copies(
        &self,
        id: &TransferId,
        sealed: &[u8],
    ) -> Result<(usize, bool), StoreError> {
        let t = self.table(CARRIED)?;
        let key = carried_key(id, sealed);
        let mut n = 0;
        let mut same = false;
        for item in t
            .range(id.as_bytes().as_slice()..)
            .map_err(|e| self.io("range")(e.to_string()))?
        {
            let (k, _) = item.map_err(|e| self.io("range")(e.to_string()))?;
            if !k.value().starts_with(id.as_bytes()) {
                break;
            }
            n += 1;
            same |= k.value() == key.as_slice();
        }
        Ok((n, same))
    }

    /// How many copies are carried in all.
    pub fn carried_count(&self) -> Result<usize, StoreError> {
        let t = self.table(CARRIED)?;
        let n =
            redb::ReadableTableMetadata::len(&t).map_err(|e| self.io("count")(e.to_string()))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Every carried copy: transfer id and encoded `SealedReceipt`.
    pub fn carried(&self) -> Result<Vec<(TransferId, Vec<u8>)>, StoreError> {
        let t = self.table(CARRIED)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.io("iterate")(e.to_string()))? {
            let (k, v) = item.map_err(|e| self.io("iterate")(e.to_string()))?;
            let id: [u8; 32] = k
                .value()
                .get(..32)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| self.damaged("carried", "a key is not a transfer id"))?;
            out.push((TransferId(id), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Drops every carried copy of `ids` (settlement acknowledged them).
    pub fn drop_carried(&self, ids: &[TransferId]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(CARRIED)?;
            for id in ids {
                let prefix = id.as_bytes().as_slice();
                let mut keys = Vec::new();
                for item in t.range(prefix..)? {
                    let (k, _) = item?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    keys.push(k.value().to_vec());
                }
                for k in keys {
                    t.remove(k.as_slice())?;
                }
            }
            Ok(())
        })
    }

    /// Drops particular carried copies (settlement could not open them, or
    /// found them forged).
    pub fn drop_carried_copies(&self, copies: &[(TransferId, Vec<u8>)]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(CARRIED)?;
            for (id, sealed) in copies {
                t.remove(carried_key(id, sealed).as_slice())?;
            }
            Ok(())
        })
    }

    /// Every receipt this node is party to.
    pub fn receipts(&self) -> Result<Vec<(Receipt, Role)>, StoreError> {
        self.all(RECEIPTS, "receipts", decode_receipt)
    }

    /// Remembers a peer's sync state for the ledger epoch it was made in.
    pub fn put_peer_state(&self, peer: &[u8], epoch: u64, state: &[u8]) -> Result<(), StoreError> {
        let mut record = epoch.to_le_bytes().to_vec();
        record.extend_from_slice(state);
        self.write(|tx| {
            tx.open_table(PEERS)?.insert(peer, record.as_slice())?;
            Ok(())
        })
    }

    /// A peer's remembered sync state, if it was made in `epoch`.
    pub fn peer_state(&self, peer: &[u8], epoch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let found = self.read(PEERS, peer, "peers", |b| {
            if b.len() < 8 {
                return Err("peer state shorter than its epoch".into());
            }
            let (e, state) = b.split_at(8);
            let e = u64::from_le_bytes(e.try_into().map_err(|_| "epoch".to_string())?);
            Ok((e, state.to_vec()))
        })?;
        Ok(found.and_then(|(e, state)| (e == epoch).then_some(state)))
    }

    /// Replaces the stored ledger with a full save.
    ///
    /// `aside` is what [`meshpay_proto::ledger::PartialLedger::save_aside`]
    /// gives: written in the same commit, because the replica's entries may
    /// need the allowances held aside.
    pub fn save_ledger(&self, bytes: &[u8], epoch: u64, aside: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(LEDGER)?;
            t.retain(|_, _| false)?;
            t.insert(0, bytes)?;
            drop(t);
            let mut meta = tx.open_table(META)?;
            meta.insert("ledger_epoch", epoch.to_le_bytes().as_slice())?;
            meta.insert("ledger_aside", aside)?;
            Ok(())
        })
    }

    /// Forgets the stored ledger (for a ledger that no longer loads), in
    /// one commit: the ledger's pieces, its epoch, the entries held aside
    /// and the peers' sync states, which describe the old document. The
    /// node gets a new random id, so the document it starts next is
    /// written under new automerge actors: peers hold the old document's
    /// changes, and the same actor starting again at sequence number 1
    /// would be refused by every one of them (protocol.md 9.7).
    /// Allowances, spend counters, receipts and carried receipts are kept;
    /// [`crate::node::Node::open`] puts the headers of stored receipts
    /// back into the new ledger. Returns how many ledger pieces were
    /// dropped.
    pub fn reset_ledger(&self) -> Result<usize, StoreError> {
        let dropped = self.ledger_chunks()?;
        self.write(|tx| {
            let mut rng = crate::os_rng()?;
            let mut node_id = [0u8; 8];
            rand::Rng::fill_bytes(&mut rng, &mut node_id);
            tx.open_table(LEDGER)?.retain(|_, _| false)?;
            tx.open_table(PEERS)?.retain(|_, _| false)?;
            let mut meta = tx.open_table(META)?;
            meta.remove("ledger_epoch")?;
            meta.remove("ledger_aside")?;
            meta.insert("node_id", node_id.as_slice())?;
            Ok(())
        })?;
        Ok(dropped)
    }

    /// The ledger table of the latest committed state.
    fn ledger_table(&self) -> Result<redb::ReadOnlyTable<u64, &'static [u8]>, StoreError> {
        self.db
            .begin_read()
            .map_err(|e| self.io("read")(e.to_string()))?
            .open_table(LEDGER)
            .map_err(|e| self.io("open table")(e.to_string()))
    }

    /// How many pieces the stored ledger is in (a full save, then
    /// increments).
    pub fn ledger_chunks(&self) -> Result<usize, StoreError> {
        let t = self.ledger_table()?;
        let n =
            redb::ReadableTableMetadata::len(&t).map_err(|e| self.io("count")(e.to_string()))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Appends an increment of the ledger, and replaces the entries held
    /// aside, in one commit.
    pub fn append_ledger(&self, bytes: &[u8], aside: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            if !bytes.is_empty() {
                let mut t = tx.open_table(LEDGER)?;
                let next = t.last()?.map_or(0, |(k, _)| k.value() + 1);
                t.insert(next, bytes)?;
            }
            tx.open_table(META)?.insert("ledger_aside", aside)?;
            Ok(())
        })
    }

    /// The stored ledger (full save then increments, concatenated), its
    /// epoch and the entries held aside, if any.
    pub fn ledger(&self) -> Result<Option<StoredLedger>, StoreError> {
        // One read transaction for the ledger and its epoch.
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.io("read")(e.to_string()))?;
        let t = tx
            .open_table(LEDGER)
            .map_err(|e| self.io("open table")(e.to_string()))?;
        let mut bytes = Vec::new();
        for item in t.iter().map_err(|e| self.io("iterate")(e.to_string()))? {
            let (_, v) = item.map_err(|e| self.io("iterate")(e.to_string()))?;
            bytes.extend_from_slice(v.value());
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        let meta = tx
            .open_table(META)
            .map_err(|e| self.io("open meta")(e.to_string()))?;
        let epoch = match meta
            .get("ledger_epoch")
            .map_err(|e| self.io("get")(e.to_string()))?
        {
            Some(v) => u64::from_le_bytes(
                v.value()
                    .try_into()
                    .map_err(|_| self.damaged("meta", "ledger epoch is not 8 bytes"))?,
            ),
            None => 0,
        };
        // Databases written before entries were held aside have none.
        let aside = meta
            .get("ledger_aside")
            .map_err(|e| self.io("get")(e.to_string()))?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        Ok(Some((bytes, epoch, aside)))
    }
}

/// The stored ledger: the replica's bytes (a full save then increments,
/// concatenated), its epoch, and the entries held aside beside it.
pub type StoredLedger = (Vec<u8>, u64, Vec<u8>);

/// A carried copy's key: the transfer id, then 8 bytes of the copy's
/// SHA-256.
fn carried_key(id: &TransferId, sealed: &[u8]) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.extend_from_slice(
        &meshpay_proto::crypto::Hash::tagged(b"meshpay/v1/carried-copy", sealed).0[..8],
    );
    key
}

fn decode_receipt(b: &[u8]) -> Result<(Receipt, Role), String> {
    let s: StoredReceipt = postcard::from_bytes(b).map_err(|e| e.to_string())?;
    let r = Receipt::decode(&s.receipt).map_err(|e| e.to_string())?;
    Ok((r, s.role))
}
