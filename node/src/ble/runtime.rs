//! The BLE transport of a running node, beside the libp2p mesh: it
//! advertises the node's state, syncs with the nodes the
//! [`ConnectionPolicy`] picks, serves a pending invoice to a payer that
//! connects, and pays the nearest payee when asked (a tap).
//!
//! The mesh owns the node; every exchange runs on it through
//! [`MeshHandle::with_node`], one at a time, so the two transports share
//! one ledger, one store and one set of open invoices. Only the radio
//! differs between a Bluetooth adapter (the `ble` feature) and the
//! emulated air ([`super::air`]): both implement [`Radio`] and report
//! what they hear and who connects as [`RadioEvent`]s.
//!
//! Every connection is encrypted ([`super::secure`]); the connecting side
//! names its [`Intent`] in the key exchange's first message: pay (the
//! payee answers with its invoice, the payment handshake runs, then a
//! sync) or sync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use meshpay_proto::prelude::*;
use meshpay_proto::sync::SyncConfig;
use tokio::sync::oneshot;

use super::advert::{AdvertFlags, Advertisement};
use super::framing::FramingConfig;
use super::policy::{ConnectionPolicy, Decision, OwnState, PolicyConfig};
use super::secure::{SecureError, SecureLink};
use super::{ChannelPort, FramedLink, short_id};
use crate::exchange::{
    self, Channel, Conversation, Ended, ExchangeError, Expected, Intent, PayeeSide, PayerSide,
    Side, SyncSide,
};
use crate::mesh::{MeshError, MeshHandle, MeshPayment, NodeAccess, wall_clock};
use crate::transport::{Link, Wait};

/// Link time a payment may take, from the connection to the receipt.
const PAY_LIMIT_MS: u64 = 10_000;
/// Link time one sync may take (the mesh waits meanwhile).
const SYNC_LIMIT_MS: u64 = 30_000;
/// How long each side waits for the other's key-exchange messages.
const OPEN_WAIT_MS: u64 = 3_000;
/// How long a nearby payment looks for a payee advertising an invoice.
const PAYEE_WAIT: Duration = Duration::from_secs(5);
/// A node not heard for this long is out of range.
const HEARD_FRESH: Duration = Duration::from_secs(3);
/// How long a nearby payment listens before it picks the nearest payee:
/// several advertising intervals, so that every payee in range is heard
/// with its current state, not only the first.
const TAP_LISTEN: Duration = Duration::from_secs(1);
/// How often the node's own advertisement is brought up to date.
const REFRESH: Duration = Duration::from_millis(300);
/// Most link threads alive at once (admitted links are capped lower by the
/// policy; this bounds connections turned away or waiting to say what they
/// want, against a flood).
const MAX_LINK_THREADS: usize = 16;
/// After a clean exchange with a node, its advertisements are left alone
/// this long (the ones already in flight predate the exchange).
const QUIET: Duration = Duration::from_secs(2);

/// A connection opened by either role, ready for an exchange.
#[derive(Debug)]
pub struct IncomingLink {
    /// The peer, for logs (short id or Bluetooth address).
    pub peer: String,
    /// Its short id when known.
    pub node: Option<[u8; 4]>,
    /// The packets.
    pub port: ChannelPort,
    /// The ATT MTU.
    pub mtu: u16,
}

/// What a radio reports.
#[derive(Debug)]
pub enum RadioEvent {
    /// A meshpay advertisement heard at `rssi` dBm.
    Heard {
        /// What it says.
        advert: Advertisement,
        /// Received signal strength, dBm.
        rssi: i16,
    },
    /// A central connected to this node (the peripheral role).
    Incoming(IncomingLink),
}

/// Why the radio could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RadioError(pub String);

/// The radio layer: a Bluetooth adapter, or the emulated air. What it
/// hears and who connects to it arrive as [`RadioEvent`]s on the
/// [`BleHandle`] it was given.
pub trait Radio {
    /// Advertises `advert` from now on, in place of the previous one.
    fn advertise(&mut self, advert: &Advertisement) -> Result<(), RadioError>;
    /// Connects to the node advertising short id `node` (the central role).
    fn connect(&mut self, node: [u8; 4]) -> Result<IncomingLink, RadioError>;
}

