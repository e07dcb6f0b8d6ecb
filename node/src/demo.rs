//! `meshpay demo`: the whole offline story on one machine.
//!
//! An issuer escrows allowances for two wallets; four devices pay each
//! other with no network beyond their local links; the ship's LAN splits
//! in two; a cloned wallet spends the same money on both sides; when the
//! halves meet again the mesh proves the double spend, every node learns
//! it, and the culprit is refused everywhere. Each node keeps a real redb
//! database and runs the real libp2p mesh on loopback TCP, all in this
//! process; the split is made by closing connections.

use std::path::Path;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use meshpay_proto::crypto::KeyBytes;
use meshpay_proto::prelude::*;
use serde::Serialize;

use crate::mesh::{Mesh, MeshConfig, MeshError, MeshHandle, MeshPayment};
use crate::node::{Node, NodeError};
use crate::settlement::{Kv, RedbKv, Service, client, http};
use meshpay_proto::settlement::{Account, SettlementConfig};
use meshpay_proto::wallet_request::{WalletAction, WalletRequest, WalletRequestTerms};

/// What the demo did, step by step; printed as text or JSON.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    /// The steps in order.
    pub steps: Vec<Step>,
    /// Each node at the end.
    pub nodes: Vec<NodeSummary>,
    /// Whether every node holds the conflict proof against the culprit.
    pub proof_everywhere: bool,
    /// Whether every payee refused the culprit's next payment.
    pub culprit_refused_everywhere: bool,
    /// What settlement made of it all.
    pub settlement: SettlementSummary,
    /// Wall time of the whole demo, in milliseconds.
    pub elapsed_ms: u64,
}

/// The settlement half of the story.
#[derive(Debug, Serialize)]
pub struct SettlementSummary {
    /// Every receipt settlement holds, with its outcome.
    pub receipts: Vec<SettledReceipt>,
    /// Each wallet's online balance at the end.
    pub balances: Vec<WalletBalance>,
    /// Escrow refunded after expiry.
    pub refunded: u64,
    /// Whether the sum of all balances and escrows equals what was
    /// deposited.
    pub conserved: bool,
}

/// One receipt at settlement.
#[derive(Debug, Serialize)]
pub struct SettledReceipt {
    /// Who was paid.
    pub payee: String,
    /// Minor units.
    pub amount: u64,
    /// Settled, or refused and why.
    pub outcome: String,
}

/// A wallet's online balance.
#[derive(Debug, Serialize)]
pub struct WalletBalance {
    /// Whose.
    pub name: String,
    /// Minor units.
    pub balance: i64,
}

/// One step of the story.
#[derive(Debug, Serialize)]
pub struct Step {
    /// What happened.
    pub what: String,
    /// The outcome, in words.
    pub outcome: String,
}

/// One node at the end.
#[derive(Debug, Serialize)]
pub struct NodeSummary {
    /// Its name.
    pub name: String,
    /// Receipts it paid.
    pub paid: usize,
    /// Receipts it received.
    pub received: usize,
    /// Entries in its partial ledger.
    pub ledger_entries: usize,
    /// Conflict proofs it holds.
    pub proofs: usize,
    /// Its ledger digest (hex).
    pub digest: String,
}

