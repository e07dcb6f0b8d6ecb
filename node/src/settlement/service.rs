//! The settlement service's core: the rules of `meshpay_proto::settlement`
//! over a [`Kv`] store. Synchronous and single-writer: the HTTP layer
//! calls it from one blocking thread at a time, so every operation reads,
//! decides and commits before the next begins.
//!
//! Durability: everything an answer reports (an escrow, a settled receipt,
//! a signed acknowledgement) is committed before the answer is returned.

use std::collections::{BTreeMap, BTreeSet};

use meshpay_proto::crypto::KeyBytes;
use meshpay_proto::prelude::*;
use meshpay_proto::settlement::{
    Account, AllowanceState, Movement, SettlementConfig, SettlementContext, StatementLine,
    allowances_named, ingest_batch,
};
use meshpay_proto::wallet_request::{WalletAction, WalletRequest, WalletRequestTerms};

use super::kv::{Kv, KvError, Put, Table};

/// The schema this code writes.
const SCHEMA: u32 = 1;
/// How far a wallet request's time may be from the service's clock.
pub const REQUEST_WINDOW_SECS: u64 = 600;
/// Most receipts in one submitted batch.
pub const MAX_BATCH: usize = 1_000;

/// Why the service refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Storage failed; nothing was changed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The store holds data this code cannot read.
    #[error("{0}")]
    Corrupt(String),
    /// The store belongs to another issuer or schema.
    #[error("{0}")]
    Mismatch(String),
    /// The request is wrong: a 4xx answer.
    #[error("{0}")]
    Refused(String),
}

/// Longest deposit reference, in bytes.
pub const MAX_REFERENCE: usize = 128;

/// The answer to a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deposited {
    /// The wallet's balance right after this deposit was credited.
    pub balance: i64,
    /// The deposit had been made before under its reference: nothing more
    /// was credited now.
    pub repeated: bool,
}

/// What is kept of a deposit under its reference.
#[derive(serde::Serialize, serde::Deserialize)]
struct DepositRecord {
    wallet: [u8; 32],
    amount: u64,
    balance: i64,
}

fn refused(message: impl Into<String>) -> ServiceError {
    ServiceError::Refused(message.into())
}

/// A wallet request that passed its checks.
enum Admitted {
    /// New: the nonce key and the request's hash, to store with it.
    New { nonce: Vec<u8>, hash: [u8; 32] },
    /// Served before: what was stored for it.
    Served(Vec<u8>),
}

/// What became of one submitted receipt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReceiptOutcome {
    /// Transfer id (hex).
    pub transfer: String,
    /// The outcome after the batch.
    pub outcome: Outcome,
    /// It was already held: nothing changed because of it.
    pub duplicate: bool,
    /// Why it was refused before joining its allowance, if it was.
    pub error: Option<String>,
}

/// One line of a wallet's statement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StatementEntry {
    /// Money from outside credited by the operator.
    Deposit {
        /// Minor units.
        amount: u64,
    },
    /// A movement of the settlement rules (escrow, credit, reversal,
    /// cover, refund).
    Movement(StatementLine),
}

/// The answer to a batch.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// One per receipt, in order.
    pub receipts: Vec<ReceiptOutcome>,
    /// The acknowledgement published for this batch, if anything changed.
    pub ack: Option<SettlementAck>,
}

/// The settlement service over a store.
pub struct Service<K: Kv> {
    kv: K,
    issuer: SecretKey,
    trust: TrustStore,
    config: SettlementConfig,
    policy: IssuePolicy,
}

/// What the issuer lets a wallet ask for. The caps bound what a cloned or
/// cheating wallet can take offline before the mesh catches it (about
/// `max_payments` × `max_per_payment` across payees who never heard of each
/// other), so the issuer sets them, not the wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuePolicy {
    /// The only currency accounts hold.
    pub currency: Currency,
    /// Largest allowance, minor units.
    pub max_amount: u64,
    /// Largest single payment an allowance may allow, minor units.
    pub max_per_payment: u64,
    /// Most payments an allowance may allow.
    pub max_payments: u32,
}

impl Default for IssuePolicy {
    /// EUR; allowances up to 1,000.00, payments up to 100.00, 500 payments.
    fn default() -> Self {
        IssuePolicy {
            currency: Currency::new("EUR").unwrap_or_else(|| unreachable!("a valid code")),
            max_amount: 100_000,
            max_per_payment: 10_000,
            max_payments: 500,
        }
    }
}