#[derive(Debug)]
enum Event {
    Radio(RadioEvent),
    PayNearby {
        amount: u64,
        currency: Currency,
        reply: oneshot::Sender<Result<MeshPayment, MeshError>>,
    },
    /// A link's thread ended.
    Closed {
        node: Option<[u8; 4]>,
        clean: bool,
    },
}

/// Feeds a running BLE transport: radio events, and nearby payments from
/// the mesh (the control API asks the mesh); reads what it hears.
#[derive(Debug, Clone)]
pub struct BleHandle {
    tx: mpsc::Sender<Event>,
    status: Arc<Mutex<BleStatus>>,
}

/// What the BLE transport sees, for `meshpay status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BleStatus {
    /// This node's advertisement: short id (hex).
    pub node: String,
    /// Whether it advertises an invoice now.
    pub advertising_invoice: bool,
    /// Links open now.
    pub links: usize,
    /// Nodes heard in the last few seconds, nearest first.
    pub heard: Vec<HeardNode>,
}

/// A node heard advertising.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeardNode {
    /// Its short id (hex).
    pub node: String,
    /// Received signal strength, dBm.
    pub rssi: i16,
    /// It advertises an invoice.
    pub invoice: bool,
    /// Its ledger digest's first 4 bytes (hex).
    pub digest: String,
}

/// The transport's end of [`channel`].
#[derive(Debug)]
pub struct BleEvents {
    rx: mpsc::Receiver<Event>,
}

impl BleEvents {
    /// The next radio event within `timeout` (tests of a radio).
    #[cfg(test)]
    pub(crate) fn next(&self, timeout: Duration) -> Option<RadioEvent> {
        match self.rx.recv_timeout(timeout).ok()? {
            Event::Radio(e) => Some(e),
            Event::PayNearby { .. } | Event::Closed { .. } => None,
        }
    }
}

/// A handle and the events it feeds.
pub fn channel() -> (BleHandle, BleEvents) {
    let (tx, rx) = mpsc::channel();
    let status = Arc::default();
    (BleHandle { tx, status }, BleEvents { rx })
}

impl BleHandle {
    /// What the transport sees now.
    pub fn status(&self) -> BleStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reports a radio event; `false` once the transport has stopped.
    pub fn report(&self, event: RadioEvent) -> bool {
        self.tx.send(Event::Radio(event)).is_ok()
    }

    /// Asks the transport to pay the nearest payee; the outcome goes to
    /// `reply`.
    pub(crate) fn pay_nearby(
        &self,
        amount: u64,
        currency: Currency,
        reply: oneshot::Sender<Result<MeshPayment, MeshError>>,
    ) {
        let event = Event::PayNearby {
            amount,
            currency,
            reply,
        };
        if let Err(mpsc::SendError(Event::PayNearby { reply, .. })) = self.tx.send(event) {
            let _ = reply.send(Err(MeshError::Ble("the BLE transport has stopped".into())));
        }
    }
}

struct Heard {
    advert: Advertisement,
    rssi: i16,
    at: Instant,
}

struct PendingPay {
    amount: u64,
    currency: Currency,
    reply: oneshot::Sender<Result<MeshPayment, MeshError>>,
    since: Instant,
}

/// The node's advertisement, from its state.
fn advert_of(access: &NodeAccess<'_>) -> Advertisement {
    let ledger = access.node.ledger();
    let mut digest = [0u8; 4];
    digest.copy_from_slice(&ledger.digest().as_bytes()[..4]);
    Advertisement {
        node: short_id(&access.node.public_key()),
        digest,
        flags: AdvertFlags {
            urgent: !ledger.proofs().is_empty(),
            gateway: access.is_gateway(),
            invoice: access.invoice_pending(),
        },
        tx_power: 0,
    }
}

/// A BLE message link.
type BleLink = SecureLink<FramedLink<ChannelPort>>;

/// A conversation and its link, shared between a link's thread and the
/// mesh's jobs (used by one at a time).
type Shared<C> = Arc<Mutex<Option<(C, BleLink)>>>;

fn poisoned() -> MeshError {
    MeshError::Ble("internal state poisoned".into())
}

