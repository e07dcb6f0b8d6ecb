//! The settlement service's HTTP API (axum). The OpenAPI document is at
//! `GET /v1/openapi.json`; docs/settlement.md explains each call.
//!
//! Binary objects (allowances, receipts, wallet requests, acknowledgements,
//! revocation lists) travel as hex of their canonical encoding, so that a
//! client checks the issuer's signatures on exactly the bytes it got.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meshpay_proto::crypto::KeyBytes;
use meshpay_proto::prelude::*;
use meshpay_proto::settlement::Account;
use meshpay_proto::wallet_request::WalletRequest;
use serde::Deserialize;
use serde_json::json;

use super::kv::Kv;
use super::service::{MAX_BATCH, REQUEST_WINDOW_SECS, Service, ServiceError};
use crate::control::{Body, Reply, bad, ok, parse_body};
use crate::mesh::{PeerLimits, RateLimiter, Verdict};

/// Largest request body: a full batch of receipts in hex, with room.
pub const MAX_BODY: usize = 1 << 20;

/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    service: Arc<Mutex<Service<Box<dyn Kv>>>>,
    operator_token: Option<Arc<str>>,
    limiter: Arc<Mutex<RateLimiter<std::net::IpAddr>>>,
    started: std::time::Instant,
}

impl AppState {
    /// Serves `service`; deposits need `operator_token` (none: refused).
    pub fn new(service: Service<Box<dyn Kv>>, operator_token: Option<String>) -> Self {
        AppState {
            service: Arc::new(Mutex::new(service)),
            operator_token: operator_token.map(Arc::from),
            limiter: Arc::new(Mutex::new(RateLimiter::new(PeerLimits {
                requests_per_sec: 50,
                request_burst: 200,
                bytes_per_sec: 16 << 20,
                byte_burst: 32 << 20,
                strikes: u32::MAX,
            }))),
            started: std::time::Instant::now(),
        }
    }

    /// Runs `f` on the service on a blocking thread.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Service<Box<dyn Kv>>) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = service
                .lock()
                .map_err(|_| ServiceError::Corrupt("the service failed earlier".into()))?;
            f(&mut s)
        })
        .await
        .map_err(|e| ServiceError::Corrupt(e.to_string()))?
    }
}

fn failed(e: ServiceError) -> Reply {
    let code = match e {
        ServiceError::Refused(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if code.is_server_error() {
        tracing::error!(error = %e, "settlement request failed");
    }
    (code, Json(json!({ "error": e.to_string() })))
}

fn now() -> Timestamp {
    crate::mesh::wall_clock()
}

fn hex_object<T: Encode>(what: &str, text: &str) -> Result<T, Reply> {
    let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("{what}: bad hex: {e}")))?;
    T::decode(&bytes).map_err(|e| bad(format!("{what}: {e}")))
}

fn wallet_key(text: &str) -> Result<KeyBytes, Reply> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("a wallet is 64 hex digits"))?;
    PublicKey::from_bytes(&bytes)
        .map(Into::into)
        .map_err(|_| bad("not a valid wallet key"))
}

async fn info(State(app): State<AppState>) -> Reply {
    match app
        .with(|s| Ok((s.issuer().to_string(), s.describe(), s.config().grace_secs)))
        .await
    {
        Ok((issuer, storage, grace)) => ok(json!({
            "issuer": issuer,
            "storage": storage,
            "max_batch": MAX_BATCH,
            "request_window_secs": REQUEST_WINDOW_SECS,
            "grace_secs": grace,
            "uptime_secs": app.started.elapsed().as_secs(),
        })),
        Err(e) => failed(e),
    }
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DepositBody {
    wallet: String,
    amount: u64,
    /// The operator's unique name for the deposit (makes a retry safe).
    reference: String,
}

async fn deposit(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body<DepositBody>,
) -> Reply {
    let Some(token) = &app.operator_token else {
        return (
            StatusCode::FORBIDDEN,
            Json(
                json!({"error": "deposits are disabled: start the service with --operator-token-file"}),
            ),
        );
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "a deposit needs the operator's bearer token"})),
        );
    }
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let wallet = match wallet_key(&body.wallet) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if body.amount == 0 {
        return bad("amount must be positive");
    }
    let (amount, reference) = (body.amount, body.reference.clone());
    match app
        .with(move |s| s.deposit(wallet, amount, &reference))
        .await
    {
        Ok(d) => ok(json!({
            "wallet": body.wallet,
            "balance": d.balance,
            "reference": body.reference,
            "repeated": d.repeated,
        })),
        Err(e) => failed(e),
    }
}

