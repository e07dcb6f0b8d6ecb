//! The `meshpay` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meshpay_node::config::{Config, DataDir, parse_public_key};
use meshpay_node::control;
use meshpay_node::mesh::{Mesh, MeshConfig};
use meshpay_node::node::Node;
use meshpay_proto::prelude::*;
use serde_json::{Value, json};

/// meshpay: offline peer-to-peer payments that catch double spends in the mesh.
#[derive(Parser)]
#[command(name = "meshpay", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Dir {
    /// The node's data directory.
    #[arg(long, env = "MESHPAY_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Args, Clone, Default)]
struct Net {
    /// libp2p listen address (repeatable; overrides config.toml).
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Static peer to dial (repeatable; overrides config.toml).
    #[arg(long, value_name = "MULTIADDR")]
    peer: Vec<String>,
    /// Do not discover peers by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Control API address (loopback only; overrides config.toml).
    #[arg(long, value_name = "ADDR")]
    control: Option<String>,
    /// The settlement service, http://host:port: this node uploads what it
    /// holds whenever the service answers (overrides config.toml).
    #[arg(long, env = "MESHPAY_SETTLEMENT", value_name = "URL")]
    settlement: Option<String>,
}

/// Where a sealed wallet key's passphrase comes from: a file, the
/// environment, or the terminal, in that order.
#[derive(Args, Clone, Default)]
struct Unlock {
    /// Read the wallet key's passphrase from this file (first line).
    /// MESHPAY_PASSPHRASE holds the passphrase itself; with neither, it is
    /// asked for on the terminal.
    #[arg(long, env = "MESHPAY_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

impl Unlock {
    /// The passphrase from a file or the environment, or asked on the
    /// terminal with `prompt` (twice when `confirm`).
    fn passphrase(&self, prompt: &str, confirm: bool) -> Result<Vec<u8>, String> {
        if let Some(file) = &self.passphrase_file {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            return Ok(text.lines().next().unwrap_or_default().as_bytes().to_vec());
        }
        if let Ok(p) = std::env::var("MESHPAY_PASSPHRASE") {
            return Ok(p.into_bytes());
        }
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err(
                "the wallet key needs a passphrase: set MESHPAY_PASSPHRASE or pass --passphrase-file FILE"
                    .into(),
            );
        }
        let first = rpassword::prompt_password(prompt).map_err(|e| e.to_string())?;
        if confirm && rpassword::prompt_password("again: ").map_err(|e| e.to_string())? != first {
            return Err("the two passphrases differ".into());
        }
        Ok(first.into_bytes())
    }