/// Why the demo could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A node failed (storage, keys).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The mesh failed (network, a stopped node).
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// Something the story waits for did not happen in time.
    #[error("timed out waiting for {0}")]
    Stalled(&'static str),
    /// The settlement service failed.
    #[error("settlement: {0}")]
    Settlement(String),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

fn outcome_text(o: &MeshPayment) -> String {
    match o {
        MeshPayment::Paid(t) => format!(
            "accepted offline: receipt for transfer {}…",
            &t[..t.len().min(12)]
        ),
        MeshPayment::Refused(rule) => format!("refused by the payee: rule {rule}"),
        MeshPayment::PayerRefused(e) => format!("refused by the payer: {e}"),
        MeshPayment::Uncertain => "no answer".into(),
    }
}

fn money(minor: u64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// A wallet loads an allowance: a request it signs, over HTTP.
async fn load(
    url: &str,
    issuer: PublicKey,
    key: &SecretKey,
    amount: u64,
    rng: &mut rand::rngs::StdRng,
) -> Result<Allowance, DemoError> {
    let mut nonce = [0u8; 16];
    rand::Rng::fill_bytes(rng, &mut nonce);
    let request = WalletRequest::sign(
        WalletRequestTerms {
            wallet: key.public(),
            issuer,
            nonce: Nonce(nonce),
            at: crate::mesh::wall_clock(),
            action: WalletAction::Issue {
                amount,
                currency: Currency::new("EUR").unwrap_or_else(|| unreachable!("a valid code")),
                valid_secs: 7 * 86_400,
                caps: Caps {
                    max_per_payment: 5_000,
                    max_payments: 50,
                },
            },
        },
        key,
    );
    let answer = client::call(
        url,
        "POST",
        "/v1/allowances",
        Some(&serde_json::json!({ "request": hex::encode(request.encode()) })),
        PATIENCE,
    )
    .await
    .map_err(|e| DemoError::Settlement(e.to_string()))?;
    answer["allowance"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| Allowance::decode(&b).ok())
        .ok_or_else(|| DemoError::Settlement("no allowance in the answer".into()))
}

/// How long the demo waits for the mesh to do one thing.
const PATIENCE: Duration = Duration::from_secs(20);

/// One node of the demo: its name and its running mesh.
struct Device {
    name: &'static str,
    mesh: MeshHandle,
    addr: Multiaddr,
    task: tokio::task::JoinHandle<Node>,
}

impl Device {
    async fn start(name: &'static str, node: Node) -> Result<Device, DemoError> {
        let config = MeshConfig {
            listen: vec![loopback()],
            peers: Vec::new(),
            mdns: false,
            sync_interval: Duration::from_millis(500),
            ..MeshConfig::default()
        };
        let (mesh, task) = Mesh::spawn(node, config)?;
        let addr = mesh
            .dial_address(PATIENCE)
            .await?
            .ok_or(DemoError::Stalled("a node to listen"))?;
        Ok(Device {
            name,
            mesh,
            addr,
            task,
        })
    }

    /// Connects to `other` and waits until both see the link.
    async fn link(&self, other: &Device) -> Result<(), DemoError> {
        // Both ends lift any earlier cut.
        other.mesh.dial(self.addr.clone()).await?;
        self.mesh.dial(other.addr.clone()).await?;
        let id = other.mesh.peer_id.to_string();
        wait_for("a link between two nodes", || async {
            Ok(self.mesh.status().await?.peers.contains(&id))
        })
        .await
    }

    /// Cuts the link between the two, both ways.
    async fn unlink(&self, other: &Device) -> Result<(), DemoError> {
        self.mesh.disconnect(other.mesh.peer_id).await?;
        other.mesh.disconnect(self.mesh.peer_id).await?;
        let id = other.mesh.peer_id.to_string();
        wait_for("a link to close", || async {
            Ok(!self.mesh.status().await?.peers.contains(&id))
        })
        .await
    }

    /// The node's wallet key.
    async fn mesh_wallet(&self) -> Result<PublicKey, DemoError> {
        let hex_key = self.mesh.status().await?.wallet;
        crate::config::parse_public_key("wallet", &hex_key)
            .map_err(|e| DemoError::Settlement(e.to_string()))
    }

    /// `self` pays `payee` over the mesh.
    async fn pay(&self, payee: &Device, amount: u64, memo: &str) -> Result<MeshPayment, DemoError> {
        let eur = Currency::new("EUR").unwrap_or_else(|| unreachable!("a valid code"));
        let invoice = payee.mesh.request(amount, eur, Some(memo.into())).await?;
        Ok(self.mesh.pay(invoice, payee.mesh.peer_id).await?)
    }
}

fn loopback() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))
}