async fn account(State(app): State<AppState>, Path(wallet): Path<String>) -> Reply {
    let key = match wallet_key(&wallet) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match app.with(move |s| s.balance(&Account::Wallet(key))).await {
        Ok(balance) => ok(json!({ "wallet": wallet, "balance": balance })),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WalletRequestBody {
    request: String,
}

async fn issue(State(app): State<AppState>, body: Body<WalletRequestBody>) -> Reply {
    let request: WalletRequest =
        match parse_body(body).and_then(|b| hex_object("request", &b.request)) {
            Ok(r) => r,
            Err(r) => return r,
        };
    let mut id = [0u8; 16];
    match crate::os_rng() {
        Ok(mut rng) => rand::Rng::fill_bytes(&mut rng, &mut id),
        Err(e) => return failed(ServiceError::Corrupt(e.to_string())),
    }
    match app
        .with(move |s| s.issue(&request, AllowanceId(id), now()))
        .await
    {
        Ok(a) => ok(json!({
            "allowance": hex::encode(a.encode()),
            "id": a.id.to_string(),
            "amount": a.amount,
            "expires_at": a.expires_at.0,
        })),
        Err(e) => failed(e),
    }
}

async fn lost(State(app): State<AppState>, body: Body<WalletRequestBody>) -> Reply {
    let request: WalletRequest =
        match parse_body(body).and_then(|b| hex_object("request", &b.request)) {
            Ok(r) => r,
            Err(r) => return r,
        };
    match app.with(move |s| s.report_lost(&request, now())).await {
        Ok(()) => ok(json!({})),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptsBody {
    /// Receipts in clear (hex).
    #[serde(default)]
    receipts: Vec<String>,
    /// Receipts sealed to this service (hex `SealedReceipt`), as relays
    /// carry them.
    #[serde(default)]
    sealed: Vec<String>,
}

async fn receipts(State(app): State<AppState>, body: Body<ReceiptsBody>) -> Reply {
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.receipts.len() + body.sealed.len() > MAX_BATCH {
        return bad(format!("at most {MAX_BATCH} receipts per batch"));
    }
    let mut batch = Vec::with_capacity(body.receipts.len() + body.sealed.len());
    for (i, text) in body.receipts.iter().enumerate() {
        match hex_object::<Receipt>(&format!("receipt {i}"), text) {
            Ok(r) => batch.push(r),
            Err(r) => return r,
        }
    }
    let mut sealed = Vec::with_capacity(body.sealed.len());
    for (i, text) in body.sealed.iter().enumerate() {
        match hex_object::<meshpay_proto::sealed::SealedReceipt>(&format!("sealed {i}"), text) {
            Ok(r) => sealed.push(r),
            Err(r) => return r,
        }
    }
    match app
        .with(move |s| {
            // A sealed receipt that does not open, or opens to a forged
            // receipt, is reported by its index in `sealed`, not fatal: a
            // relay may carry one damaged or forged copy among many.
            let mut unopened = Vec::new();
            let mut opened = Vec::new();
            for (i, item) in sealed.iter().enumerate() {
                match s.open_sealed(item) {
                    Ok(r) => {
                        opened.push((i, batch.len()));
                        batch.push(r);
                    }
                    Err(_) => unopened.push(i),
                }
            }
            let done = s.submit(&batch, now())?;
            let rejected: Vec<usize> = opened
                .iter()
                .filter(|(_, b)| {
                    done.receipts[*b].outcome == Outcome::Refused(Refusal::BadSignature)
                })
                .map(|(i, _)| *i)
                .collect();
            Ok((done, unopened, rejected))
        })
        .await
    {
        Ok((done, unopened, rejected)) => ok(json!({
            "unopened": unopened,
            "rejected": rejected,
            "receipts": done.receipts,
            "ack": done.ack.as_ref().map(|a| hex::encode(a.encode())),
            "ack_serial": done.ack.as_ref().map(|a| a.serial),
        })),
        Err(e) => failed(e),
    }
}

async fn revocations(State(app): State<AppState>) -> Reply {
    match app.with(|s| s.revocations()).await {
        Ok(list) => ok(json!({
            "version": list.as_ref().map_or(0, |l| l.version),
            "list": list.map(|l| hex::encode(l.encode())),
        })),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

async fn acks(State(app): State<AppState>, Query(q): Query<Since>) -> Reply {
    match app.with(move |s| s.acks_since(q.since, 100)).await {
        Ok(list) => ok(json!({
            "acks": list.iter().map(|a| hex::encode(a.encode())).collect::<Vec<_>>(),
            "last": list.last().map_or(q.since, |a| a.serial),
        })),
        Err(e) => failed(e),
    }
}

async fn statement(State(app): State<AppState>, Path(wallet): Path<String>) -> Reply {
    let key = match wallet_key(&wallet) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match app
        .with(move |s| Ok((s.statement(&key)?, s.balance(&Account::Wallet(key))?)))
        .await
    {
        Ok((entries, balance)) => {
            ok(json!({ "wallet": wallet, "balance": balance, "entries": entries }))
        }
        Err(e) => failed(e),
    }
}

/// Refuses clients over their rate with 429.
async fn rate_limit(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let bytes = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let now_ms = u64::try_from(app.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let verdict = app
        .limiter
        .lock()
        .map(|mut l| l.check(peer.ip(), bytes, now_ms))
        .unwrap_or(Verdict::Refuse);
    if verdict != Verdict::Allow {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": "too many requests from this address; slow down"})),
        )
            .into_response();
    }
    next.run(request).await
}

/// The router (serve it with connect info: see [`serve`]).
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/deposits", post(deposit))
        .route("/v1/accounts/{wallet}", get(account))
        .route("/v1/allowances", post(issue))
        .route("/v1/lost", post(lost))
        .route("/v1/receipts", post(receipts))
        .route("/v1/revocations", get(revocations))
        .route("/v1/acks", get(acks))
        .route("/v1/statements/{wallet}", get(statement))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            rate_limit,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Serves the API on `addr`; also closes due allowances every
/// `close_every`. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    app: AppState,
    close_every: std::time::Duration,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let closer = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(close_every);
        loop {
            tick.tick().await;
            match closer.with(|s| s.close_due(now())).await {
                Ok(refunds) if !refunds.is_empty() => {
                    tracing::info!(count = refunds.len(), "allowances closed, escrow refunded");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "closing due allowances failed"),
            }
        }
    });
    tokio::spawn(async move {
        let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!(error = %e, "settlement API stopped");
        }
    });
    Ok(bound)
}
