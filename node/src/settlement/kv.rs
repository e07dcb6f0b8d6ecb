//! The settlement service's storage: a few ordered tables of bytes, with
//! reads and one atomic, durable commit of many writes.
//!
//! Everything the service knows is encoded by the service itself, so the
//! two backends (redb, embedded; PostgreSQL, for when one machine is
//! outgrown) hold the very same bytes and behave the same; the test suite
//! runs against both.

use std::path::{Path, PathBuf};

/// The tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// Schema version, issuer key, counters, the current revocation list.
    Meta,
    /// Allowance id -> encoded `AllowanceState`.
    States,
    /// Encoded account -> balance (i64, little-endian).
    Balances,
    /// Journal sequence (u64, big-endian so keys sort) -> encoded movement.
    Journal,
    /// Wallet key ++ journal sequence -> encoded statement line.
    Statements,
    /// Transfer id -> encoded outcome.
    Outcomes,
    /// Acknowledgement serial (u64, big-endian) -> encoded signed ack.
    Acks,
    /// Wallet request nonce -> nothing: requests already served.
    Requests,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 8] = [
        Table::Meta,
        Table::States,
        Table::Balances,
        Table::Journal,
        Table::Statements,
        Table::Outcomes,
        Table::Acks,
        Table::Requests,
    ];

    /// Its name in either backend.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::States => "states",
            Table::Balances => "balances",
            Table::Journal => "journal",
            Table::Statements => "statements",
            Table::Outcomes => "outcomes",
            Table::Acks => "acks",
            Table::Requests => "requests",
        }
    }

    fn code(self) -> i16 {
        match self {
            Table::Meta => 0,
            Table::States => 1,
            Table::Balances => 2,
            Table::Journal => 3,
            Table::Statements => 4,
            Table::Outcomes => 5,
            Table::Acks => 6,
            Table::Requests => 7,
        }
    }
}

/// One write of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The table.
    pub table: Table,
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The redb file could not be opened, read or written.
    #[error("{path}: {message}")]
    Redb {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// PostgreSQL refused or failed.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
}

/// Key-value pairs, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Ordered tables of bytes with atomic commits.
pub trait Kv: Send {
    /// The value under `key`.
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<Entries, KvError>;
    /// Writes all of `puts` or none, durably, before returning.
    fn commit(&mut self, puts: &[Put]) -> Result<(), KvError>;
    /// Where the data is, for messages.
    fn describe(&self) -> String;
}