/// A u64 as a storage key: big-endian, so that keys sort by number
/// (journal and acknowledgement order). Values are little-endian.
#[allow(clippy::big_endian_bytes)]
fn be(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn account_key(a: &Account) -> Vec<u8> {
    postcard::to_allocvec(a).unwrap_or_default()
}

impl<K: Kv> Service<K> {
    /// Opens the service over `kv`, signing as `issuer`. A fresh store is
    /// stamped with the schema and the issuer's key; a store of another
    /// schema or issuer is refused and left as it is.
    pub fn open(
        mut kv: K,
        issuer: SecretKey,
        config: SettlementConfig,
    ) -> Result<Self, ServiceError> {
        let issuer_hex = issuer.public().to_string();
        match kv.get(Table::Meta, b"schema")? {
            None => kv.commit(&[
                Put {
                    table: Table::Meta,
                    key: b"schema".to_vec(),
                    value: SCHEMA.to_le_bytes().to_vec(),
                },
                Put {
                    table: Table::Meta,
                    key: b"issuer".to_vec(),
                    value: issuer_hex.clone().into_bytes(),
                },
            ])?,
            Some(v) if v == SCHEMA.to_le_bytes() => {
                let stored = kv.get(Table::Meta, b"issuer")?.unwrap_or_default();
                if stored != issuer_hex.as_bytes() {
                    return Err(ServiceError::Mismatch(format!(
                        "{} belongs to issuer {}, not {issuer_hex}",
                        kv.describe(),
                        String::from_utf8_lossy(&stored)
                    )));
                }
            }
            Some(v) => {
                return Err(ServiceError::Mismatch(format!(
                    "{} has schema {v:?}; this build reads schema {SCHEMA}",
                    kv.describe()
                )));
            }
        }
        let trust = TrustStore::new(issuer.public());
        Ok(Service {
            kv,
            issuer,
            trust,
            config,
            policy: IssuePolicy::default(),
        })
    }

    /// Opens a receipt sealed to this service.
    pub fn open_sealed(
        &self,
        sealed: &meshpay_proto::sealed::SealedReceipt,
    ) -> Result<Receipt, meshpay_proto::sealed::SealError> {
        sealed.open(&self.issuer)
    }

    /// The issuer's public key.
    pub fn issuer(&self) -> PublicKey {
        self.issuer.public()
    }

    /// Replaces the issuing policy.
    pub fn with_policy(mut self, policy: IssuePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The rules' tunables.
    pub fn config(&self) -> &SettlementConfig {
        &self.config
    }

    fn counter(&mut self, name: &str) -> Result<u64, ServiceError> {
        Ok(match self.kv.get(Table::Meta, name.as_bytes())? {
            None => 0,
            Some(v) => u64::from_le_bytes(
                v.try_into()
                    .map_err(|_| ServiceError::Corrupt(format!("counter {name}")))?,
            ),
        })
    }

    /// The balance of `account` (negative only for the risk fund).
    pub fn balance(&mut self, account: &Account) -> Result<i64, ServiceError> {
        Ok(match self.kv.get(Table::Balances, &account_key(account))? {
            None => 0,
            Some(v) => i64::from_le_bytes(
                v.try_into()
                    .map_err(|_| ServiceError::Corrupt("a balance".into()))?,
            ),
        })
    }

    /// The sum of every balance: changes only by deposits.
    pub fn total(&mut self) -> Result<i128, ServiceError> {
        let mut sum = 0i128;
        for (_, v) in self.kv.scan(Table::Balances, &[])? {
            let b: [u8; 8] = v
                .try_into()
                .map_err(|_| ServiceError::Corrupt("a balance".into()))?;
            sum += i128::from(i64::from_le_bytes(b));
        }
        Ok(sum)
    }

    /// Puts for movements: balances, journal, statements. `balances`
    /// caches what earlier movements of the same commit changed.
    fn apply(&mut self, movements: &[Movement], puts: &mut Vec<Put>) -> Result<(), ServiceError> {
        let mut balances: BTreeMap<Account, i64> = BTreeMap::new();
        let mut next = self.counter("journal")?;
        for m in movements {
            let amount = i64::try_from(m.amount)
                .map_err(|_| refused(format!("amount {} too large", m.amount)))?;
            for (account, delta) in [(m.from, -amount), (m.to, amount)] {
                let current = match balances.get(&account) {
                    Some(b) => *b,
                    None => self.balance(&account)?,
                };
                balances.insert(account, current.saturating_add(delta));
            }
            let encoded =
                postcard::to_allocvec(m).map_err(|e| ServiceError::Corrupt(e.to_string()))?;
            puts.push(Put {
                table: Table::Journal,
                key: be(next),
                value: encoded,
            });
            for line in m.statement_lines() {
                let mut key = line.wallet.as_bytes().to_vec();
                key.extend(be(next));
                puts.push(Put {
                    table: Table::Statements,
                    key,
                    value: postcard::to_allocvec(&StatementEntry::Movement(line))
                        .map_err(|e| ServiceError::Corrupt(e.to_string()))?,
                });
            }
            next += 1;
        }
        for (account, balance) in balances {
            puts.push(Put {
                table: Table::Balances,
                key: account_key(&account),
                value: balance.to_le_bytes().to_vec(),
            });
        }
        puts.push(Put {
            table: Table::Meta,
            key: b"journal".to_vec(),
            value: next.to_le_bytes().to_vec(),
        });
        Ok(())
    }

    /// Money arriving from outside (a card top-up, a bank transfer): the
    /// operator credits a wallet's online account.
    ///
    /// `reference` is the operator's own unique name for this deposit (the
    /// bank transaction, the till receipt): the same deposit sent again
    /// under it, by a client that lost the answer, credits nothing more and
    /// gets the first answer; another deposit under a used reference is
    /// refused.
    pub fn deposit(
        &mut self,
        wallet: KeyBytes,
        amount: u64,
        reference: &str,
    ) -> Result<Deposited, ServiceError> {
        if reference.is_empty()
            || reference.len() > MAX_REFERENCE
            || reference.chars().any(char::is_control)
        {
            return Err(refused(format!(
                "a deposit reference is 1 to {MAX_REFERENCE} bytes of text without control characters"
            )));
        }
        let mut ref_key = b"deposit-ref/".to_vec();
        ref_key.extend_from_slice(reference.as_bytes());
        if let Some(bytes) = self.kv.get(Table::Meta, &ref_key)? {
            let first: DepositRecord = postcard::from_bytes(&bytes)
                .map_err(|_| ServiceError::Corrupt(format!("deposit {reference}")))?;
            if &first.wallet != wallet.as_bytes() || first.amount != amount {
                return Err(refused(format!(
                    "deposit reference {reference:?} was already used for another deposit"
                )));
            }
            return Ok(Deposited {
                balance: first.balance,
                repeated: true,
            });
        }
        let amount_i = i64::try_from(amount).map_err(|_| refused("amount too large"))?;
        let account = Account::Wallet(wallet);
        let balance = self
            .balance(&account)?
            .checked_add(amount_i)
            .ok_or_else(|| refused("balance would overflow"))?;
        let mut next = self.counter("journal")?;
        let line = StatementEntry::Deposit { amount };
        let deposits = self.deposits()? + i128::from(amount);
        let mut key = wallet.as_bytes().to_vec();
        key.extend(be(next));
        next += 1;
        let record = DepositRecord {
            wallet: *wallet.as_bytes(),
            amount,
            balance,
        };
        self.kv.commit(&[
            Put {
                table: Table::Balances,
                key: account_key(&account),
                value: balance.to_le_bytes().to_vec(),
            },
            Put {
                table: Table::Statements,
                key,
                value: postcard::to_allocvec(&line)
                    .map_err(|e| ServiceError::Corrupt(e.to_string()))?,
            },
            Put {
                table: Table::Meta,
                key: b"journal".to_vec(),
                value: next.to_le_bytes().to_vec(),
            },
            Put {
                table: Table::Meta,
                key: b"deposits".to_vec(),
                value: deposits.to_le_bytes().to_vec(),
            },
            Put {
                table: Table::Meta,
                key: ref_key,
                value: postcard::to_allocvec(&record)
                    .map_err(|e| ServiceError::Corrupt(e.to_string()))?,
            },
        ])?;
        Ok(Deposited {
            balance,
            repeated: false,
        })
    }

    /// Everything deposited so far: the sum of all balances must equal it.
    pub fn deposits(&mut self) -> Result<i128, ServiceError> {
        Ok(match self.kv.get(Table::Meta, b"deposits")? {
            None => 0,
            Some(v) => i128::from_le_bytes(
                v.try_into()
                    .map_err(|_| ServiceError::Corrupt("deposits".into()))?,
            ),
        })
    }

    /// Checks a wallet request: signature, clock window, unused nonce.
    ///
    /// A request already served comes back as `Served` with what was
    /// stored for it (the allowance of an `Issue`), so that a client that
    /// lost the answer can ask again with the same signed request; a
    /// different request under a used nonce is a replay.
    fn admit_request(
        &mut self,
        request: &WalletRequest,
        now: Timestamp,
    ) -> Result<Admitted, ServiceError> {
        if !WalletRequestTerms::verify(request) {
            return Err(refused("the wallet's signature does not verify"));
        }
        if request.issuer != self.issuer.public() {
            return Err(refused("the request is for another issuer"));
        }
        let hash = Hash::tagged(b"meshpay/v1/served-request", &request.encode()).0;
        let nonce = request.nonce.as_bytes().to_vec();
        if let Some(stored) = self.kv.get(Table::Requests, &nonce)? {
            return match stored.split_at_checked(32) {
                Some((h, rest)) if h == hash => Ok(Admitted::Served(rest.to_vec())),
                _ => Err(refused("this request was already served (replay)")),
            };
        }
        if request.at.0.abs_diff(now.0) > REQUEST_WINDOW_SECS {
            return Err(refused(format!(
                "the request was signed at {}, more than {REQUEST_WINDOW_SECS} s from the service's clock ({})",
                request.at.0, now.0
            )));
        }
        Ok(Admitted::New { nonce, hash })
    }

    /// Issues an allowance the wallet asked for, escrowing its amount from
    /// the wallet's account. `id` is fresh randomness from the caller.
    pub fn issue(
        &mut self,
        request: &WalletRequest,
        id: AllowanceId,
        now: Timestamp,
    ) -> Result<Allowance, ServiceError> {
        let (nonce, hash) = match self.admit_request(request, now)? {
            Admitted::Served(stored) => {
                return Allowance::decode(&stored)
                    .map_err(|e| ServiceError::Corrupt(format!("a served request: {e}")));
            }
            Admitted::New { nonce, hash } => (nonce, hash),
        };
        let WalletAction::Issue {
            amount,
            currency,
            valid_secs,
            caps,
        } = request.action.clone()
        else {
            return Err(refused("not an issue request"));
        };
        if amount == 0 || caps.max_per_payment == 0 || caps.max_payments == 0 {
            return Err(refused("amount and caps must be positive"));
        }
        let p = &self.policy;
        if currency != p.currency {
            return Err(refused(format!("this service holds {} only", p.currency)));
        }
        if amount > p.max_amount
            || caps.max_per_payment > p.max_per_payment.min(amount)
            || caps.max_payments > p.max_payments
        {
            return Err(refused(format!(
                "beyond the issuer's policy: at most {} per allowance, {} per payment (and not above the amount), {} payments",
                p.max_amount, p.max_per_payment, p.max_payments
            )));
        }
        if !(60..=366 * 86_400).contains(&valid_secs) {
            return Err(refused("validity must be between a minute and a year"));
        }
        let wallet = Account::Wallet(request.wallet.into());
        let balance = self.balance(&wallet)?;
        if i128::from(balance) < i128::from(amount) {
            return Err(refused(format!(
                "the wallet's account holds {balance}, less than {amount}"
            )));
        }
        if self.kv.get(Table::States, id.as_bytes())?.is_some() {
            return Err(refused("allowance id already used"));
        }
        let allowance = Allowance::sign(
            AllowanceTerms {
                id,
                wallet: request.wallet,
                amount,
                currency,
                issued_at: now,
                expires_at: now.plus(valid_secs),
                caps,
                tier: 1,
                restriction: None,
                issuer: self.issuer.public(),
            },
            &self.issuer,
        );
        let (state, escrow) = AllowanceState::open(allowance.clone(), &self.trust)
            .map_err(|e| ServiceError::Corrupt(format!("own allowance refused: {e}")))?;
        let mut served = hash.to_vec();
        served.extend(allowance.encode());
        let mut puts = vec![
            Put {
                table: Table::Requests,
                key: nonce,
                value: served,
            },
            Put {
                table: Table::States,
                key: id.as_bytes().to_vec(),
                value: state.encode(),
            },
        ];
        self.apply(&[escrow], &mut puts)?;
        self.kv.commit(&puts)?;
        tracing::info!(allowance = %id, amount, "allowance issued");
        Ok(allowance)
    }

    fn load(
        &mut self,
        ids: &BTreeSet<AllowanceId>,
    ) -> Result<BTreeMap<AllowanceId, AllowanceState>, ServiceError> {
        let mut states = BTreeMap::new();
        for id in ids {
            if let Some(bytes) = self.kv.get(Table::States, id.as_bytes())? {
                let state = AllowanceState::decode(&bytes)
                    .map_err(|e| ServiceError::Corrupt(format!("state of {id}: {e}")))?;
                states.insert(*id, state);
            }
        }
        Ok(states)
    }

    fn state_puts(states: &BTreeMap<AllowanceId, AllowanceState>, puts: &mut Vec<Put>) {
        for (id, s) in states {
            puts.push(Put {
                table: Table::States,
                key: id.as_bytes().to_vec(),
                value: s.encode(),
            });
        }
    }

    /// Adds `entries` to the revocation list and signs a new version.
    fn revoke(
        &mut self,
        entries: &[(Revoked, RevocationReason)],
        now: Timestamp,
        puts: &mut Vec<Put>,
    ) -> Result<(), ServiceError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut terms = match self.revocations()? {
            Some(list) => list.terms,
            None => RevocationListTerms {
                version: 0,
                issued_at: now,
                issuer: self.issuer.public(),
                entries: BTreeMap::new(),
            },
        };
        terms.version += 1;
        terms.issued_at = now;
        for (what, why) in entries {
            terms.entries.entry(*what).or_insert(*why);
        }
        puts.push(Put {
            table: Table::Meta,
            key: b"revocations".to_vec(),
            value: RevocationList::sign(terms, &self.issuer).encode(),
        });
        Ok(())
    }

    /// The wallet reports its device lost: the allowance is revoked and
    /// closes early (see `AllowanceState::report_lost`).
    pub fn report_lost(
        &mut self,
        request: &WalletRequest,
        now: Timestamp,
    ) -> Result<(), ServiceError> {
        let (nonce, hash) = match self.admit_request(request, now)? {
            Admitted::Served(_) => return Ok(()),
            Admitted::New { nonce, hash } => (nonce, hash),
        };
        let WalletAction::ReportLost { allowance } = request.action else {
            return Err(refused("not a lost-device report"));
        };
        let mut states = self.load(&BTreeSet::from([allowance]))?;
        let Some(state) = states.get_mut(&allowance) else {
            return Err(refused(format!("no allowance {allowance}")));
        };
        if state.allowance().wallet != request.wallet {
            return Err(refused("the allowance belongs to another wallet"));
        }
        let revocation = state.report_lost(now);
        let mut puts = vec![Put {
            table: Table::Requests,
            key: nonce,
            value: hash.to_vec(),
        }];
        Self::state_puts(&states, &mut puts);
        self.revoke(&revocation.into_iter().collect::<Vec<_>>(), now, &mut puts)?;
        self.kv.commit(&puts)?;
        Ok(())
    }

    /// Settles a batch of receipts arriving at `now`: validation, the
    /// rules, balances, the revocations of new double spenders and a signed
    /// acknowledgement, all in one commit.
    pub fn submit(
        &mut self,
        receipts: &[Receipt],
        now: Timestamp,
    ) -> Result<Submitted, ServiceError> {
        if receipts.len() > MAX_BATCH {
            return Err(refused(format!(
                "{} receipts in one batch; at most {MAX_BATCH}",
                receipts.len()
            )));
        }
        let mut states = self.load(&allowances_named(receipts))?;
        let ctx = SettlementContext {
            trust: &self.trust,
            config: &self.config,
            credentials: &(),
        };
        let report = ingest_batch(&mut states, receipts, now, &ctx);
        // What the acknowledgement says: every outcome that is new or
        // changed (a resubmitted receipt is answered, not re-acknowledged;
        // its acknowledgement is already published). Bad-signature refusals
        // are left out, see `BatchReport::outcomes`.
        let mut outcomes = report.outcomes();
        let changed: BTreeSet<TransferId> = report.changed.iter().map(|(t, _)| *t).collect();
        for r in report.receipts.iter().filter(|r| r.duplicate) {
            if !changed.contains(&r.transfer) {
                outcomes.remove(&r.transfer);
            }
        }
        let mut puts = Vec::new();
        Self::state_puts(&states, &mut puts);
        self.apply(&report.movements, &mut puts)?;
        for (id, outcome) in &outcomes {
            puts.push(Put {
                table: Table::Outcomes,
                key: id.as_bytes().to_vec(),
                value: postcard::to_allocvec(outcome)
                    .map_err(|e| ServiceError::Corrupt(e.to_string()))?,
            });
        }
        self.revoke(&report.revocations, now, &mut puts)?;
        let ack = if outcomes.is_empty() {
            None
        } else {
            let serial = self.counter("ack")? + 1;
            let ack = SettlementAck::sign(
                SettlementAckTerms {
                    serial,
                    issued_at: now,
                    issuer: self.issuer.public(),
                    outcomes,
                },
                &self.issuer,
            );
            puts.push(Put {
                table: Table::Acks,
                key: be(serial),
                value: ack.encode(),
            });
            puts.push(Put {
                table: Table::Meta,
                key: b"ack".to_vec(),
                value: serial.to_le_bytes().to_vec(),
            });
            Some(ack)
        };
        self.kv.commit(&puts)?;
        for p in &report.proofs {
            tracing::warn!(allowance = %p.allowance(), "double spend proven at settlement");
        }
        Ok(Submitted {
            receipts: report
                .receipts
                .iter()
                .map(|r| ReceiptOutcome {
                    transfer: r.transfer.to_string(),
                    outcome: r.outcome,
                    duplicate: r.duplicate,
                    error: r.error.as_ref().map(ToString::to_string),
                })
                .collect(),
            ack,
        })
    }

    /// Closes every allowance past its expiry (or lost-device deadline)
    /// plus grace, refunding the unspent escrow. Returns the refunds.
    pub fn close_due(&mut self, now: Timestamp) -> Result<Vec<Movement>, ServiceError> {
        let mut states = BTreeMap::new();
        let mut refunds = Vec::new();
        for (key, bytes) in self.kv.scan(Table::States, &[])? {
            let mut state = AllowanceState::decode(&bytes)
                .map_err(|e| ServiceError::Corrupt(format!("a state: {e}")))?;
            if state.closed().is_some() {
                continue;
            }
            let before = state.clone();
            if let Some(m) = state.close(now, &self.config) {
                refunds.push(m);
            }
            if state != before {
                let id: [u8; 16] = key
                    .try_into()
                    .map_err(|_| ServiceError::Corrupt("a state key".into()))?;
                states.insert(AllowanceId(id), state);
            }
        }
        if states.is_empty() {
            return Ok(refunds);
        }
        let mut puts = Vec::new();
        Self::state_puts(&states, &mut puts);
        self.apply(&refunds, &mut puts)?;
        self.kv.commit(&puts)?;
        Ok(refunds)
    }

    /// The current revocation list, if any was published.
    pub fn revocations(&mut self) -> Result<Option<RevocationList>, ServiceError> {
        self.kv
            .get(Table::Meta, b"revocations")?
            .map(|b| {
                RevocationList::decode(&b)
                    .map_err(|e| ServiceError::Corrupt(format!("revocation list: {e}")))
            })
            .transpose()
    }

    /// Acknowledgements with a serial above `since`, oldest first, at most
    /// `limit`.
    pub fn acks_since(
        &mut self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<SettlementAck>, ServiceError> {
        let last = self.counter("ack")?;
        let mut out = Vec::new();
        for serial in since.saturating_add(1)..=last {
            if out.len() >= limit {
                break;
            }
            if let Some(b) = self.kv.get(Table::Acks, &be(serial))? {
                out.push(
                    SettlementAck::decode(&b)
                        .map_err(|e| ServiceError::Corrupt(format!("ack {serial}: {e}")))?,
                );
            }
        }
        Ok(out)
    }

    /// The outcome of one transfer, if it reached the service.
    pub fn outcome(&mut self, transfer: &TransferId) -> Result<Option<Outcome>, ServiceError> {
        self.kv
            .get(Table::Outcomes, transfer.as_bytes())?
            .map(|b| postcard::from_bytes(&b).map_err(|e| ServiceError::Corrupt(e.to_string())))
            .transpose()
    }

    /// A wallet's statement, oldest first.
    pub fn statement(&mut self, wallet: &KeyBytes) -> Result<Vec<StatementEntry>, ServiceError> {
        self.kv
            .scan(Table::Statements, wallet.as_bytes())?
            .into_iter()
            .map(|(_, v)| {
                postcard::from_bytes(&v).map_err(|e| ServiceError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// The state of one allowance.
    pub fn allowance_state(
        &mut self,
        id: &AllowanceId,
    ) -> Result<Option<AllowanceState>, ServiceError> {
        Ok(self.load(&BTreeSet::from([*id]))?.remove(id))
    }

    /// Where the data lives.
    pub fn describe(&self) -> String {
        self.kv.describe()
    }
}