/// Runs `conversation` over `link` against the mesh's node until it is
/// done and flushed, or `limit_ms` of link time passed: each step that
/// needs the node is one job on the mesh; waiting for the peer happens
/// on this thread, so the mesh and other links go on meanwhile. Returns
/// the conversation and the link back, with how the exchange ended.
fn converse<C: Conversation + Send + 'static>(
    mesh: &MeshHandle,
    conversation: C,
    link: BleLink,
    limit_ms: u64,
) -> Result<(C, BleLink, Result<Ended, ExchangeError>), MeshError> {
    let shared: Shared<C> = Arc::new(Mutex::new(Some((conversation, link))));
    let ended = converse_shared(mesh, &shared, limit_ms)?;
    let (conversation, link) = shared
        .lock()
        .map_err(|_| poisoned())?
        .take()
        .ok_or_else(poisoned)?;
    Ok((conversation, link, ended))
}

fn converse_shared<C: Conversation + Send + 'static>(
    mesh: &MeshHandle,
    shared: &Shared<C>,
    limit_ms: u64,
) -> Result<Result<Ended, ExchangeError>, MeshError> {
    let now_us = |s: &Shared<C>| -> Result<u64, MeshError> {
        let guard = s.lock().map_err(|_| poisoned())?;
        Ok(guard.as_ref().ok_or_else(poisoned)?.1.now_us())
    };
    let limit_us = now_us(shared)?.saturating_add(limit_ms.saturating_mul(1000));
    loop {
        let s = shared.clone();
        let (moved, done, flushed, timer) = mesh.with_node(move |a| {
            let mut guard = s.lock().map_err(|_| poisoned())?;
            let (conversation, link) = guard.as_mut().ok_or_else(poisoned)?;
            let moved = exchange::step(&mut Side {
                node: &mut *a.node,
                conversation,
                link,
            });
            Ok::<_, MeshError>((
                moved,
                conversation.is_done(),
                link.is_flushed(),
                conversation.poll_timeout(),
            ))
        })??;
        let moved = match moved {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        if done && flushed {
            return Ok(Ok(Ended::Finished));
        }
        if moved {
            continue;
        }
        let mut guard = shared.lock().map_err(|_| poisoned())?;
        let (_, link) = guard.as_mut().ok_or_else(poisoned)?;
        if link.now_us() >= limit_us {
            return Ok(Err(ExchangeError::TimedOut(limit_ms)));
        }
        let timer = if done { None } else { timer };
        let deadline = timer
            .map_or(limit_us, |t| t.0.saturating_mul(1000))
            .min(limit_us);
        match link.wait(Some(deadline)) {
            Ok(Wait::Idle) => return Ok(Ok(Ended::Stalled)),
            Ok(_) => {}
            Err(e) => return Ok(Err(e.into())),
        }
    }
}

/// A sync session over `link`, reported in one line; the ledger is saved
/// after. Returns the link back and whether the sync finished.
fn sync_over(
    mesh: &MeshHandle,
    link: BleLink,
    peer: &str,
    mtu: u16,
) -> Result<(BleLink, bool), MeshError> {
    let now = Millis(link.now_us() / 1000);
    let side = mesh.with_node(move |a| {
        // Into the epoch of the clock first, as the LAN mesh does; no
        // session while the rotated ledger is not stored.
        if let Err(e) = a.node.advance_epoch(crate::mesh::wall_clock()) {
            tracing::error!(error = %e, "could not store the rotated ledger; no sync until it is");
            return None;
        }
        Some(SyncSide::new(a.node, SyncConfig::default(), now))
    })?;
    let Some(side) = side else {
        return Ok((link, false));
    };
    let (side, link, ended) = converse(mesh, side, link, SYNC_LIMIT_MS)?;
    let summary = mesh.with_node(|a| {
        if let Err(e) = a.node.persist_ledger() {
            tracing::error!(error = %e, "could not persist the ledger");
        }
        let ledger = a.node.ledger();
        (ledger.len(), hex::encode(&ledger.digest().as_bytes()[..4]))
    })?;
    let stats = side.stats();
    match ended {
        Ok(_) => {
            eprintln!(
                "ble: synced with {peer} at MTU {mtu}: sent {} B, received {} B; ledger {} entries, digest {}",
                stats.bytes_sent, stats.bytes_received, summary.0, summary.1
            );
            Ok((link, true))
        }
        Err(e) => {
            eprintln!("ble: sync with {peer} ended early: {e}");
            Ok((link, false))
        }
    }
}

/// The payee's side: sends the pending invoice, runs the handshake, gives
/// the invoice back to the mesh, syncs after a payment. Whether all of it
/// finished.
fn serve_payment(
    mesh: &MeshHandle,
    mut link: BleLink,
    peer: &str,
    mtu: u16,
) -> Result<bool, MeshError> {
    let Some(session) = mesh.with_node(|a| a.take_invoice())? else {
        eprintln!("ble: {peer} wants to pay, but no invoice is pending");
        return Ok(false);
    };
    let mut message = vec![Channel::Payment as u8];
    message.extend_from_slice(&PaymentMessage::Invoice(session.invoice().clone()).encode());
    let side = PayeeSide::new(session, wall_clock());
    let sent = link.send(&message);
    let (side, link, ended) = converse(mesh, side, link, PAY_LIMIT_MS)?;
    let receipt = match side.state() {
        PayeeState::Acknowledged(r) => Some(r.transfer.id()),
        _ => None,
    };
    let refused: Vec<String> = side.refused().iter().map(|e| e.to_string()).collect();
    let session = side.into_session();
    mesh.with_node(move |a| a.return_invoice(session))?;
    match (receipt, sent.map_err(ExchangeError::from).and(ended)) {
        (Some(id), _) => {
            eprintln!("ble: received payment from {peer}: transfer {id}");
            Ok(sync_over(mesh, link, peer, mtu)?.1)
        }
        (None, Err(e)) => {
            eprintln!("ble: payment from {peer} did not complete: {e}");
            Ok(false)
        }
        (None, Ok(_)) => {
            eprintln!("ble: payment from {peer} refused: {}", refused.join("; "));
            Ok(true)
        }
    }
}

/// The payer's side: the expected invoice only; returns the outcome and,
/// after a payment, the link for the sync that follows. `began` is when
/// the connection was handed over (for the log).
fn pay_over(
    mesh: &MeshHandle,
    link: BleLink,
    expected: Expected,
    peer: &str,
    mtu: u16,
    began: Instant,
) -> Result<(MeshPayment, Option<BleLink>), MeshError> {
    let config = PayerConfig {
        send_allowance: true,
        ..PayerConfig::default()
    };
    let session = mesh.with_node(move |a| {
        a.node
            .start_payment(expected.amount, wall_clock(), config)
            .map_err(MeshError::from)
    })??;
    let side = PayerSide::expecting(session, expected);
    let (side, link, ended) = converse(mesh, side, link, PAY_LIMIT_MS)?;
    let took = began.elapsed();
    let outcome = match side.state() {
        PayerState::Paid(r) => MeshPayment::Paid(r.transfer.id().to_string()),
        PayerState::Rejected { rule, .. } => MeshPayment::Refused(rule.name().into()),
        PayerState::Refused(e) => MeshPayment::PayerRefused(e.to_string()),
        PayerState::Declined => {
            MeshPayment::PayerRefused(side.declined().unwrap_or("declined").to_string())
        }
        PayerState::AwaitingInvoice | PayerState::AwaitingConfirmation(_) => {
            let why = ended
                .err()
                .map_or_else(|| "no invoice".into(), |e| e.to_string());
            return Err(MeshError::Ble(format!(
                "payee {peer} sent no invoice ({why}); nothing was signed"
            )));
        }
        _ => MeshPayment::Uncertain,
    };
    eprintln!(
        "ble: payment to {peer} at MTU {mtu}: {outcome:?}, {:.1} ms from connection (key exchange included) to receipt",
        took.as_secs_f64() * 1e3
    );
    // After a payment the two sync on the same link; the caller answers
    // the user first.
    let link = matches!(outcome, MeshPayment::Paid(_)).then_some(link);
    Ok((outcome, link))
}

/// Signs a key exchange's transcript with the node's wallet key.
fn signer(mesh: &MeshHandle) -> impl FnOnce(&[u8]) -> Result<Signature, SecureError> + '_ {
    move |part| {
        let part = part.to_vec();
        mesh.with_node(move |a| a.node.sign_link(&part))
            .map_err(|e| SecureError::Unavailable(e.to_string()))
    }
}

