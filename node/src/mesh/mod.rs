//! The local mesh over libp2p: TCP with noise and yamux, discovery by
//! mDNS and static peers, identify, and one request-response protocol
//! (`/meshpay/1`) that carries payment messages and sync-session frames.
//!
//! A [`Mesh`] owns a [`Node`] and its swarm and runs on one task; callers
//! drive it through a [`MeshHandle`] (the control API and the CLI do).
//! Sync runs on every new connection and every `sync_interval`.

mod api;
mod limits;
pub mod relay;
mod wire;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identify, mdns, noise, tcp, yamux,
};
use meshpay_proto::ledger::{AutomergeReplica, Entry, Replica};
use meshpay_proto::prelude::*;
use meshpay_proto::sync::{SyncConfig, SyncSession};

/// What a sync session remembers about a peer.
type PeerState = <AutomergeReplica as Replica>::PeerState;
use tokio::sync::{mpsc, oneshot};

use api::Command;
pub use api::{
    ExportedHeader, ExportedProof, HistoryEntry, LedgerExport, MeshConfig, MeshError, MeshHandle,
    MeshPayment, Status,
};
pub use limits::{PeerLimits, RateLimiter, Verdict};
pub use wire::{MAX_WIRE_MESSAGE, MeshRequest, MeshResponse, PROTOCOL, WireCodec};

use crate::node::{Node, NodeError};
use crate::store::Role;

/// Most request rounds this node spends on one sync session it started;
/// below the responder's cap (`SyncConfig::max_rounds`), so an honest
/// session between busy nodes ends here and starts afresh at the next
/// tick instead of tripping the peer's hostile-peer cap.
const MAX_SYNC_ROUNDS: u32 = 24;

#[derive(NetworkBehaviour)]
struct Behaviour {
    rr: request_response::Behaviour<WireCodec>,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    /// Pushes conflict proofs and revocations to every peer as soon as
    /// they are learnt, between syncs.
    urgent: gossipsub::Behaviour,
}

/// The gossipsub topic of urgent entries.
const URGENT_TOPIC: &str = "meshpay/urgent/1";

/// gossipsub for meshes of two to a few dozen peers: publish to every
/// known subscriber (flood), keep a mesh of even one peer, and check
/// every message's signature.
fn urgent_behaviour(key: &libp2p::identity::Keypair) -> Result<gossipsub::Behaviour, String> {
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .mesh_n_low(1)
        .mesh_n(3)
        .mesh_n_high(6)
        .mesh_outbound_min(0)
        .flood_publish(true)
        .max_transmit_size(256 * 1024)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .build()
        .map_err(|e| e.to_string())?;
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
        .map_err(str::to_string)
}

/// A sync session this node started, waiting for the peer's answer.
struct Outgoing {
    session: SyncSession,
    rounds: u32,
}

struct PendingPayment {
    session: PayerSession,
    reply: oneshot::Sender<Result<MeshPayment, MeshError>>,
}

/// A node on the mesh.
pub struct Mesh {
    node: Node,
    swarm: Swarm<Behaviour>,
    config: MeshConfig,
    started: tokio::time::Instant,
    /// Sessions this node started, by peer.
    initiated: HashMap<PeerId, Outgoing>,
    /// Sessions peers started, by peer.
    answering: HashMap<PeerId, SyncSession>,
    sync_requests: HashMap<OutboundRequestId, PeerId>,
    invoices: HashMap<Nonce, PayeeSession>,
    payments: HashMap<OutboundRequestId, PendingPayment>,
    syncs_completed: u64,
    commands: mpsc::Receiver<Command>,
    /// Payments waiting for a connection to their payee: nothing is signed
    /// until the payee is reachable.
    waiting: Vec<WaitingPayment>,
    /// What each connected peer may still ask.
    limiter: RateLimiter,
    /// Outbox receipts already handed to each connected peer.
    handed: HashMap<PeerId, HashSet<Hash>>,
    /// This ledger's urgent digest when the last session with each peer
    /// ended agreed: while it is unchanged, the peer holds every proof and
    /// the revocation list, and sessions leave out the `Urgent` message.
    agreed_urgent: HashMap<PeerId, Hash>,
    /// Peers cut off by [`MeshHandle::disconnect`] until dialled again: a
    /// connection with them, in either direction, is closed at once.
    blocked: HashSet<PeerId>,
    /// A trip to settlement is under way.
    uplink_busy: bool,
    /// Successful trips to settlement.
    uplinks: u64,
    /// To post results of background work back to this task.
    own: mpsc::Sender<Command>,
}

struct WaitingPayment {
    invoice: Invoice,
    peer: PeerId,
    since: Millis,
    reply: oneshot::Sender<Result<MeshPayment, MeshError>>,
}

/// One outbox item: a sealed receipt, this node's own or a carried copy.
struct OutboxItem {
    id: TransferId,
    bytes: Vec<u8>,
    carried: bool,
}

impl OutboxItem {
    /// What "already handed to this peer" is keyed by: the transfer for
    /// this node's own receipts (sealed afresh each time), the copy for
    /// carried ones (several copies of one transfer may be carried).
    fn handed_key(&self) -> Hash {
        if self.carried {
            Hash::tagged(b"meshpay/v1/carried-copy", &self.bytes)
        } else {
            Hash(*self.id.as_bytes())
        }
    }
}

/// How long a payment waits for its payee to become reachable.
const CONNECT_WAIT_MS: u64 = 5_000;