    /// The wallet key of `data`, unsealed if it is sealed.
    fn key(&self, data: &DataDir) -> Result<SecretKey, String> {
        let passphrase = if data.key_is_sealed().map_err(|e| e.to_string())? {
            Some(self.passphrase("wallet key passphrase: ", false)?)
        } else {
            None
        };
        data.key(passphrase.as_deref()).map_err(|e| e.to_string())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a node: wallet key (mode 0600), config.toml, database.
    Init {
        #[command(flatten)]
        dir: Dir,
        /// The issuer's root public key (hex), pinned as the root of trust.
        #[arg(long, env = "MESHPAY_ISSUER")]
        issuer: String,
        #[command(flatten)]
        net: Net,
        /// Seal the wallet key with a passphrase (Argon2id and
        /// ChaCha20-Poly1305); `node run` then needs it.
        #[arg(long)]
        encrypt: bool,
        #[command(flatten)]
        unlock: Unlock,
    },
    /// Run a node: the libp2p mesh and the control API.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Open an invoice on a running node (it is the payee); prints a token to pay.
    Request {
        #[command(flatten)]
        dir: Dir,
        /// Amount, e.g. 4.50.
        amount: String,
        /// Currency or voucher code.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Text shown to the payer (at most 64 bytes).
        #[arg(long)]
        memo: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pay an invoice token from a running node (it is the payer), or with
    /// --nearby the nearest payee advertising an invoice over BLE (a tap).
    Pay {
        #[command(flatten)]
        dir: Dir,
        /// The token `meshpay request` printed.
        #[arg(required_unless_present = "nearby", conflicts_with = "nearby")]
        token: Option<String>,
        /// Pay the nearest payee that advertises an invoice over Bluetooth
        /// LE; only an invoice for exactly --amount is signed.
        #[arg(long, requires = "amount")]
        nearby: bool,
        /// The amount agreed, e.g. 4.50 (with --nearby).
        #[arg(long, requires = "nearby")]
        amount: Option<String>,
        /// Currency or voucher code (with --nearby).
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a running node's status.
    Status {
        #[command(flatten)]
        dir: Dir,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the receipts a running node is party to.
    History {
        #[command(flatten)]
        dir: Dir,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The partial ledger.
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// Allowances of this node's wallet.
    Allowance {
        #[command(subcommand)]
        action: AllowanceAction,
    },
    /// Issuer tools (until the settlement service issues allowances).
    Issuer {
        #[command(subcommand)]
        action: IssuerAction,
    },
    /// The settlement service (the issuer's side, online).
    Settlement {
        #[command(subcommand)]
        action: SettlementAction,
    },
    /// Bluetooth LE.
    Ble {
        #[command(subcommand)]
        action: BleAction,
    },
    /// Run the whole story on this machine: allowances, offline payments,
    /// a network split, a cloned wallet spending twice, the mesh catching
    /// it, and the culprit refused everywhere.
    Demo {
        /// Print the report as JSON (for scripts).
        #[arg(long)]
        json: bool,
        /// Keep the nodes' databases in this directory (default: a
        /// temporary one, removed afterwards).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SettlementAction {
    /// Serve the settlement HTTP API until interrupted (OpenAPI document at
    /// /v1/openapi.json).
    Serve {
        /// Where the redb database (settlement.redb) and settlement.addr go.
        #[arg(long, env = "MESHPAY_SETTLEMENT_DIR", value_name = "DIR")]
        data_dir: PathBuf,
        /// The issuer key file (`meshpay issuer new`): signs allowances,
        /// acknowledgements and revocation lists.
        #[arg(long, value_name = "FILE")]
        issuer_key: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        /// Use PostgreSQL instead of redb: postgres://user:pass@host/db.
        #[arg(long, env = "MESHPAY_DATABASE", value_name = "URL")]
        database: Option<String>,
        /// The PostgreSQL schema to keep the data in (created if missing),
        /// so that several services can share one database.
        #[arg(long, env = "MESHPAY_DATABASE_SCHEMA", default_value = "public")]
        database_schema: String,
        /// A file holding the bearer token that authorises deposits
        /// (without it, deposits are refused).
        #[arg(long, value_name = "FILE")]
        operator_token_file: Option<PathBuf>,
        /// Who bears a conflict loss: `payee`, or `fund` (the issuer's risk
        /// fund pays up to --risk-fund-cap per receipt).
        #[arg(long, default_value = "payee", value_parser = ["payee", "fund"])]
        loss_policy: String,
        /// Most the risk fund pays per lost receipt, e.g. 20.00.
        #[arg(long, default_value = "20.00")]
        risk_fund_cap: String,
        /// Days after an allowance's expiry that receipts are still taken
        /// (then the unspent escrow is refunded).
        #[arg(long, default_value_t = 7)]
        grace_days: u64,
        /// The currency accounts hold.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Largest allowance a wallet may load, e.g. 1000.00.
        #[arg(long, default_value = "1000.00")]
        max_allowance: String,
        /// Largest single payment an allowance may allow, e.g. 100.00.
        #[arg(long, default_value = "100.00")]
        max_per_payment: String,
        /// Most payments an allowance may allow.
        #[arg(long, default_value_t = 500)]
        max_payments: u32,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Run until interrupted.
    Run {
        #[command(flatten)]
        dir: Dir,
        #[command(flatten)]
        net: Net,
        /// Seconds between periodic syncs.
        #[arg(long)]
        sync_interval: Option<u64>,
        #[command(flatten)]
        unlock: Unlock,
        /// Also run Bluetooth LE on this machine's adapter, beside the LAN
        /// mesh (see docs/ble.md).
        #[arg(long)]
        ble: bool,
        /// Run Bluetooth LE on the emulated air in DIR instead of an
        /// adapter: processes on this machine meet through Unix sockets
        /// there (an emulation, for tests; see docs/ble.md).
        #[arg(long, value_name = "DIR", conflicts_with = "ble")]
        ble_emulated: Option<PathBuf>,
        /// This node's place in the emulated air, metres: X,Y.
        #[arg(
            long,
            value_name = "X,Y",
            default_value = "0,0",
            requires = "ble_emulated"
        )]
        ble_position: String,
        /// The ATT MTU this node supports in the emulated air (23 to 517).
        #[arg(long, default_value_t = 247, requires = "ble_emulated")]
        ble_mtu: u16,
        /// Append every packet of this node's emulated-air connections,
        /// both ways, to FILE: what a listener nearby would record.
        #[arg(long, value_name = "FILE", requires = "ble_emulated")]
        ble_record: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BleAction {
    /// Check the adapter, BlueZ and permissions; say what is missing.
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LedgerAction {
    /// Print the ledger as JSON.
    Export {
        #[command(flatten)]
        dir: Dir,
    },
    /// Drop a stored ledger that no longer loads, with the node stopped.
    /// Receipts, allowances, spend counters and carried receipts are kept;
    /// peers send the ledger again at the next sync.
    Reset {
        #[command(flatten)]
        dir: Dir,
        /// Reset a ledger that still loads, too.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AllowanceAction {
    /// Load an allowance (hex, from the issuer) into a running node.
    Add {
        #[command(flatten)]
        dir: Dir,
        /// The allowance, hex.
        allowance: String,
    },
    /// Load an allowance online: ask the settlement service to escrow
    /// `amount` from this wallet's account (a request signed by the wallet
    /// key), then give it to the node (running or not).
    Load {
        #[command(flatten)]
        dir: Dir,
        /// The settlement service, http://host:port.
        #[arg(long, env = "MESHPAY_SETTLEMENT", value_name = "URL")]
        settlement: String,
        #[command(flatten)]
        terms: TermsArgs,
        #[command(flatten)]
        unlock: Unlock,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What an allowance grants, as given on the command line.
#[derive(Args, Clone)]
struct TermsArgs {
    /// Amount, e.g. 100.00.
    #[arg(long)]
    amount: String,
    /// Currency or voucher code.
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// Days until it expires.
    #[arg(long, default_value_t = 7)]
    days: u64,
    /// Largest single payment, e.g. 50.00.
    #[arg(long, default_value = "50.00")]
    max_per_payment: String,
    /// Most payments.
    #[arg(long, default_value_t = 100)]
    max_payments: u32,
}

/// Allowance terms, parsed: amount, currency, seconds of validity, caps.
struct Terms {
    amount: u64,
    currency: Currency,
    valid_secs: u64,
    caps: Caps,
}

impl TermsArgs {
    fn parse(&self) -> Result<Terms, String> {
        Ok(Terms {
            amount: parse_amount(&self.amount)?,
            currency: Currency::new(&self.currency)
                .ok_or("--currency must be three upper-case letters")?,
            valid_secs: self.days.saturating_mul(86_400),
            caps: Caps {
                max_per_payment: parse_amount(&self.max_per_payment)?,
                max_payments: self.max_payments,
            },
        })
    }
}

#[derive(Subcommand)]
enum IssuerAction {
    /// Create an issuer key file (mode 0600); prints the public key.
    New {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an allowance for a wallet; prints it as hex.
    Allowance {
        /// The issuer key file.
        #[arg(long)]
        key: PathBuf,
        /// The wallet's public key (hex; `meshpay status` shows it).
        #[arg(long)]
        wallet: String,
        #[command(flatten)]
        terms: TermsArgs,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            dir,
            issuer,
            net,
            encrypt,
            unlock,
        } => init(&dir, issuer, &net, encrypt.then_some(&unlock)),
        Command::Node {
            action:
                NodeAction::Run {
                    dir,
                    net,
                    sync_interval,
                    unlock,
                    ble,
                    ble_emulated,
                    ble_position,
                    ble_mtu,
                    ble_record,
                },
        } => ble_choice(ble, ble_emulated, &ble_position, ble_mtu, ble_record)
            .and_then(|radio| run_node(&dir, &net, sync_interval, &unlock, radio)),
        Command::Request { dir, amount, currency, memo, json } => {
            parse_amount(&amount).and_then(|amount| {
                let body = json!({ "amount": amount, "currency": currency, "memo": memo });
                let v = control_call(&dir, "POST", "/v1/request", Some(&body))?;
                print_out(json, &v, |v| format!("{}\n", v["token"].as_str().unwrap_or_default()));
                Ok(())
            })
        }
        Command::Pay { dir, token, nearby, amount, currency, json } => {
            let body = match (token, nearby, amount) {
                (Some(token), false, _) => Ok(json!({ "token": token })),
                (None, true, Some(amount)) => parse_amount(&amount)
                    .map(|amount| json!({ "nearby": { "amount": amount, "currency": currency } })),
                _ => Err("give a token, or --nearby --amount AMOUNT".to_string()),
            };
            body.and_then(|body| control_call(&dir, "POST", "/v1/pay", Some(&body))).map(|v| {
                print_out(json, &v, |v| {
                    if let Some(id) = v["Paid"].as_str() {
                        format!("paid: transfer {id}\n")
                    } else if let Some(rule) = v["Refused"].as_str() {
                        format!("refused by the payee: rule {rule}\n")
                    } else if let Some(why) = v["PayerRefused"].as_str() {
                        format!("not paid (refused before signing): {why}\n")
                    } else {
                        "no answer from the payee: the amount stays counted as spent\n".into()
                    }
                })
            })
        }
        Command::Status { dir, json } => control_call(&dir, "GET", "/v1/status", None).map(|v| {
            print_out(json, &v, |v| {
                format!(
                    "peer {}\nwallet {}\nlistening {}\npeers {}\nledger {} entries, {} proofs, digest {}\n",
                    v["peer_id"].as_str().unwrap_or_default(),
                    v["wallet"].as_str().unwrap_or_default(),
                    v["listening"],
                    v["peers"],
                    v["ledger_entries"],
                    v["proofs"],
                    v["ledger_digest"].as_str().unwrap_or_default()
                ) + &ble_status(&v["ble"])
            });
        }),
        Command::History { dir, json } => control_call(&dir, "GET", "/v1/history", None).map(|v| {
            print_out(json, &v, |v| {
                let mut s = String::new();
                for r in v.as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "{:<8} {:>10}  seq {:<4} {}\n",
                        r["role"].as_str().unwrap_or_default(),
                        money(r["amount"].as_u64().unwrap_or(0)),
                        r["seq"],
                        r["transfer"].as_str().unwrap_or_default()
                    ));
                }
                s
            });
        }),
        Command::Ledger {
            action: LedgerAction::Export { dir },
        } => control_call(&dir, "GET", "/v1/ledger", None).map(|v| print_out(true, &v, |_| String::new())),
        Command::Ledger {
            action: LedgerAction::Reset { dir, force, json },
        } => reset_ledger(&dir, force, json),
        Command::Allowance {
            action: AllowanceAction::Add { dir, allowance },
        } => control_call(&dir, "POST", "/v1/allowances", Some(&json!({ "allowance": allowance }))).map(|_| ()),
        Command::Allowance {
            action:
                AllowanceAction::Load {
                    dir,
                    settlement,
                    terms,
                    unlock,
                    json,
                },
        } => terms
            .parse()
            .and_then(|t| load_allowance(&dir, &settlement, &t, &unlock, json)),
        Command::Issuer { action } => issuer(action),
        Command::Demo { json, data_dir } => return demo(json, data_dir),
        Command::Settlement {
            action:
                SettlementAction::Serve {
                    data_dir,
                    issuer_key,
                    listen,
                    database,
                    database_schema,
                    operator_token_file,
                    loss_policy,
                    risk_fund_cap,
                    grace_days,
                    currency,
                    max_allowance,
                    max_per_payment,
                    max_payments,
                },
        } => (|| {
            let policy = meshpay_node::settlement::IssuePolicy {
                currency: Currency::new(&currency)
                    .ok_or("--currency must be three upper-case letters")?,
                max_amount: parse_amount(&max_allowance)?,
                max_per_payment: parse_amount(&max_per_payment)?,
                max_payments,
            };
            use meshpay_proto::settlement::{LossPolicy, SettlementConfig};
            let config = SettlementConfig {
                loss_policy: if loss_policy == "fund" {
                    LossPolicy::IssuerRiskFund {
                        cap_per_receipt: parse_amount(&risk_fund_cap)?,
                    }
                } else {
                    LossPolicy::PayeeBears
                },
                grace_secs: grace_days.saturating_mul(86_400),
                ..SettlementConfig::default()
            };
            serve_settlement(
                &data_dir,
                &issuer_key,
                &listen,
                database.as_deref().map(|url| (url, database_schema.as_str())),
                operator_token_file.as_deref(),
                config,
                policy,
            )
        })(),
        Command::Ble {
            action: BleAction::Doctor { json },
        } => return ble_doctor(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The BLE part of `meshpay status`, if the node runs BLE.
fn ble_status(ble: &Value) -> String {
    if ble.is_null() {
        return String::new();
    }
    let mut s = format!(
        "ble node {}{}, {} links; heard:",
        ble["node"].as_str().unwrap_or_default(),
        if ble["advertising_invoice"] == true {
            " (invoice open)"
        } else {
            ""
        },
        ble["links"]
    );
    for h in ble["heard"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            " {} {} dBm{}",
            h["node"].as_str().unwrap_or_default(),
            h["rssi"],
            if h["invoice"] == true {
                " (invoice)"
            } else {
                ""
            }
        ));
    }
    s.push('\n');
    s
}

/// `ledger reset`: drops the stored ledger if it does not load (or with
/// `force`), keeping everything else in the database.
fn reset_ledger(dir: &Dir, force: bool, json: bool) -> Result<(), String> {
    use meshpay_proto::ledger::PartialLedger;
    let data = DataDir(dir.data_dir.clone());
    let config = data.config().map_err(|e| e.to_string())?;
    let trust =
        TrustStore::new(parse_public_key("issuer", &config.issuer).map_err(|e| e.to_string())?);
    // Opening fails while `node run` holds the database.
    let store = meshpay_node::store::Store::open(&data.database())
        .map_err(|e| format!("{e} (stop `meshpay node run` for this data dir before a reset)"))?;
    let actor = store.node_id().map_err(|e| e.to_string())?;
    let stored = store.ledger().map_err(|e| e.to_string())?;
    let none_stored = stored.is_none();
    let problem = match stored {
        None => None,
        Some((bytes, epoch, aside)) => {
            PartialLedger::<meshpay_proto::ledger::AutomergeReplica>::load_with_aside(
                &bytes, &aside, epoch, &actor, trust,
            )
            .err()
            .map(|e| e.to_string())
        }
    };
    if problem.is_none() && !force {
        let what = if none_stored {
            "no ledger is stored yet"
        } else {
            "the stored ledger loads"
        };
        return Err(format!(
            "{what}; nothing was changed (add --force to reset it anyway)"
        ));
    }
    let dropped = store.reset_ledger().map_err(|e| e.to_string())?;
    tracing::warn!(dropped, problem = ?problem, "stored ledger reset");
    let v = json!({
        "reset": true,
        "dropped_pieces": dropped,
        "load_error": problem,
    });
    print_out(json, &v, |_| {
        format!(
            "ledger reset: {dropped} stored pieces dropped; the node writes under a new ledger id.\n\
             receipts, allowances, spend counters and carried receipts are kept; peers send the ledger again at the next sync.\n"
        )
    });
    Ok(())
}

fn print_out(json: bool, v: &Value, text: impl Fn(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", text(v));
    }
}

fn money(minor: u64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// "4.50" -> 450 minor units; at most two decimals, positive, no overflow.
fn parse_amount(s: &str) -> Result<u64, String> {
    let bad = || format!("not an amount: {s:?} (write it like 4.50)");
    let (units, cents) = match s.split_once('.') {
        Some((u, c)) if c.len() == 1 => (u, format!("{c}0")),
        Some((u, c)) if c.len() == 2 => (u, c.to_string()),
        Some(_) => return Err(bad()),
        None => (s, "00".to_string()),
    };
    if units.is_empty()
        || !units.bytes().all(|b| b.is_ascii_digit())
        || !cents.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let units: u64 = units.parse().map_err(|_| bad())?;
    let cents: u64 = cents.parse().map_err(|_| bad())?;
    let total = units
        .checked_mul(100)
        .and_then(|u| u.checked_add(cents))
        .ok_or_else(bad)?;
    if total == 0 {
        return Err("the amount must be positive".into());
    }
    Ok(total)
}

fn control_call(
    dir: &Dir,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let data = DataDir(dir.data_dir.clone());
    let file = data.control_file();
    let addr = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "{}: {e} (is `meshpay node run` running for this data dir?)",
            file.display()
        )
    })?;
    let (code, v) = control::call(addr.trim(), method, path, body)?;
    if code >= 400 {
        return Err(v["error"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_string));
    }
    Ok(v)
}

fn init(dir: &Dir, issuer: String, net: &Net, seal: Option<&Unlock>) -> Result<(), String> {
    let mut config = Config {
        issuer,
        listen: meshpay_node::config::default_listen(),
        peers: net.peer.clone(),
        mdns: !net.no_mdns,
        control: net.control.clone().unwrap_or_else(|| "127.0.0.1:0".into()),
        sync_interval_secs: 10,
        settlement: net.settlement.clone(),
    };
    if !net.listen.is_empty() {
        config.listen = net.listen.clone();
    }
    let data = DataDir(dir.data_dir.clone());
    let passphrase = seal
        .map(|u| u.passphrase("new wallet key passphrase: ", true))
        .transpose()?;
    let wallet = data
        .init(&config, passphrase.as_deref())
        .map_err(|e| e.to_string())?;
    Node::open(
        "node",
        &data.database(),
        data.key(passphrase.as_deref()).map_err(|e| e.to_string())?,
        TrustStore::new(parse_public_key("issuer", &config.issuer).map_err(|e| e.to_string())?),
    )
    .map_err(|e| e.to_string())?;
    println!("created {}\nwallet {wallet}", dir.data_dir.display());
    Ok(())
}

/// The radio `node run` is asked for, if any.
fn ble_choice(
    ble: bool,
    emulated: Option<PathBuf>,
    position: &str,
    mtu: u16,
    record: Option<PathBuf>,
) -> Result<Option<meshpay_node::ble::RadioChoice>, String> {
    use meshpay_node::ble::{RadioChoice, air::AirConfig};
    if ble {
        // Before anything else: a machine without Bluetooth gets the
        // doctor's explanation, not a D-Bus error.
        meshpay_node::ble::preflight()?;
        return Ok(Some(RadioChoice::Adapter));
    }
    let Some(dir) = emulated else {
        return Ok(None);
    };
    let bad = || format!("--ble-position {position:?}: write it as X,Y in metres, e.g. 1.5,0");
    let (x, y) = position.split_once(',').ok_or_else(bad)?;
    let coordinate = |c: &str| {
        c.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(bad)
    };
    Ok(Some(RadioChoice::Emulated(AirConfig {
        dir,
        position: (coordinate(x)?, coordinate(y)?),
        mtu,
        record,
    })))
}

fn run_node(
    dir: &Dir,
    net: &Net,
    sync_interval: Option<u64>,
    unlock: &Unlock,
    radio: Option<meshpay_node::ble::RadioChoice>,
) -> Result<(), String> {
    let data = DataDir(dir.data_dir.clone());
    let config = data.config().map_err(|e| e.to_string())?;
    let key = unlock.key(&data)?;
    let issuer = parse_public_key("issuer", &config.issuer).map_err(|e| e.to_string())?;
    let parse_addrs = |list: &[String]| -> Result<Vec<libp2p::Multiaddr>, String> {
        list.iter()
            .map(|a| a.parse().map_err(|e| format!("bad multiaddr {a:?}: {e}")))
            .collect()
    };
    let listen = parse_addrs(if net.listen.is_empty() {
        &config.listen
    } else {
        &net.listen
    })?;
    let peers = parse_addrs(if net.peer.is_empty() {
        &config.peers
    } else {
        &net.peer
    })?;
    let control: std::net::SocketAddr = net
        .control
        .as_deref()
        .unwrap_or(&config.control)
        .parse()
        .map_err(|e| format!("bad control address: {e}"))?;
    let node = Node::open("node", &data.database(), key, TrustStore::new(issuer))
        .map_err(|e| e.to_string())?;
    let wallet = node.public_key();
    let ble = radio.map(|r| (r, meshpay_node::ble::runtime::channel()));
    let mesh_config = MeshConfig {
        listen,
        peers,
        mdns: config.mdns && !net.no_mdns,
        sync_interval: Duration::from_secs(
            sync_interval.unwrap_or(config.sync_interval_secs).max(1),
        ),
        settlement: match net.settlement.clone().or(config.settlement) {
            Some(url) => {
                meshpay_node::settlement::client::authority(&url).map_err(|e| e.to_string())?;
                Some(url)
            }
            None => None,
        },
        ble: ble.as_ref().map(|(_, (handle, _))| handle.clone()),
        ..MeshConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let (handle, task) = Mesh::spawn(node, mesh_config).map_err(|e| e.to_string())?;
        if let Some((radio, (ble, events))) = ble {
            let mesh = handle.clone();
            tokio::task::block_in_place(|| {
                meshpay_node::ble::start(radio, wallet, mesh, ble, events)
            })?;
        }
        let bound = control::serve(control, handle.clone())
            .await
            .map_err(|e| e.to_string())?;
        let control_file = data.control_file();
        std::fs::write(&control_file, bound.to_string())
            .map_err(|e| format!("{}: {e}", control_file.display()))?;
        tracing::info!(peer = %handle.peer_id, control = %bound, "node running");
        eprintln!(
            "meshpay node {} running; control API on {bound}",
            handle.peer_id
        );
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = task => {}
        }
        let _ = std::fs::remove_file(&control_file);
        Ok::<(), String>(())
    })
}

fn ble_doctor(json: bool) -> ExitCode {
    let report = meshpay_node::ble::check_machine();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render());
    }
    if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn issuer(action: IssuerAction) -> Result<(), String> {
    match action {
        IssuerAction::New { out } => {
            let key = SecretKey::generate(&mut meshpay_node::os_rng().map_err(|e| e.to_string())?);
            meshpay_node::config::write_private(&out, hex::encode(key.to_seed()).as_bytes())
                .map_err(|e| e.to_string())?;
            println!("{}", key.public());
            Ok(())
        }
        IssuerAction::Allowance { key, wallet, terms } => {
            let terms = terms.parse()?;
            let issuer = read_issuer_key(&key)?;
            let wallet = parse_public_key("--wallet", &wallet).map_err(|e| e.to_string())?;
            let now = meshpay_node::mesh::wall_clock();
            let mut id = [0u8; 16];
            rand::Rng::fill_bytes(
                &mut meshpay_node::os_rng().map_err(|e| e.to_string())?,
                &mut id,
            );
            let allowance = Allowance::sign(
                AllowanceTerms {
                    id: AllowanceId(id),
                    wallet,
                    amount: terms.amount,
                    currency: terms.currency,
                    issued_at: now,
                    expires_at: now.plus(terms.valid_secs),
                    caps: terms.caps,
                    tier: 1,
                    restriction: None,
                    issuer: issuer.public(),
                },
                &issuer,
            );
            println!("{}", hex::encode(allowance.encode()));
            Ok(())
        }
    }
}

fn load_allowance(
    dir: &Dir,
    url: &str,
    terms: &Terms,
    unlock: &Unlock,
    json: bool,
) -> Result<(), String> {
    use meshpay_proto::wallet_request::{WalletAction, WalletRequest, WalletRequestTerms};
    let data = DataDir(dir.data_dir.clone());
    let key = unlock.key(&data)?;
    let mut nonce = [0u8; 16];
    rand::Rng::fill_bytes(
        &mut meshpay_node::os_rng().map_err(|e| e.to_string())?,
        &mut nonce,
    );
    let request = WalletRequest::sign(
        WalletRequestTerms {
            wallet: key.public(),
            // The issuer this node pins: a request for another service is
            // refused there.
            issuer: parse_public_key("issuer", &data.config().map_err(|e| e.to_string())?.issuer)
                .map_err(|e| e.to_string())?,
            nonce: meshpay_proto::transfer::Nonce(nonce),
            at: meshpay_node::mesh::wall_clock(),
            action: WalletAction::Issue {
                amount: terms.amount,
                currency: terms.currency,
                valid_secs: terms.valid_secs,
                caps: terms.caps,
            },
        },
        &key,
    );
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let answer = runtime
        .block_on(meshpay_node::settlement::client::call(
            url,
            "POST",
            "/v1/allowances",
            Some(&json!({ "request": hex::encode(request.encode()) })),
            Duration::from_secs(30),
        ))
        .map_err(|e| e.to_string())?;
    let hex_allowance = answer["allowance"]
        .as_str()
        .ok_or("no allowance in the answer")?;
    let allowance = hex::decode(hex_allowance)
        .map_err(|e| e.to_string())
        .and_then(|b| Allowance::decode(&b).map_err(|e| e.to_string()))?;
    if allowance.wallet != key.public() {
        return Err("the service issued an allowance for another wallet".into());
    }
    // To the running node, or straight into its database.
    if data.control_file().exists() {
        control_call(
            dir,
            "POST",
            "/v1/allowances",
            Some(&json!({ "allowance": hex_allowance })),
        )?;
    } else {
        let config = data.config().map_err(|e| e.to_string())?;
        let issuer = parse_public_key("issuer", &config.issuer).map_err(|e| e.to_string())?;
        let mut node = Node::open("node", &data.database(), key, TrustStore::new(issuer))
            .map_err(|e| e.to_string())?;
        node.add_allowance(allowance.clone())
            .map_err(|e| e.to_string())?;
    }
    if json {
        println!("{answer}");
    } else {
        println!(
            "allowance {} loaded: {} until {}",
            allowance.id, answer["amount"], answer["expires_at"]
        );
    }
    Ok(())
}

/// Reads an issuer key file (`meshpay issuer new` writes one).
fn read_issuer_key(path: &std::path::Path) -> Result<SecretKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{}: expected 64 hex digits", path.display()))?;
    Ok(SecretKey::from_seed(&seed))
}

fn serve_settlement(
    data_dir: &std::path::Path,
    issuer_key: &std::path::Path,
    listen: &str,
    database: Option<(&str, &str)>,
    operator_token_file: Option<&std::path::Path>,
    config: meshpay_proto::settlement::SettlementConfig,
    policy: meshpay_node::settlement::IssuePolicy,
) -> Result<(), String> {
    use meshpay_node::settlement::{Kv, PgKv, RedbKv, Service, http};
    let issuer = read_issuer_key(issuer_key)?;
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("bad --listen {listen:?}: {e}"))?;
    let token = operator_token_file
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("{}: {e}", f.display()))
        })
        .transpose()?;
    if token.as_deref() == Some("") {
        return Err("the operator token file is empty".into());
    }
    let kv: Box<dyn Kv> = match database {
        Some((url, schema)) => {
            Box::new(PgKv::connect_schema(url, schema).map_err(|e| e.to_string())?)
        }
        None => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| format!("{}: {e}", data_dir.display()))?;
            Box::new(RedbKv::open(&data_dir.join("settlement.redb")).map_err(|e| e.to_string())?)
        }
    };
    let service = Service::open(kv, issuer, config)
        .map_err(|e| e.to_string())?
        .with_policy(policy);
    let where_ = service.describe();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let app = http::AppState::new(service, token);
        let bound = http::serve(addr, app, Duration::from_secs(60))
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let file = data_dir.join("settlement.addr");
        if std::fs::create_dir_all(data_dir).is_ok() {
            let _ = std::fs::write(&file, bound.to_string());
        }
        tracing::info!(%bound, storage = %where_, "settlement service running");
        eprintln!("meshpay settlement service on http://{bound} ({where_}); Ctrl-C stops it");
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&file);
        Ok(())
    })
}

fn demo(json: bool, data_dir: Option<PathBuf>) -> ExitCode {
    let temp;
    let dir = match data_dir {
        Some(d) => {
            if let Err(e) = std::fs::create_dir_all(&d) {
                eprintln!("error: cannot create data directory {}: {e}", d.display());
                return ExitCode::FAILURE;
            }
            d
        }
        None => match tempfile::tempdir() {
            Ok(t) => {
                temp = t;
                temp.path().to_path_buf()
            }
            Err(e) => {
                eprintln!("error: cannot create a temporary directory: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let report = match meshpay_node::demo::run(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", meshpay_node::demo::render(&report));
    }
    if report.proof_everywhere && report.culprit_refused_everywhere && report.settlement.conserved {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