/// Polls `check` until it holds, or gives up after [`PATIENCE`].
async fn wait_for<F, Fut>(what: &'static str, mut check: F) -> Result<(), DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, DemoError>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await? {
        if tokio::time::Instant::now() > deadline {
            return Err(DemoError::Stalled(what));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs the demo with its databases under `dir`: five nodes on loopback
/// libp2p in this process.
pub fn run(dir: &Path) -> Result<DemoReport, DemoError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?
        .block_on(story(dir))
}

async fn story(dir: &Path) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let mut rng = crate::os_rng().map_err(NodeError::from)?;
    let issuer = SecretKey::generate(&mut rng);
    let trust = TrustStore::new(issuer.public());
    let mut steps = Vec::new();
    let mut step = |what: String, outcome: String| {
        tracing::info!(%what, %outcome);
        steps.push(Step { what, outcome });
    };

    let open = |name: &str, key: SecretKey| {
        Node::open(name, &dir.join(format!("{name}.redb")), key, trust.clone())
    };
    let alice_key = SecretKey::generate(&mut rng);
    let alice = open("alice", alice_key.clone())?;
    let bob = open("bob-bar", SecretKey::generate(&mut rng))?;
    let carol = open("carol-shop", SecretKey::generate(&mut rng))?;
    let dave_key = SecretKey::generate(&mut rng);
    let mut dave = open("dave", dave_key.clone())?;

    // Online, before sailing: the settlement service (embedded here, on
    // loopback HTTP) holds the passengers' accounts; each wallet loads an
    // allowance with a request it signs, and the service escrows it.
    let kv: Box<dyn Kv> = Box::new(
        RedbKv::open(&dir.join("settlement.redb"))
            .map_err(|e| DemoError::Settlement(e.to_string()))?,
    );
    let service = Service::open(kv, issuer.clone(), SettlementConfig::default())
        .map_err(|e| DemoError::Settlement(e.to_string()))?;
    let app = http::AppState::new(service, None);
    let bound = http::serve(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        app.clone(),
        Duration::from_secs(3_600),
    )
    .await
    .map_err(|e| DemoError::Settlement(e.to_string()))?;
    let url = format!("http://{bound}");
    let (alice_wallet, dave_wallet) = (alice.public_key(), dave.public_key());
    app.with(move |s| {
        s.deposit(alice_wallet.into(), 15_000, "demo-till-1")?;
        s.deposit(dave_wallet.into(), 6_000, "demo-till-2")
    })
    .await
    .map_err(|e| DemoError::Settlement(e.to_string()))?;
    let alice_allowance = load(&url, issuer.public(), &alice_key, 10_000, &mut rng).await?;
    let dave_allowance = load(&url, issuer.public(), &dave_key, 5_000, &mut rng).await?;
    let dave_allowance_id = dave_allowance.id;
    let mut alice = alice;
    alice.add_allowance(alice_allowance.clone())?;
    dave.add_allowance(dave_allowance)?;
    step(
        format!("online: alice and dave load allowances from the settlement service at {url}"),
        "100.00 EUR and 50.00 EUR escrowed from their accounts (150.00 and 60.00 deposited); caps 50.00 per payment".into(),
    );

    // At sea: four devices on the ship's LAN, libp2p over loopback TCP.
    let alice = Device::start("alice", alice).await?;
    let bob = Device::start("bob-bar", bob).await?;
    let carol = Device::start("carol-shop", carol).await?;
    let dave = Device::start("dave", dave).await?;
    alice.link(&bob).await?;
    bob.link(&carol).await?;
    carol.link(&dave).await?;
    step(
        "at sea, no internet: four nodes on the ship LAN (libp2p, noise, yamux)".into(),
        "alice - bob-bar - carol-shop - dave".into(),
    );
    let o = alice.pay(&bob, 450, "coffee").await?;
    step(
        format!("alice pays bob-bar {} EUR", money(450)),
        outcome_text(&o),
    );
    let o = dave.pay(&carol, 1_200, "sunscreen").await?;
    step(
        format!("dave pays carol-shop {} EUR", money(1_200)),
        outcome_text(&o),
    );
    let lan = [&alice, &bob, &carol, &dave];
    wait_for("the ledgers to converge", || async {
        let mut digests = std::collections::BTreeSet::new();
        for d in lan {
            let s = d.mesh.status().await?;
            if s.ledger_entries < 4 {
                return Ok(false);
            }
            digests.insert(s.ledger_digest);
        }
        Ok(digests.len() == 1)
    })
    .await?;
    step(
        "the LAN gossips: every node syncs its partial ledger with its neighbours".into(),
        "all four ledgers equal".into(),
    );

    // The LAN splits: {alice, bob-bar} | {carol-shop, dave, mallory}.
    // Mallory holds a clone of alice's phone, restored from a backup taken
    // after the coffee: same key, same counter (sequence 1 used, 4.50 spent).
    bob.unlink(&carol).await?;
    let mut mallory = open("mallory (alice's clone)", alice_key.clone())?;
    mallory.add_allowance(alice_allowance.clone())?;
    let culprit = alice_allowance.id;
    mallory
        .store()
        .commit_spend(
            &culprit,
            SpendState {
                next_seq: 2,
                cumulative: 450,
            },
            None,
        )
        .map_err(NodeError::from)?;
    let mallory = Device::start("mallory (alice's clone)", mallory).await?;
    mallory.link(&carol).await?;
    step(
        "the ship LAN splits in two; a clone of alice's wallet appears on the other side".into(),
        "{alice, bob-bar} | {carol-shop, dave, mallory}".into(),
    );
    let o = alice.pay(&bob, 4_000, "dinner").await?;
    step(
        format!("alice pays bob-bar {} EUR", money(4_000)),
        outcome_text(&o),
    );
    let o = mallory.pay(&carol, 4_000, "watch").await?;
    step(
        format!(
            "mallory (the clone) pays carol-shop {} EUR with the same money",
            money(4_000)
        ),
        outcome_text(&o),
    );

    // The halves meet again; the proof spreads by gossip and sync.
    let healed = Instant::now();
    bob.link(&carol).await?;
    let everyone = [&alice, &bob, &carol, &dave, &mallory];
    wait_for("the conflict proof to reach every node", || async {
        for d in everyone {
            if d.mesh.status().await?.proofs == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    let spread_ms = healed.elapsed().as_millis();
    step(
        "the LAN heals: bob-bar and carol-shop reconnect and sync".into(),
        format!(
            "double spend caught: a conflict proof against alice's allowance reached all 5 nodes in {spread_ms} ms"
        ),
    );

    // The culprit tries again, anywhere.
    alice.link(&carol).await?;
    alice.link(&dave).await?;
    let mut refusals = Vec::new();
    for payee in [&bob, &carol, &dave] {
        let o = alice.pay(payee, 100, "snack").await?;
        refusals.push(o == MeshPayment::Refused(Rule::NoKnownConflict.name().into()));
        step(
            format!("alice tries to pay {} 1.00 EUR", payee.name),
            outcome_text(&o),
        );
    }
    let culprit_refused_everywhere = refusals.iter().all(|r| *r);

    // Back in port: bob-bar's link to shore comes up, and bob-bar becomes
    // the gateway. Every receipt in the mesh reaches settlement through it,
    // and the acknowledgement comes back to every node.
    let ashore = Instant::now();
    bob.mesh.set_settlement(Some(url.clone())).await?;
    wait_for(
        "every receipt to settle and every outbox to empty",
        || async {
            for d in everyone {
                let s = d.mesh.status().await?;
                if s.outbox > 0 || s.carried > 0 {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    let settle_ms = ashore.elapsed().as_millis();
    let names = [
        (alice_key.public(), "alice"),
        (bob.mesh_wallet().await?, "bob-bar"),
        (carol.mesh_wallet().await?, "carol-shop"),
        (dave_key.public(), "dave"),
    ];
    let name_of = move |k: &KeyBytes| {
        names
            .iter()
            .find(|(p, _)| KeyBytes::from(*p) == *k)
            .map_or("?", |(_, n)| *n)
    };
    let ids = [alice_allowance.id, dave_allowance_id];
    let receipts_settled = app
        .with(move |s| {
            let mut lines = Vec::new();
            for id in ids {
                if let Some(state) = s.allowance_state(&id)? {
                    for (_, claim) in state.claims() {
                        lines.push((claim.header().amount, claim.payee(), claim.outcome()));
                    }
                }
            }
            Ok(lines)
        })
        .await
        .map(|lines| {
            lines
                .iter()
                .map(|(amount, payee, outcome)| SettledReceipt {
                    payee: name_of(payee).to_string(),
                    amount: *amount,
                    outcome: outcome.map_or_else(|| "pending".into(), |o| format!("{o:?}")),
                })
                .collect::<Vec<_>>()
        })
        .map_err(|e| DemoError::Settlement(e.to_string()))?;
    step(
        "back in port: bob-bar reaches the settlement service and becomes the gateway".into(),
        format!(
            "every receipt in the mesh reached settlement through bob-bar and every node pruned its outbox in {settle_ms} ms; the fork was settled by transfer id, the other spend refused as conflicted"
        ),
    );

    // A week later the allowances expire; after the grace period the
    // unspent escrow goes back to the wallets.
    let later =
        crate::mesh::wall_clock().plus(7 * 86_400 + SettlementConfig::default().grace_secs + 60);
    let wallets: Vec<(String, PublicKey)> =
        names.iter().map(|(k, n)| (n.to_string(), *k)).collect();
    let (refunded, balances, total, deposits) = app
        .with(move |s| {
            let refunded: u64 = s.close_due(later)?.iter().map(|m| m.amount).sum();
            let mut balances = Vec::new();
            for (name, key) in &wallets {
                balances.push(WalletBalance {
                    name: name.clone(),
                    balance: s.balance(&Account::Wallet((*key).into()))?,
                });
            }
            Ok((refunded, balances, s.total()?, s.deposits()?))
        })
        .await
        .map_err(|e| DemoError::Settlement(e.to_string()))?;
    let conserved = total == deposits;
    step(
        "a week later the allowances expire; after the grace period settlement refunds the unspent escrow".into(),
        format!(
            "{} EUR refunded; money conserved: {} (balances and escrow {} = deposits {})",
            money(refunded),
            yes(conserved),
            money(u64::try_from(total).unwrap_or(0)),
            money(u64::try_from(deposits).unwrap_or(0))
        ),
    );
    let settlement = SettlementSummary {
        receipts: receipts_settled,
        balances,
        refunded,
        conserved,
    };

    // Let the last syncs settle, then stop every node.
    wait_for("the ledgers to converge", || async {
        let mut digests = std::collections::BTreeSet::new();
        for d in everyone {
            digests.insert(d.mesh.status().await?.ledger_digest);
        }
        Ok(digests.len() == 1)
    })
    .await?;
    let mut nodes = Vec::new();
    let mut proof_everywhere = true;
    for d in [alice, bob, carol, dave, mallory] {
        let status = d.mesh.status().await?;
        let history = d.mesh.history().await?;
        proof_everywhere &= status.proofs > 0;
        nodes.push(NodeSummary {
            name: d.name.to_string(),
            paid: history.iter().filter(|h| h.role == "paid").count(),
            received: history.iter().filter(|h| h.role == "received").count(),
            ledger_entries: status.ledger_entries,
            proofs: status.proofs,
            digest: status.ledger_digest[..16].to_string(),
        });
        d.mesh.stop().await;
        let _ = d.task.await;
    }
    Ok(DemoReport {
        steps,
        nodes,
        proof_everywhere,
        culprit_refused_everywhere,
        settlement,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The report for people.
pub fn render(report: &DemoReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "meshpay demo: offline payments, a double spend, and the mesh catching it\n"
    );
    for (i, s) in report.steps.iter().enumerate() {
        let _ = writeln!(out, "{:>2}. {}\n    -> {}", i + 1, s.what, s.outcome);
    }
    let _ = writeln!(
        out,
        "\n{:<26} {:>5} {:>9} {:>8} {:>7}  ledger digest",
        "node", "paid", "received", "ledger", "proofs"
    );
    for n in &report.nodes {
        let _ = writeln!(
            out,
            "{:<26} {:>5} {:>9} {:>8} {:>7}  {}",
            n.name, n.paid, n.received, n.ledger_entries, n.proofs, n.digest
        );
    }
    let _ = writeln!(
        out,
        "\nconflict proof at every node: {}; culprit refused by every payee: {}; {} ms",
        yes(report.proof_everywhere),
        yes(report.culprit_refused_everywhere),
        report.elapsed_ms
    );
    let _ = writeln!(out, "\nat settlement:");
    for r in &report.settlement.receipts {
        let _ = writeln!(
            out,
            "  {:>7} EUR to {:<11} {}",
            money(r.amount),
            r.payee,
            r.outcome
        );
    }
    let balances: Vec<String> = report
        .settlement
        .balances
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b.name,
                money(u64::try_from(b.balance).unwrap_or(0))
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "online balances after refunds ({} EUR refunded): {}\nmoney conserved (balances + escrow = deposits): {}",
        money(report.settlement.refunded),
        balances.join(", "),
        yes(report.settlement.conserved)
    );
    out
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}