impl Kv for Box<dyn Kv> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        (**self).get(table, key)
    }
    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<Entries, KvError> {
        (**self).scan(table, prefix)
    }
    fn commit(&mut self, puts: &[Put]) -> Result<(), KvError> {
        (**self).commit(puts)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// redb, one file.
pub struct RedbKv {
    db: redb::Database,
    path: PathBuf,
}

type RedbTable = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;

fn redb_table(t: Table) -> RedbTable {
    redb::TableDefinition::new(t.name())
}

impl RedbKv {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<RedbKv, KvError> {
        let err = |e: &dyn std::fmt::Display| KvError::Redb {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let db = redb::Database::create(path).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        for t in Table::ALL {
            tx.open_table(redb_table(t)).map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))?;
        Ok(RedbKv {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: &dyn std::fmt::Display) -> KvError {
        KvError::Redb {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

impl Kv for RedbKv {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(|e| self.err(&e))?;
        let t = tx.open_table(redb_table(table)).map_err(|e| self.err(&e))?;
        let v = t.get(key).map_err(|e| self.err(&e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<Entries, KvError> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(|e| self.err(&e))?;
        let t = tx.open_table(redb_table(table)).map_err(|e| self.err(&e))?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(|e| self.err(&e))? {
            let (k, v) = item.map_err(|e| self.err(&e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&mut self, puts: &[Put]) -> Result<(), KvError> {
        let tx = self.db.begin_write().map_err(|e| self.err(&e))?;
        for t in Table::ALL {
            let mut table = tx.open_table(redb_table(t)).map_err(|e| self.err(&e))?;
            for p in puts.iter().filter(|p| p.table == t) {
                table
                    .insert(p.key.as_slice(), p.value.as_slice())
                    .map_err(|e| self.err(&e))?;
            }
        }
        tx.commit().map_err(|e| self.err(&e))
    }

    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }
}

/// PostgreSQL: one table `meshpay_settlement (tbl, k, v)`; each commit is
/// one transaction of one bulk upsert (the server's default
/// `synchronous_commit = on` makes it durable before it returns).
///
/// A lost connection (the server restarted, a network cut) is opened again
/// once per operation, taking the schema's writer lock again, and the
/// operation is retried. Retrying a commit whose outcome was lost with the
/// connection is safe: a commit writes absolute values, and only the lock
/// holder writes, so writing them a second time changes nothing.
pub struct PgKv {
    client: postgres::Client,
    url: String,
    schema: String,
    url_shown: String,
}

impl PgKv {
    /// Connects to `url` (`postgres://user:pass@host/db`) and creates the
    /// table if it is missing.
    pub fn connect(url: &str) -> Result<PgKv, KvError> {
        Self::connect_schema(url, "public")
    }

    /// Like [`PgKv::connect`], in the schema `schema` (created if missing;
    /// lower-case letters, digits and `_` only): several services, or
    /// tests, can share one database.
    pub fn connect_schema(url: &str, schema: &str) -> Result<PgKv, KvError> {
        if schema.is_empty()
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(KvError::Postgres(format!("bad schema name {schema:?}")));
        }
        let mut client = postgres::Client::connect(url, postgres::NoTls)
            .map_err(|e| KvError::Postgres(format!("cannot connect: {e}")))?;
        // One writer per schema: the service reads, decides and commits as
        // the only writer (as redb's file lock ensures); a second service
        // on the same schema would overwrite balances and serials.
        // A service just killed may hold it until the server notices its
        // connection is gone: wait a few seconds for that.
        let mut locked = false;
        for _ in 0..25 {
            locked = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('meshpay_settlement.' || $1))",
                    &[&schema],
                )
                .map_err(|e| KvError::Postgres(e.to_string()))?
                .get(0);
            if locked {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if !locked {
            return Err(KvError::Postgres(format!(
                "another settlement service is using schema {schema:?} of this database"
            )));
        }
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
            ))
            .map_err(|e| KvError::Postgres(e.to_string()))?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS meshpay_settlement (
                    tbl smallint NOT NULL,
                    k bytea NOT NULL,
                    v bytea NOT NULL,
                    PRIMARY KEY (tbl, k))",
            )
            .map_err(|e| KvError::Postgres(e.to_string()))?;
        // Show where, never the password.
        let url_shown = match url.split_once('@') {
            Some((_, host)) => format!("postgres://…@{host}"),
            None => url.to_string(),
        };
        // Names this writer's session in pg_stat_activity.
        client
            .batch_execute(&format!(
                "SET application_name = 'meshpay-settlement-{schema}'"
            ))
            .map_err(|e| KvError::Postgres(e.to_string()))?;
        Ok(PgKv {
            client,
            url: url.to_string(),
            schema: schema.to_string(),
            url_shown,
        })
    }

    /// Runs `op`; if it failed because the connection is gone, connects
    /// again (lock included) and runs it once more.
    fn with_reconnect<T>(
        &mut self,
        op: impl Fn(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, KvError> {
        match op(&mut self.client) {
            Ok(v) => Ok(v),
            Err(e) if self.client.is_closed() || connection_lost(&e) => {
                tracing::warn!(database = %self.url_shown, error = %e, "PostgreSQL connection lost; connecting again");
                let fresh = Self::connect_schema(&self.url, &self.schema)?;
                self.client = fresh.client;
                tracing::info!(database = %self.url_shown, "PostgreSQL connection open again");
                op(&mut self.client).map_err(pg)
            }
            Err(e) => Err(pg(e)),
        }
    }
}

/// Whether `e` says the session is gone: the client saw the connection
/// close, or the server said it ends it (class 57, operator intervention:
/// an administrator's termination, a shutdown; class 08, connection
/// exception). The client may learn of the close only after it read that
/// error.
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("57") || c.code().starts_with("08"))
}

fn pg(e: postgres::Error) -> KvError {
    KvError::Postgres(e.to_string())
}

impl Kv for PgKv {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let row = self.with_reconnect(|c| {
            c.query_opt(
                "SELECT v FROM meshpay_settlement WHERE tbl = $1 AND k = $2",
                &[&table.code(), &key],
            )
        })?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<Entries, KvError> {
        // bytea compares bytewise, like redb's keys.
        let len = i32::try_from(prefix.len()).unwrap_or(i32::MAX);
        let rows = self.with_reconnect(|c| {
            c.query(
                "SELECT k, v FROM meshpay_settlement
                 WHERE tbl = $1 AND k >= $2 AND substring(k from 1 for $3) = $2
                 ORDER BY k",
                &[&table.code(), &prefix, &len],
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
    }

    fn commit(&mut self, puts: &[Put]) -> Result<(), KvError> {
        // The last write of a key wins, as in redb.
        let mut last = std::collections::BTreeMap::new();
        for p in puts {
            last.insert((p.table.code(), p.key.as_slice()), p.value.as_slice());
        }
        let (mut tbls, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for ((t, k), v) in last {
            tbls.push(t);
            keys.push(k);
            values.push(v);
        }
        self.with_reconnect(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO meshpay_settlement (tbl, k, v)
                 SELECT * FROM unnest($1::smallint[], $2::bytea[], $3::bytea[])
                 ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v",
                &[&tbls, &keys, &values],
            )?;
            tx.commit()
        })
    }

    fn describe(&self) -> String {
        self.url_shown.clone()
    }
}
