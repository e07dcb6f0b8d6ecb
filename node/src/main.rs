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
    /// Pay an invoice token from a running node (it is the payer).
    Pay {
        #[command(flatten)]
        dir: Dir,
        /// The token `meshpay request` printed.
        token: String,
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
        /// Run on Bluetooth LE instead of the LAN mesh (see docs/ble.md).
        #[arg(long)]
        ble: bool,
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
        Command::Init { dir, issuer, net } => init(&dir, issuer, &net),
        Command::Node {
            action: NodeAction::Run { dir, net, sync_interval, ble },
        } => run_node(&dir, &net, sync_interval, ble),
        Command::Request { dir, amount, currency, memo, json } => {
            parse_amount(&amount).and_then(|amount| {
                let body = json!({ "amount": amount, "currency": currency, "memo": memo });
                let v = control_call(&dir, "POST", "/v1/request", Some(&body))?;
                print_out(json, &v, |v| format!("{}\n", v["token"].as_str().unwrap_or_default()));
                Ok(())
            })
        }
        Command::Pay { dir, token, json } => {
            control_call(&dir, "POST", "/v1/pay", Some(&json!({ "token": token }))).map(|v| {
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
                )
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
        Command::Allowance {
            action: AllowanceAction::Add { dir, allowance },
        } => control_call(&dir, "POST", "/v1/allowances", Some(&json!({ "allowance": allowance }))).map(|_| ()),
        Command::Issuer { action } => issuer(action),
        Command::Demo { json, data_dir } => return demo(json, data_dir),
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

fn init(dir: &Dir, issuer: String, net: &Net) -> Result<(), String> {
    let mut config = Config {
        issuer,
        listen: vec!["/ip4/0.0.0.0/tcp/0".into()],
        peers: net.peer.clone(),
        mdns: !net.no_mdns,
        control: net.control.clone().unwrap_or_else(|| "127.0.0.1:0".into()),
        sync_interval_secs: 10,
    };
    if !net.listen.is_empty() {
        config.listen = net.listen.clone();
    }
    let data = DataDir(dir.data_dir.clone());
    let wallet = data.init(&config).map_err(|e| e.to_string())?;
    Node::open(
        "node",
        &data.database(),
        data.key().map_err(|e| e.to_string())?,
        TrustStore::new(parse_public_key("issuer", &config.issuer).map_err(|e| e.to_string())?),
    )
    .map_err(|e| e.to_string())?;
    println!("created {}\nwallet {wallet}", dir.data_dir.display());
    Ok(())
}

fn run_node(dir: &Dir, net: &Net, sync_interval: Option<u64>, ble: bool) -> Result<(), String> {
    if ble {
        // Before anything else: a machine without Bluetooth gets the
        // doctor's explanation, not a D-Bus error.
        meshpay_node::ble::preflight()?;
    }
    let data = DataDir(dir.data_dir.clone());
    let config = data.config().map_err(|e| e.to_string())?;
    let key = data.key().map_err(|e| e.to_string())?;
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
    if ble {
        return meshpay_node::ble::run(node);
    }
    let mesh_config = MeshConfig {
        listen,
        peers,
        mdns: config.mdns && !net.no_mdns,
        sync_interval: Duration::from_secs(
            sync_interval.unwrap_or(config.sync_interval_secs).max(1),
        ),
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let (handle, task) = Mesh::spawn(node, mesh_config).map_err(|e| e.to_string())?;
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
        IssuerAction::Allowance {
            key,
            wallet,
            amount,
            currency,
            days,
            max_per_payment,
            max_payments,
        } => {
            let text =
                std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
            let seed: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("{}: expected 64 hex digits", key.display()))?;
            let issuer = SecretKey::from_seed(&seed);
            let wallet = parse_public_key("--wallet", &wallet).map_err(|e| e.to_string())?;
            let currency =
                Currency::new(&currency).ok_or("--currency must be three upper-case letters")?;
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
                    amount: parse_amount(&amount)?,
                    currency,
                    issued_at: now,
                    expires_at: now.plus(days.saturating_mul(86_400)),
                    caps: Caps {
                        max_per_payment: parse_amount(&max_per_payment)?,
                        max_payments,
                    },
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
    if report.proof_everywhere && report.culprit_refused_everywhere {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