/// Frames `port` and runs the key exchange as the connecting side, with
/// the node `expect` (its short id) on the other end, for `intent`.
fn connect_secure(
    mesh: &MeshHandle,
    me: &PublicKey,
    port: ChannelPort,
    mtu: u16,
    expect: [u8; 4],
    intent: Intent,
) -> Result<BleLink, SecureError> {
    let framed = FramedLink::new(port, FramingConfig::with_mtu(mtu));
    SecureLink::connect(
        framed,
        me,
        Some(expect),
        intent as u8,
        signer(mesh),
        OPEN_WAIT_MS,
    )
}

/// Frames `port` and runs the key exchange as the side connected to;
/// returns the link and what the peer wants. A peer that claimed a short
/// id (the emulated air's hello) must name the wallet key it belongs to
/// (and proves it holds it before anything it sends is opened).
fn accept_secure(
    mesh: &MeshHandle,
    me: &PublicKey,
    port: ChannelPort,
    mtu: u16,
    claimed: Option<[u8; 4]>,
) -> Result<(BleLink, Option<Intent>), SecureError> {
    let framed = FramedLink::new(port, FramingConfig::with_mtu(mtu));
    let (link, purpose) = SecureLink::accept(framed, me, signer(mesh), OPEN_WAIT_MS)?;
    match claimed {
        Some(id) if short_id(link.peer()) != id => Err(SecureError::WrongPeer {
            found: hex::encode(short_id(link.peer())),
        }),
        _ => Ok((link, Intent::from_byte(purpose))),
    }
}