impl Mesh {
    /// Starts listening and dialing; returns the mesh (run it with
    /// [`Mesh::run`]) and a handle to drive it.
    pub fn start(node: Node, config: MeshConfig) -> Result<(Mesh, MeshHandle), MeshError> {
        let net = |e: &dyn std::fmt::Display| MeshError::Network(e.to_string());
        let mut seed = node.store().p2p_seed().map_err(NodeError::from)?;
        let keypair =
            libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).map_err(|e| net(&e))?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| net(&e))?
            // QUIC brings its own TLS 1.3 handshake and stream multiplexing;
            // the peer id is authenticated the same way as over noise.
            .with_quic()
            .with_behaviour(|key| {
                let urgent = urgent_behaviour(key)?;
                let mdns = if config.mdns {
                    mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())
                        .ok()
                } else {
                    None
                };
                Ok(Behaviour {
                    rr: request_response::Behaviour::new(
                        [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(30)),
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/meshpay/1".into(),
                        key.public(),
                    )),
                    mdns: Toggle::from(mdns),
                    urgent,
                })
            })
            .map_err(|e| net(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        swarm
            .behaviour_mut()
            .urgent
            .subscribe(&gossipsub::IdentTopic::new(URGENT_TOPIC))
            .map_err(|e| net(&e))?;
        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| net(&e))?;
        }
        for addr in &config.peers {
            // Remember where the peer is, so that a request to it can dial
            // even before (or after) this first connection.
            if let Some(peer) = peer_of(addr) {
                swarm.add_peer_address(peer, addr.clone());
            }
            swarm.dial(addr.clone()).map_err(|e| net(&e))?;
        }
        let limiter = RateLimiter::new(config.limits);
        let (tx, commands) = mpsc::channel(64);
        let handle = MeshHandle {
            tx: tx.clone(),
            peer_id: *swarm.local_peer_id(),
        };
        let mesh = Mesh {
            node,
            swarm,
            config,
            started: tokio::time::Instant::now(),
            initiated: HashMap::new(),
            answering: HashMap::new(),
            sync_requests: HashMap::new(),
            invoices: HashMap::new(),
            payments: HashMap::new(),
            syncs_completed: 0,
            commands,
            waiting: Vec::new(),
            limiter,
            handed: HashMap::new(),
            agreed_urgent: HashMap::new(),
            blocked: HashSet::new(),
            uplink_busy: false,
            uplinks: 0,
            own: tx,
        };
        Ok((mesh, handle))
    }

    /// Starts the mesh on the current tokio runtime; the task returns the
    /// node when stopped.
    pub fn spawn(
        node: Node,
        config: MeshConfig,
    ) -> Result<(MeshHandle, tokio::task::JoinHandle<Node>), MeshError> {
        let (mesh, handle) = Mesh::start(node, config)?;
        Ok((handle, tokio::spawn(mesh.run())))
    }

    fn millis(&self) -> Millis {
        Millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Runs until stopped. Returns the node.
    pub async fn run(mut self) -> Node {
        // The first tick one interval from now: connecting and the first
        // sync happen on their own at start.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.sync_interval,
            self.config.sync_interval,
        );
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm(event),
                command = self.commands.recv() => match command {
                    None | Some(Command::Stop) => break,
                    Some(c) => self.on_command(c),
                },
                _ = tick.tick() => {
                    self.redial();
                    self.sync_all();
                    self.expire_waiting();
                    self.save_ledger();
                    self.start_uplink();
                }
            }
        }
        self.save_ledger();
        self.node
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                amount,
                currency,
                memo,
                reply,
            } => {
                let r = self
                    .node
                    .request(amount, currency, memo, self.millis())
                    .map(|mut s| {
                        // The invoice travels out of band (the CLI prints it).
                        while s.poll_transmit().is_some() {}
                        let invoice = s.invoice().clone();
                        self.invoices.insert(invoice.nonce, s);
                        invoice
                    });
                let _ = reply.send(r.map_err(MeshError::from));
            }
            Command::Pay {
                invoice,
                peer,
                reply,
            } => {
                if self.swarm.is_connected(&peer) {
                    self.start_pay(invoice, peer, reply);
                } else {
                    // Sign nothing until the payee is reachable.
                    let _ = self.swarm.dial(peer);
                    let since = self.millis();
                    self.waiting.push(WaitingPayment {
                        invoice,
                        peer,
                        since,
                        reply,
                    });
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::History { reply } => {
                let _ = reply.send(self.history());
            }
            Command::Ledger { reply } => {
                let _ = reply.send(self.export());
            }
            Command::AddAllowance { allowance, reply } => {
                let r = self.node.add_allowance(*allowance).map_err(MeshError::from);
                let _ = reply.send(r);
                self.sync_all();
            }
            Command::PayNearby {
                amount,
                currency,
                reply,
            } => match &self.config.ble {
                Some(ble) => ble.pay_nearby(amount, currency, reply),
                None => {
                    let _ = reply.send(Err(MeshError::Ble(
                        "this node runs no BLE transport (start it with --ble or --ble-emulated)"
                            .into(),
                    )));
                }
            },
            Command::WithNode(job) => self.run_job(job),
            Command::SyncNow => self.sync_all(),
            Command::Dial(addr) => {
                if let Some(peer) = peer_of(&addr) {
                    self.blocked.remove(&peer);
                    // Dialled peers are redialled like static ones.
                    if !self.config.peers.contains(&addr) {
                        self.config.peers.push(addr.clone());
                    }
                    self.swarm.add_peer_address(peer, addr.clone());
                }
                if let Err(e) = self.swarm.dial(addr) {
                    tracing::debug!(error = %e, "dial failed");
                }
            }
            Command::Uplink(result) => self.on_uplink(result),
            Command::SetSettlement(url) => {
                self.config.settlement = url;
                self.start_uplink();
            }
            Command::Disconnect(peer) => {
                self.blocked.insert(peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Stop => {}
        }
    }

    /// Runs a job of a transport beside the mesh; what it changed in the
    /// ledger is spread to the mesh's peers at once (and saved with the
    /// next tick, or by the transport when its session ends; receipts are
    /// durable already).
    fn run_job(&mut self, job: api::NodeJob) {
        let before = self.node.ledger().digest();
        let epoch = self.node.ledger().epoch();
        let mut access = NodeAccess {
            node: &mut self.node,
            invoices: &mut self.invoices,
            gateway: self.config.settlement.is_some(),
        };
        // Jobs are short (one step of an exchange; waiting for the peer
        // happens on the transport's own threads).
        job(&mut access);
        if self.node.ledger().epoch() != epoch {
            // A job rotated the ledger (a BLE session starting): the LAN
            // sessions open name the old epoch.
            self.initiated.clear();
            self.answering.clear();
        }
        if self.node.ledger().digest() != before {
            self.sync_all();
        }
    }

    fn history(&self) -> Result<Vec<HistoryEntry>, MeshError> {
        let mut out: Vec<HistoryEntry> = self
            .node
            .receipts()?
            .into_iter()
            .map(|(r, role)| {
                let h = r.transfer.header();
                HistoryEntry {
                    transfer: r.transfer.id().to_string(),
                    role: match role {
                        Role::Paid => "paid",
                        Role::Received => "received",
                    },
                    amount: h.amount,
                    allowance: h.allowance.to_string(),
                    seq: h.seq,
                    payee: r.transfer.body().payee.to_string(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.allowance, a.seq).cmp(&(&b.allowance, b.seq)));
        Ok(out)
    }

    fn export(&self) -> LedgerExport {
        let ledger = self.node.ledger();
        let mut conflicted: Vec<String> = ledger
            .proofs()
            .iter()
            .map(|p| p.allowance().to_string())
            .collect();
        conflicted.dedup();
        LedgerExport {
            epoch: ledger.epoch(),
            digest: ledger.digest().to_string(),
            headers: ledger
                .all_headers()
                .into_iter()
                .map(|h| ExportedHeader {
                    allowance: h.allowance.to_string(),
                    seq: h.seq,
                    cumulative: h.cumulative,
                    amount: h.amount,
                    transfer: h.id().to_string(),
                })
                .collect(),
            conflicted,
            proofs: ledger
                .proofs()
                .iter()
                .map(|p| ExportedProof {
                    allowance: p.allowance().to_string(),
                    kind: match p {
                        ConflictProof::Fork { .. } => "fork",
                        ConflictProof::Rewind { .. } => "rewind",
                        ConflictProof::OverLimit { .. } => "over-limit",
                    },
                    seqs: p.headers().map(|h| h.seq).collect(),
                    hash: p.hash().to_string(),
                    encoded: hex::encode(p.encode()),
                })
                .collect(),
        }
    }

    fn status(&self) -> Status {
        let ledger = self.node.ledger();
        Status {
            peer_id: self.swarm.local_peer_id().to_string(),
            listening: self.swarm.listeners().map(ToString::to_string).collect(),
            peers: self
                .swarm
                .connected_peers()
                .map(ToString::to_string)
                .collect(),
            wallet: self.node.public_key().to_string(),
            ledger_entries: ledger.len(),
            ledger_digest: ledger.digest().to_string(),
            proofs: ledger.proofs().len(),
            syncs_completed: self.syncs_completed,
            outbox: self.outbox_len().unwrap_or(0),
            carried: self.node.store().carried().map_or(0, |c| c.len()),
            uplinks: self.uplinks,
            ble: self.config.ble.as_ref().map(|b| b.status()),
        }
    }

    fn start_pay(
        &mut self,
        invoice: Invoice,
        peer: PeerId,
        reply: oneshot::Sender<Result<MeshPayment, MeshError>>,
    ) {
        let now = self.millis();
        let config = PayerConfig {
            send_allowance: true,
            ..PayerConfig::default()
        };
        let result = (|| -> Result<Result<(PayerSession, Vec<u8>), String>, MeshError> {
            let mut session = self
                .node
                .start_payment(invoice.amount, wall_clock(), config)?;
            let _ = session.handle(PaymentMessage::Invoice(invoice), now);
            if let PayerState::Refused(e) = session.state() {
                return Ok(Err(e.to_string()));
            }
            // Running `pay` is the user's confirmation.
            if self.node.drive_payer(&mut session, now)?.is_some() {
                session.confirm().map_err(NodeError::from)?;
                self.node.drive_payer(&mut session, now)?;
            }
            let Some(message) = session.poll_transmit() else {
                return Err(MeshError::Unreachable {
                    peer,
                    reason: "nothing to send".into(),
                });
            };
            Ok(Ok((session, message.encode())))
        })();
        match result {
            Ok(Ok((session, bytes))) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_request(&peer, MeshRequest::Payment(bytes));
                self.payments.insert(id, PendingPayment { session, reply });
            }
            Ok(Err(why)) => {
                let _ = reply.send(Ok(MeshPayment::PayerRefused(why)));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. }
                if self.blocked.contains(&peer_id) =>
            {
                let _ = self.swarm.disconnect_peer_id(peer_id);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                    .into_iter()
                    .partition(|w| w.peer == peer_id);
                self.waiting = still;
                for w in ready {
                    self.start_pay(w.invoice, w.peer, w.reply);
                }
                self.start_sync(peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.swarm.is_connected(&peer) {
                        self.swarm.add_peer_address(peer, addr.clone());
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(event)) => self.on_rr(event),
            SwarmEvent::Behaviour(BehaviourEvent::Urgent(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            })) => self.on_urgent(propagation_source, &message.data),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.initiated.remove(&peer_id);
                self.answering.remove(&peer_id);
                self.limiter.forget(&peer_id);
                self.handed.remove(&peer_id);
            }
            _ => {}
        }
    }

    fn on_rr(&mut self, event: request_response::Event<MeshRequest, MeshResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.on_request(peer, request, channel);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.on_response(peer, request_id, response);
            }
            Event::OutboundFailure {
                request_id,
                peer,
                error,
                ..
            } => {
                self.sync_requests.remove(&request_id);
                self.initiated.remove(&peer);
                if let Some(p) = self.payments.remove(&request_id) {
                    let _ = p.reply.send(Err(MeshError::Unreachable {
                        peer,
                        reason: error.to_string(),
                    }));
                }
                tracing::debug!(%peer, %error, "request failed");
            }
            _ => {}
        }
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        request: MeshRequest,
        channel: ResponseChannel<MeshResponse>,
    ) {
        let bytes = match &request {
            MeshRequest::Sync { frames, .. } => frames.iter().map(Vec::len).sum(),
            MeshRequest::Payment(b) => b.len(),
            MeshRequest::Relay(list) => list.iter().map(Vec::len).sum(),
        };
        if !self.admit(peer, bytes) {
            return self.respond(channel, MeshResponse::Refused("rate limited".into()));
        }
        let response = match request {
            MeshRequest::Sync { first, frames } => {
                if first {
                    self.answering.remove(&peer);
                } else if !self.answering.contains_key(&peer) {
                    // This side already agreed and closed the session; the
                    // initiator's late frames change nothing.
                    return self.respond(
                        channel,
                        MeshResponse::Sync {
                            frames: Vec::new(),
                            finished: true,
                        },
                    );
                }
                self.answer_sync(peer, &frames)
            }
            MeshRequest::Payment(bytes) => self.answer_payment(&bytes),
            MeshRequest::Relay(list) => self.take_relayed(peer, &list),
        };
        self.respond(channel, response);
    }

    /// Charges `peer` for a request of `bytes`; false if it is over its
    /// limits (and disconnects a peer that keeps going).
    fn admit(&mut self, peer: PeerId, bytes: usize) -> bool {
        let now = self.millis().0;
        match self.limiter.check(peer, bytes as u64, now) {
            Verdict::Allow => true,
            Verdict::Refuse => {
                tracing::debug!(%peer, bytes, "request over the peer's rate limit refused");
                false
            }
            Verdict::Disconnect => {
                tracing::warn!(%peer, "peer ignores rate-limit refusals; disconnecting");
                self.answering.remove(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
                false
            }
        }
    }

    fn respond(&mut self, channel: ResponseChannel<MeshResponse>, response: MeshResponse) {
        let _ = self
            .swarm
            .behaviour_mut()
            .rr
            .send_response(channel, response);
    }

    fn answer_sync(&mut self, peer: PeerId, frames: &[Vec<u8>]) -> MeshResponse {
        if !self.answering.contains_key(&peer) && !self.advance_epoch() {
            return MeshResponse::Refused("ledger not stored".into());
        }
        let now = self.millis();
        if !self.answering.contains_key(&peer) {
            let remembered = self.remembered(&peer);
            let session = SyncSession::knowing(
                self.node.ledger(),
                remembered,
                self.agreed_urgent.get(&peer).copied(),
                SyncConfig::default(),
                now,
            );
            self.answering.insert(peer, session);
        }
        let Some(session) = self.answering.get_mut(&peer) else {
            return MeshResponse::Refused("no session".into());
        };
        for f in frames {
            if let Err(e) = session.handle_frame(self.node.ledger_mut(), f, now) {
                // Peers in different epochs still exchange their urgent
                // entries: what this side queued (its `Urgent` and
                // `Hello`) goes back, and the session ends.
                let out: Vec<Vec<u8>> = match e {
                    meshpay_proto::sync::SyncError::EpochMismatch { .. } => {
                        std::iter::from_fn(|| session.poll_transmit()).collect()
                    }
                    _ => Vec::new(),
                };
                self.answering.remove(&peer);
                self.on_sync_error(peer, &e);
                if out.is_empty() {
                    return MeshResponse::Refused(e.to_string());
                }
                return MeshResponse::Sync {
                    frames: out,
                    finished: true,
                };
            }
        }
        // What this node wrote (a proof found in the merge, a join of
        // heads) is stored before the answer can carry it.
        if let Err(e) = self.node.store_own_writes() {
            tracing::error!(error = %e, "could not store the ledger; sync answer withheld");
            self.answering.remove(&peer);
            return MeshResponse::Refused("ledger not stored".into());
        }
        let Some(session) = self.answering.get_mut(&peer) else {
            return MeshResponse::Refused("no session".into());
        };
        let mut out = Vec::new();
        while let Some(f) = session.poll_transmit() {
            out.push(f);
        }
        let finished = session.is_finished();
        if finished && let Some(done) = self.answering.remove(&peer) {
            let found = done.stats().new_proofs.clone();
            self.remember(&peer, done.into_peer_state());
            self.finish_sync();
            self.publish_urgent(found);
        }
        MeshResponse::Sync {
            frames: out,
            finished,
        }
    }

    fn answer_payment(&mut self, bytes: &[u8]) -> MeshResponse {
        let message = match PaymentMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => return MeshResponse::Refused(e.to_string()),
        };
        let PaymentMessage::Transfer { transfer, .. } = &message else {
            return MeshResponse::Refused(format!("unexpected {} message", message.kind()));
        };
        // A transfer acknowledged before a restart gets the same answer.
        if let Ok(Some((receipt, _))) = self.node.store().receipt(&transfer.id()) {
            return MeshResponse::Payment(
                PaymentMessage::Ack {
                    transfer: transfer.id(),
                    signature: receipt.payee_signature,
                }
                .encode(),
            );
        }
        let Some(mut session) = self.invoices.remove(&transfer.body().nonce) else {
            return MeshResponse::Payment(
                PaymentMessage::Reject {
                    transfer: transfer.id(),
                    rule: Rule::InvoiceNonce,
                }
                .encode(),
            );
        };
        let ctx_now = wall_clock();
        {
            let ctx = self.node.check_context(ctx_now);
            let _ = session.handle(message, &ctx);
        }
        match self.node.drive_payee(&mut session) {
            Ok(refused) => {
                for e in refused {
                    if let PaymentError::Conflict(proof) = e {
                        tracing::warn!(allowance = %proof.allowance(), "double spend caught at payment");
                        self.publish_urgent(vec![*proof]);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store a receipt; not acknowledging");
                return MeshResponse::Refused("payee storage failed".into());
            }
        }
        let mut answer = None;
        while let Some(m) = session.poll_transmit() {
            if !matches!(m, PaymentMessage::Invoice(_)) {
                answer = Some(m);
            }
        }
        let nonce = session.invoice().nonce;
        self.invoices.insert(nonce, session);
        match answer {
            Some(m) => MeshResponse::Payment(m.encode()),
            None => MeshResponse::Refused("no answer".into()),
        }
    }

    fn on_response(&mut self, peer: PeerId, id: OutboundRequestId, response: MeshResponse) {
        if let Some(mut p) = self.payments.remove(&id) {
            let now = self.millis();
            let outcome = match response {
                MeshResponse::Payment(bytes) => match PaymentMessage::decode(&bytes) {
                    Ok(m) => {
                        let _ = p.session.handle(m, now);
                        let _ = self.node.drive_payer(&mut p.session, now);
                        match p.session.state() {
                            PayerState::Paid(r) => {
                                Ok(MeshPayment::Paid(r.transfer.id().to_string()))
                            }
                            PayerState::Rejected { rule, .. } => {
                                Ok(MeshPayment::Refused(rule.name().into()))
                            }
                            _ => Ok(MeshPayment::Uncertain),
                        }
                    }
                    Err(_) => Ok(MeshPayment::Uncertain),
                },
                _ => Ok(MeshPayment::Uncertain),
            };
            let _ = p.reply.send(outcome);
            return;
        }
        if self.sync_requests.remove(&id).is_none() {
            return;
        }
        let MeshResponse::Sync { frames, finished } = response else {
            self.initiated.remove(&peer);
            return;
        };
        let now = self.millis();
        let Some(mut out) = self.initiated.remove(&peer) else {
            return;
        };
        for f in &frames {
            if let Err(e) = out.session.handle_frame(self.node.ledger_mut(), f, now) {
                self.on_sync_error(peer, &e);
                return;
            }
        }
        if finished && out.session.is_agreed() {
            let found = out.session.stats().new_proofs.clone();
            self.remember(&peer, out.session.into_peer_state());
            self.finish_sync();
            self.publish_urgent(found);
            self.hand_outbox(peer);
            return;
        }
        out.rounds += 1;
        if out.rounds > MAX_SYNC_ROUNDS {
            tracing::debug!(%peer, "sync did not converge in this session; the next tick starts afresh");
            return;
        }
        self.send_sync_round(peer, out);
    }

    /// A session ended in error: a peer that sent bad data is dropped; one
    /// that only hit a cap (rounds, bytes, time) just ends this session.
    fn on_sync_error(&mut self, peer: PeerId, e: &meshpay_proto::sync::SyncError) {
        use meshpay_proto::sync::SyncError as E;
        match e {
            E::TooManyRounds(_) | E::TooManyBytes(_) | E::TimedOut(_) | E::Stalled(_) => {
                tracing::debug!(%peer, error = %e, "sync session ended at a cap");
            }
            // A header whose allowance nobody sent, in a change that does
            // not wait for anything (one that waits is held, see
            // PartialLedger::receive). Older peers could send this honestly
            // (before the ledger held such headers back), so it ends the
            // session without dropping the peer. Other bad data still does.
            E::Ledger(meshpay_proto::ledger::LedgerError::UnknownAllowance(_)) => {
                tracing::debug!(%peer, error = %e, "sync session ended; the next one retries");
            }
            // Clocks on both sides of UTC midnight (protocol.md 9.8): the
            // proofs crossed; the next session after the slower clock
            // passes midnight reconciles.
            E::EpochMismatch { .. } => {
                tracing::info!(%peer, error = %e, "sync session ended: the peer is in another epoch");
            }
            _ => {
                tracing::warn!(%peer, error = %e, "sync refused; dropping the peer");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    /// What the last session with `peer` left, for this ledger epoch (a
    /// fresh state otherwise, or if the stored one does not decode).
    fn remembered(&self, peer: &PeerId) -> PeerState {
        let epoch = self.node.ledger().epoch();
        match self.node.store().peer_state(&peer.to_bytes(), epoch) {
            Ok(Some(bytes)) => AutomergeReplica::decode_peer_state(&bytes).unwrap_or_default(),
            Ok(None) => PeerState::default(),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "could not read the peer's sync state");
                PeerState::default()
            }
        }
    }

    /// Keeps what a session that ended agreed learnt about `peer`, so the
    /// next session reconciles only what changed since (and, while nothing
    /// urgent changed here, leaves out the `Urgent` message).
    fn remember(&mut self, peer: &PeerId, state: PeerState) {
        self.agreed_urgent
            .insert(*peer, self.node.ledger().urgent_digest());
        let bytes = AutomergeReplica::encode_peer_state(&state);
        let epoch = self.node.ledger().epoch();
        if let Err(e) = self
            .node
            .store()
            .put_peer_state(&peer.to_bytes(), epoch, &bytes)
        {
            tracing::warn!(%peer, error = %e, "could not store the peer's sync state");
        }
    }

    /// Publishes proofs (with the allowances that check them) and the newest
    /// revocation list to every peer now. With no subscriber known yet the
    /// next sync carries them (they go first in every session).
    fn publish_urgent(&mut self, proofs: Vec<ConflictProof>) {
        use meshpay_proto::validate::MeshView;
        let ledger = self.node.ledger();
        let proofs: Vec<(Allowance, ConflictProof)> = proofs
            .into_iter()
            .filter_map(|p| Some((ledger.allowance(&p.allowance())?.into_inner(), p)))
            .collect();
        if proofs.is_empty() {
            return;
        }
        let revocations = ledger.revocations().cloned();
        self.publish(proofs, revocations);
    }

    /// Pushes a new revocation list (from settlement) to every peer now.
    fn publish_revocations(&mut self, list: RevocationList) {
        self.publish(Vec::new(), Some(list));
    }

    fn publish(
        &mut self,
        proofs: Vec<(Allowance, ConflictProof)>,
        revocations: Option<RevocationList>,
    ) {
        let message = meshpay_proto::sync::SyncMessage::Urgent {
            proofs,
            revocations,
        };
        let topic = gossipsub::IdentTopic::new(URGENT_TOPIC);
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .urgent
            .publish(topic, message.encode())
        {
            tracing::debug!(error = %e, "urgent entries not published; the next sync carries them");
        }
    }

    /// Takes urgent entries a peer pushed: all are checked before any is
    /// added; anything new is saved.
    fn on_urgent(&mut self, from: PeerId, data: &[u8]) {
        use meshpay_proto::ledger::Inserted;
        use meshpay_proto::sync::SyncMessage;
        if !self.admit(from, data.len()) {
            return;
        }
        let entries = match SyncMessage::decode(data) {
            Ok(SyncMessage::Urgent {
                proofs,
                revocations,
            }) => {
                let mut entries = Vec::new();
                for (a, p) in proofs {
                    entries.push(Entry::Allowance(a));
                    entries.push(Entry::Proof(p));
                }
                entries.extend(revocations.map(Entry::Revocations));
                entries
            }
            Ok(_) | Err(_) => {
                tracing::warn!(peer = %from, "malformed urgent message");
                return;
            }
        };
        match self.node.ledger_mut().insert_urgent(entries) {
            Ok(results) => {
                if results.iter().any(|(_, r)| *r == Inserted::New) {
                    tracing::info!(peer = %from, "urgent entries received");
                    self.save_ledger();
                }
            }
            Err(e) => tracing::warn!(peer = %from, error = %e, "urgent entries refused"),
        }
    }

    fn finish_sync(&mut self) {
        self.syncs_completed += 1;
        self.save_ledger();
        self.drop_acknowledged();
    }

    /// Receipts held that no acknowledgement in the ledger covers, sealed
    /// to settlement: this node's own (sealed now) and the copies it
    /// carries (of transfers it is not party to). Own receipts whose
    /// transfer is in `handed` are left out before sealing.
    fn outbox(&self, handed: Option<&HashSet<Hash>>) -> Result<Vec<OutboxItem>, NodeError> {
        let ledger = self.node.ledger();
        let issuer = *ledger.trust().root();
        let mut rng = crate::os_rng()?;
        let mut out = Vec::new();
        let mut own = HashSet::new();
        for (r, _) in self.node.receipts()? {
            let id = r.transfer.id();
            own.insert(id);
            // Sealing costs an X25519 exchange: not for what settled or
            // what this peer already has (the key of OutboxItem::handed_key).
            if ledger.is_settled(&id) || handed.is_some_and(|h| h.contains(&Hash(*id.as_bytes()))) {
                continue;
            }
            let mut entropy = [0u8; 32];
            rand::Rng::fill_bytes(&mut rng, &mut entropy);
            match meshpay_proto::sealed::seal(&r, &issuer, entropy) {
                Ok(sealed) => out.push(OutboxItem {
                    id,
                    bytes: sealed.encode(),
                    carried: false,
                }),
                Err(e) => tracing::error!(error = %e, "cannot seal a receipt"),
            }
        }
        for (id, bytes) in self.node.store().carried()? {
            if !ledger.is_settled(&id) && !own.contains(&id) {
                out.push(OutboxItem {
                    id,
                    bytes,
                    carried: true,
                });
            }
        }
        Ok(out)
    }

    /// How many items [`Self::outbox`] would hand on, without sealing
    /// anything (status is polled often).
    fn outbox_len(&self) -> Result<usize, NodeError> {
        let ledger = self.node.ledger();
        let own: HashSet<TransferId> = self
            .node
            .receipts()?
            .iter()
            .map(|(r, _)| r.transfer.id())
            .collect();
        let carried = self
            .node
            .store()
            .carried()?
            .into_iter()
            .filter(|(id, _)| !ledger.is_settled(id) && !own.contains(id))
            .count();
        Ok(own.iter().filter(|id| !ledger.is_settled(id)).count() + carried)
    }

    /// Drops carried receipts that settlement acknowledged, and those whose
    /// allowance the ledger no longer holds (expired long ago).
    fn drop_acknowledged(&mut self) {
        use meshpay_proto::validate::MeshView;
        let Ok(carried) = self.node.store().carried() else {
            return;
        };
        let ledger = self.node.ledger();
        let mut done: Vec<TransferId> = Vec::new();
        for (id, bytes) in &carried {
            let gone = meshpay_proto::sealed::SealedReceipt::decode(bytes)
                .map_or(true, |s| ledger.allowance(&s.header.allowance).is_none());
            if (ledger.is_settled(id) || gone) && !done.contains(id) {
                done.push(*id);
            }
        }
        if done.is_empty() {
            return;
        }
        match self.node.store().drop_carried(&done) {
            Ok(()) => tracing::info!(
                dropped = done.len(),
                "acknowledged receipts dropped from the outbox"
            ),
            Err(e) => tracing::error!(error = %e, "could not drop acknowledged receipts"),
        }
    }

    /// Hands `peer` the outbox receipts it has not had from this node.
    fn hand_outbox(&mut self, peer: PeerId) {
        let Ok(outbox) = self.outbox(self.handed.get(&peer)) else {
            return;
        };
        let handed = self.handed.entry(peer).or_default();
        let fresh: Vec<OutboxItem> = outbox
            .into_iter()
            .filter(|o| !handed.contains(&o.handed_key()))
            .collect();
        for chunk in fresh.chunks(relay::RELAY_BATCH) {
            handed.extend(chunk.iter().map(OutboxItem::handed_key));
            let list = chunk.iter().map(|o| o.bytes.clone()).collect();
            self.swarm
                .behaviour_mut()
                .rr
                .send_request(&peer, MeshRequest::Relay(list));
        }
    }

    /// Keeps relayed sealed receipts that are plausible: small, their
    /// header's payer signature verifies against an allowance in the
    /// ledger and stays within its caps, no acknowledgement covers them,
    /// and fewer than [`relay::MAX_COPIES`] copies of that transfer are
    /// carried; at most [`relay::MAX_CARRIED`] in all.
    fn take_relayed(&mut self, peer: PeerId, list: &[Vec<u8>]) -> MeshResponse {
        use meshpay_proto::validate::MeshView;
        let mut carried = match self.node.store().carried_count() {
            Ok(c) => c,
            Err(e) => return MeshResponse::Refused(e.to_string()),
        };
        let mut keep: Vec<(TransferId, Vec<u8>)> = Vec::new();
        for bytes in list {
            if bytes.len() > relay::MAX_SEALED_BYTES {
                return MeshResponse::Refused("a relayed receipt is too large".into());
            }
            let Ok(sealed) = meshpay_proto::sealed::SealedReceipt::decode(bytes) else {
                tracing::warn!(%peer, "malformed relayed receipt");
                return MeshResponse::Refused("malformed sealed receipt".into());
            };
            let id = sealed.transfer_id();
            let ledger = self.node.ledger();
            let Some(allowance) = ledger.allowance(&sealed.header.allowance) else {
                // Its allowance travels with its header in the ledger; the
                // peer hands it again on a later connection.
                continue;
            };
            let a = allowance.allowance();
            let h = &sealed.header.terms;
            if !sealed.header.verify_by(&a.wallet)
                || h.seq == 0
                || h.seq > a.caps.max_payments
                || h.amount == 0
                || h.amount > a.caps.max_per_payment
                || h.cumulative > a.amount
            {
                return MeshResponse::Refused("a relayed header fails its allowance".into());
            }
            if ledger.is_settled(&id) || matches!(self.node.store().receipt(&id), Ok(Some(_))) {
                continue;
            }
            let batch_copies = keep.iter().filter(|(k, _)| *k == id).count();
            match self.node.store().carried_copies(&id, bytes) {
                Ok((_, true)) => continue,
                Ok((n, false)) if n + batch_copies >= relay::MAX_COPIES => continue,
                Ok(_) => {}
                Err(e) => return MeshResponse::Refused(e.to_string()),
            }
            if carried >= relay::MAX_CARRIED {
                tracing::warn!("carrying {carried} receipts already; refusing more");
                break;
            }
            carried += 1;
            keep.push((id, bytes.clone()));
        }
        if let Err(e) = self.node.store().put_carried(&keep) {
            tracing::error!(error = %e, "could not keep relayed receipts");
            return MeshResponse::Refused("storage failed".into());
        }
        // Already with the sender: not handed back.
        let handed = self.handed.entry(peer).or_default();
        for (id, bytes) in &keep {
            handed.insert(
                OutboxItem {
                    id: *id,
                    bytes: bytes.clone(),
                    carried: true,
                }
                .handed_key(),
            );
        }
        MeshResponse::Relayed(u32::try_from(keep.len()).unwrap_or(u32::MAX))
    }

    /// A gateway starts a trip to settlement, if none is under way.
    fn start_uplink(&mut self) {
        let Some(url) = self.config.settlement.clone() else {
            return;
        };
        if self.uplink_busy {
            return;
        }
        let outbox: Vec<(TransferId, Vec<u8>)> = match self.outbox(None) {
            Ok(o) => o.into_iter().map(|o| (o.id, o.bytes)).collect(),
            Err(e) => {
                tracing::error!(error = %e, "could not read the outbox");
                return;
            }
        };
        let since = self
            .node
            .ledger()
            .acks()
            .map(|a| a.serial)
            .max()
            .unwrap_or(0);
        self.uplink_busy = true;
        let own = self.own.clone();
        tokio::spawn(async move {
            let result = relay::uplink(url, outbox, since).await;
            let _ = own.send(Command::Uplink(result)).await;
        });
    }

    /// Takes what settlement sent back into the ledger; it spreads from
    /// there.
    fn on_uplink(&mut self, result: Result<relay::Uplink, String>) {
        self.uplink_busy = false;
        let up = match result {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!(error = %e, "settlement not reachable; the outbox waits");
                return;
            }
        };
        self.uplinks += 1;
        if !up.refused.is_empty() {
            // Settlement could not open these copies, or found them forged:
            // damaged or forged on the way. Only these copies go; a genuine
            // copy of the same transfer is kept, and its parties still
            // hold it.
            tracing::warn!(
                count = up.refused.len(),
                "settlement refused carried copies; dropped"
            );
            if let Err(e) = self.node.store().drop_carried_copies(&up.refused) {
                tracing::error!(error = %e, "could not drop refused copies");
            }
        }
        let mut entries: Vec<Entry> = up.acks.into_iter().map(Entry::Ack).collect();
        let revocations = up.revocations.clone();
        entries.extend(up.revocations.map(Entry::Revocations));
        let n = entries.len();
        let mut added = false;
        for e in entries {
            // One by one: an entry the ledger already holds, or an older
            // revocation list, does not stop the rest.
            match self.node.ledger_mut().insert(e) {
                Ok(meshpay_proto::ledger::Inserted::New) => added = true,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "settlement answer refused by the ledger"),
            }
        }
        tracing::info!(uploaded = up.uploaded, entries = n, "settlement reached");
        if added {
            self.save_ledger();
            self.drop_acknowledged();
            if let Some(list) = revocations {
                self.publish_revocations(list);
            }
        }
    }

    fn save_ledger(&mut self) {
        if let Err(e) = self.node.persist_ledger() {
            tracing::error!(error = %e, "could not persist the ledger");
        }
    }

    /// Rotates the ledger if the clock has entered a new epoch (a UTC
    /// day): sessions open until now name the old epoch's document and
    /// are dropped; their peers' next sessions start afresh.
    ///
    /// Returns whether sessions may go on: not while the rotated ledger
    /// is not stored (changes under the new epoch's writer must not leave
    /// before the epoch is on disk: after a restart the node would write
    /// other changes under the same sequence numbers).
    fn advance_epoch(&mut self) -> bool {
        match self.node.advance_epoch(wall_clock()) {
            Ok(Some(_)) => {
                self.initiated.clear();
                self.answering.clear();
                true
            }
            Ok(None) => true,
            Err(e) => {
                tracing::error!(error = %e, "could not store the rotated ledger; no sync until it is");
                false
            }
        }
    }

    fn start_sync(&mut self, peer: PeerId) {
        if self.initiated.contains_key(&peer) || !self.advance_epoch() {
            return;
        }
        let remembered = self.remembered(&peer);
        let session = SyncSession::knowing(
            self.node.ledger(),
            remembered,
            self.agreed_urgent.get(&peer).copied(),
            SyncConfig::default(),
            self.millis(),
        );
        self.send_sync_round(peer, Outgoing { session, rounds: 0 });
    }

    fn send_sync_round(&mut self, peer: PeerId, mut out: Outgoing) {
        // What this node wrote since the last save (a payment it took, a
        // proof it found) is stored before a frame can carry it.
        if let Err(e) = self.node.store_own_writes() {
            tracing::error!(error = %e, "could not store the ledger; no sync until it is");
            return;
        }
        let mut frames = Vec::new();
        while let Some(f) = out.session.poll_transmit() {
            frames.push(f);
        }
        let request = MeshRequest::Sync {
            first: out.rounds == 0,
            frames,
        };
        let id = self.swarm.behaviour_mut().rr.send_request(&peer, request);
        self.sync_requests.insert(id, peer);
        self.initiated.insert(peer, out);
    }

    /// Fails payments whose payee stayed out of reach; nothing was signed.
    fn expire_waiting(&mut self) {
        let now = self.millis();
        let (expired, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| now.0 >= w.since.0 + CONNECT_WAIT_MS);
        self.waiting = still;
        for w in expired {
            let _ = w.reply.send(Err(MeshError::Unreachable {
                peer: w.peer,
                reason: "not reachable; nothing was signed".into(),
            }));
        }
    }

    /// Dials every static peer that is not connected (a link that dropped
    /// comes back on the next tick).
    fn redial(&mut self) {
        for addr in self.config.peers.clone() {
            if peer_of(&addr)
                .is_some_and(|p| self.swarm.is_connected(&p) || self.blocked.contains(&p))
            {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "redial failed");
            }
        }
    }

    fn sync_all(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            self.start_sync(p);
        }
    }
}

/// What a job of a transport beside the mesh ([`MeshHandle::with_node`])
/// may touch: the node, and the invoices the mesh holds open.
pub struct NodeAccess<'a> {
    /// The node.
    pub node: &'a mut Node,
    invoices: &'a mut HashMap<Nonce, PayeeSession>,
    gateway: bool,
}

impl NodeAccess<'_> {
    /// Whether an invoice waits for its payment.
    pub fn invoice_pending(&self) -> bool {
        self.invoices
            .values()
            .any(|s| matches!(s.state(), PayeeState::AwaitingTransfer))
    }

    /// Takes an invoice that waits for its payment (the newest, if
    /// several), to be paid over another transport; give it back with
    /// [`NodeAccess::return_invoice`].
    pub fn take_invoice(&mut self) -> Option<PayeeSession> {
        let nonce = self
            .invoices
            .iter()
            .filter(|(_, s)| matches!(s.state(), PayeeState::AwaitingTransfer))
            .max_by_key(|(_, s)| s.poll_timeout())
            .map(|(n, _)| *n)?;
        self.invoices.remove(&nonce)
    }

    /// Gives an invoice back (paid or not): a repeated transfer gets the
    /// same acknowledgement on any transport.
    pub fn return_invoice(&mut self, session: PayeeSession) {
        self.invoices.insert(session.invoice().nonce, session);
    }

    /// Whether this node relays to settlement.
    pub fn is_gateway(&self) -> bool {
        self.gateway
    }
}

impl std::fmt::Debug for NodeAccess<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAccess")
            .field("node", &self.node.name())
            .field("invoices", &self.invoices.len())
            .finish()
    }
}

/// The peer id at the end of a multiaddr (`.../p2p/<id>`), if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// The node's wall clock, in protocol time.
pub fn wall_clock() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Timestamp(secs)
}