/// The transport's state.
struct Transport<R> {
    radio: R,
    mesh: MeshHandle,
    events: BleHandle,
    policy: ConnectionPolicy,
    heard: HashMap<[u8; 4], Heard>,
    quiet: HashMap<[u8; 4], Instant>,
    advert: Option<Advertisement>,
    pay: Option<PendingPay>,
    started: Instant,
    /// The node's wallet key.
    me: PublicKey,
    /// Link threads alive.
    threads: Arc<AtomicUsize>,
}

/// Runs the BLE transport of the node the mesh behind `mesh` owns, on
/// `radio`, until the mesh stops. `handle` is the handle `events` belong
/// to (each link's thread reports its end through it).
pub fn run<R: Radio>(
    radio: R,
    mesh: MeshHandle,
    handle: BleHandle,
    events: BleEvents,
    policy: PolicyConfig,
) -> Result<(), MeshError> {
    let me = match mesh.with_node(|a| a.node.public_key()) {
        Err(MeshError::Stopped) => return Ok(()),
        r => r?,
    };
    let mut t = Transport {
        me,
        radio,
        mesh,
        events: handle,
        policy: ConnectionPolicy::new(policy),
        heard: HashMap::new(),
        quiet: HashMap::new(),
        advert: None,
        pay: None,
        started: Instant::now(),
        threads: Arc::new(AtomicUsize::new(0)),
    };
    let mut refreshed = Instant::now();
    match t.refresh() {
        Err(MeshError::Stopped) => return Ok(()),
        r => r?,
    }
    if let Some(a) = &t.advert {
        eprintln!(
            "ble: node {} advertising, ledger digest {}; scanning",
            hex::encode(a.node),
            hex::encode(a.digest)
        );
    }
    loop {
        let step = if refreshed.elapsed() >= REFRESH {
            refreshed = Instant::now();
            t.refresh()
        } else {
            Ok(())
        };
        let step = step.and_then(|()| match events.rx.recv_timeout(REFRESH) {
            Ok(Event::Radio(RadioEvent::Heard { advert, rssi })) => t.heard(advert, rssi),
            Ok(Event::Radio(RadioEvent::Incoming(link))) => {
                t.incoming(link);
                Ok(())
            }
            Ok(Event::Closed { node, clean }) => {
                if let Some(node) = node {
                    t.closed(node, clean);
                }
                Ok(())
            }
            Ok(Event::PayNearby {
                amount,
                currency,
                reply,
            }) => {
                let new = PendingPay {
                    amount,
                    currency,
                    reply,
                    since: Instant::now(),
                };
                if let Some(old) = t.pay.replace(new) {
                    let _ = old.reply.send(Err(MeshError::Ble(
                        "a newer nearby payment took its place; nothing was signed".into(),
                    )));
                }
                Ok(())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(MeshError::Stopped),
        });
        t.try_pay();
        match step {
            Ok(()) => {}
            Err(MeshError::Stopped) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

impl<R: Radio> Transport<R> {
    /// Runs `work` for one link on a thread of its own; tells the
    /// transport when the link closes (and whether cleanly) if `node` is
    /// known.
    fn on_thread(
        &self,
        node: Option<[u8; 4]>,
        work: impl FnOnce() -> Result<bool, MeshError> + Send + 'static,
    ) {
        let events = self.events.clone();
        let threads = self.threads.clone();
        threads.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("ble-link".into())
            .spawn(move || {
                let clean = match work() {
                    Ok(clean) => clean,
                    Err(e) => {
                        tracing::debug!(error = %e, "BLE link ended");
                        false
                    }
                };
                threads.fetch_sub(1, Ordering::SeqCst);
                let _ = events.tx.send(Event::Closed { node, clean });
            });
        if let Err(e) = spawned {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(error = %e, "could not start a thread for a BLE link");
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Brings the advertisement up to date with the node, and the status
    /// with what was heard.
    fn refresh(&mut self) -> Result<(), MeshError> {
        let advert = self.mesh.with_node(|a| advert_of(a))?;
        if self.advert != Some(advert) {
            match self.radio.advertise(&advert) {
                Ok(()) => self.advert = Some(advert),
                Err(e) => tracing::warn!(error = %e, "could not advertise"),
            }
        }
        self.heard.retain(|_, h| h.at.elapsed() < HEARD_FRESH);
        let mut heard: Vec<&Heard> = self.heard.values().collect();
        heard.sort_by_key(|h| h.advert.path_loss(h.rssi));
        let status = BleStatus {
            node: hex::encode(advert.node),
            advertising_invoice: advert.flags.invoice,
            links: self.policy.links(),
            heard: heard
                .into_iter()
                .map(|h| HeardNode {
                    node: hex::encode(h.advert.node),
                    rssi: h.rssi,
                    invoice: h.advert.flags.invoice,
                    digest: hex::encode(h.advert.digest),
                })
                .collect(),
        };
        if let Ok(mut s) = self.events.status.lock() {
            *s = status;
        }
        Ok(())
    }

    fn own(&self) -> Option<OwnState> {
        self.advert.map(|a| OwnState {
            node: a.node,
            digest: a.digest,
            urgent: a.flags.urgent,
            paying: self.pay.is_some(),
        })
    }

    fn closed(&mut self, node: [u8; 4], clean: bool) {
        let now = self.now_ms();
        self.policy.closed(node, clean, now);
        if clean {
            self.quiet.insert(node, Instant::now());
        }
    }

    /// An advertisement heard: remembered (for a tap), and a sync started
    /// if the policy says so.
    fn heard(&mut self, advert: Advertisement, rssi: i16) -> Result<(), MeshError> {
        let Some(own) = self.own() else {
            return Ok(());
        };
        if advert.node == own.node {
            return Ok(());
        }
        self.heard.insert(
            advert.node,
            Heard {
                advert,
                rssi,
                at: Instant::now(),
            },
        );
        if self.pay.is_some()
            || self
                .quiet
                .get(&advert.node)
                .is_some_and(|t| t.elapsed() < QUIET)
        {
            return Ok(());
        }
        match self.policy.decide(&own, &advert, rssi, self.now_ms()) {
            Decision::Connect if self.policy.admit(advert.node) => {}
            Decision::Connect => return Ok(()),
            Decision::Skip(why) => {
                tracing::trace!(node = %hex::encode(advert.node), ?why, "not connecting");
                return Ok(());
            }
        }
        match self.radio.connect(advert.node) {
            Ok(link) => {
                let (mesh, me) = (self.mesh.clone(), self.me);
                self.on_thread(Some(advert.node), move || {
                    let (peer, mtu) = (link.peer, link.mtu);
                    let Ok(link) =
                        connect_secure(&mesh, &me, link.port, mtu, advert.node, Intent::Sync)
                            .inspect_err(|e| eprintln!("ble: no secure link to {peer}: {e}"))
                    else {
                        return Ok(false);
                    };
                    Ok(sync_over(&mesh, link, &peer, mtu)?.1)
                });
            }
            Err(e) => {
                tracing::info!(node = %hex::encode(advert.node), error = %e, "connection failed; backing off");
                self.closed(advert.node, false);
            }
        }
        Ok(())
    }

    /// A central connected. A node already linked is turned away for a
    /// sync (one link per pair) but served when it comes to pay.
    fn incoming(&mut self, link: IncomingLink) {
        if self.threads.load(Ordering::SeqCst) >= MAX_LINK_THREADS {
            tracing::debug!(peer = %link.peer, "too many links; connection turned away");
            return;
        }
        let admitted = link.node.is_some_and(|n| self.policy.admit(n));
        let IncomingLink {
            peer,
            node,
            port,
            mtu,
        } = link;
        let (mesh, me) = (self.mesh.clone(), self.me);
        self.on_thread(node.filter(|_| admitted), move || {
            let Ok((link, intent)) = accept_secure(&mesh, &me, port, mtu, node)
                .inspect_err(|e| eprintln!("ble: no secure link with {peer}: {e}"))
            else {
                return Ok(false);
            };
            match intent {
                Some(Intent::Sync) if admitted || node.is_none() => {
                    Ok(sync_over(&mesh, link, &peer, mtu)?.1)
                }
                Some(Intent::Pay) => serve_payment(&mesh, link, &peer, mtu),
                Some(Intent::Sync) => {
                    tracing::debug!(%peer, "second link to a node turned away");
                    Ok(false)
                }
                None => Ok(false),
            }
        });
    }

    /// Pays the nearest payee advertising an invoice, once one is heard
    /// and no other link to it is open; gives up after [`PAYEE_WAIT`].
    fn try_pay(&mut self) {
        let Some(pending) = &self.pay else {
            return;
        };
        if pending.since.elapsed() < TAP_LISTEN {
            return;
        }
        // In range now: heard lately (after TAP_LISTEN, with the state
        // each payee advertises now).
        let fresh = self
            .heard
            .values()
            .filter(|h| h.at.elapsed() < HEARD_FRESH)
            .map(|h| (&h.advert, h.rssi));
        let target = self.policy.nearest_payee(fresh).copied();
        let ready = target.filter(|t| self.policy.admit(t.node));
        let Some(target) = ready else {
            if pending.since.elapsed() >= PAYEE_WAIT
                && let Some(p) = self.pay.take()
            {
                let why = match target {
                    Some(t) => format!("payee {} stayed busy", hex::encode(t.node)),
                    None => "no payee nearby advertises an invoice".into(),
                };
                let _ = p.reply.send(Err(MeshError::Ble(format!(
                    "{why} (looked for {} s); nothing was signed",
                    PAYEE_WAIT.as_secs()
                ))));
            }
            return;
        };
        let Some(p) = self.pay.take() else {
            return;
        };
        let link = match self.radio.connect(target.node) {
            Ok(link) => link,
            Err(e) => {
                self.closed(target.node, false);
                let _ = p.reply.send(Err(MeshError::Ble(format!(
                    "could not connect to payee {}: {e}; nothing was signed",
                    hex::encode(target.node)
                ))));
                return;
            }
        };
        let (mesh, me) = (self.mesh.clone(), self.me);
        self.on_thread(Some(target.node), move || {
            let (peer, mtu, began) = (link.peer, link.mtu, Instant::now());
            let outcome = match connect_secure(&mesh, &me, link.port, mtu, target.node, Intent::Pay)
            {
                Err(e) => Err(MeshError::Ble(format!(
                    "no secure link to payee {peer}: {e}; nothing was signed"
                ))),
                Ok(link) => {
                    // The invoice must name the wallet key the link
                    // authenticated.
                    let expected = Expected {
                        amount: p.amount,
                        currency: p.currency,
                        payee: *link.peer(),
                    };
                    pay_over(&mesh, link, expected, &peer, mtu, began)
                }
            };
            let (outcome, link) = match outcome {
                Ok((o, link)) => (Ok(o), link),
                Err(e) => (Err(e), None),
            };
            // A payment refused or declined still used the link cleanly.
            let completed = outcome.is_ok();
            let _ = p.reply.send(outcome);
            match link {
                Some(link) => Ok(sync_over(&mesh, link, &peer, mtu)?.1),
                None => Ok(completed),
            }
        });
    }
}
