//! The local control API: HTTP/JSON on a loopback address, for a
//! point-of-sale app and the `meshpay` CLI. Documented in
//! docs/operations.md.
//!
//! | method | path | body | answer |
//! | --- | --- | --- | --- |
//! | GET | /v1/status | | node status |
//! | POST | /v1/request | `{"amount": 450, "currency": "EUR", "memo": "coffee"}` | `{"token", "invoice", "peer_id"}` |
//! | POST | /v1/pay | `{"token": "..."}` | `{"Paid": id}`, `{"Refused": rule}`, ... |
//! | POST | /v1/pay | `{"nearby": {"amount": 450, "currency": "EUR"}}` | the same, paid over BLE to the nearest payee with an invoice |
//! | GET | /v1/history | | receipts |
//! | GET | /v1/ledger | | the partial ledger |
//! | POST | /v1/allowances | `{"allowance": "<hex>"}` | `{}` |
//!
//! Errors are 4xx (bad input) or 5xx (the node failed) with
//! `{"error": "..."}`.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use libp2p::PeerId;
use meshpay_proto::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::mesh::{MeshError, MeshHandle};

/// An answer: status and JSON body.
pub(crate) type Reply = (StatusCode, Json<Value>);

/// 400 with `{"error": message}`.
pub(crate) fn bad(message: impl ToString) -> Reply {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.to_string() })),
    )
}

fn failed(e: MeshError) -> Reply {
    let code = match e {
        MeshError::Unreachable { .. } | MeshError::Ble(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({ "error": e.to_string() })))
}

/// 200 with `v`.
pub(crate) fn ok(v: impl serde::Serialize) -> Reply {
    match serde_json::to_value(v) {
        Ok(v) => (StatusCode::OK, Json(v)),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

/// An invoice as one copyable token: `<payee peer id>.<invoice hex>`.
pub fn invoice_token(peer: &PeerId, invoice: &Invoice) -> String {
    format!("{peer}.{}", hex::encode(invoice.encode()))
}

/// Parses an invoice token.
pub fn parse_token(token: &str) -> Result<(PeerId, Invoice), String> {
    let (peer, invoice) = token
        .trim()
        .split_once('.')
        .ok_or("an invoice token is <peer id>.<invoice hex>")?;
    let peer: PeerId = peer.parse().map_err(|e| format!("bad peer id: {e}"))?;
    let bytes = hex::decode(invoice).map_err(|e| format!("bad invoice hex: {e}"))?;
    let invoice = Invoice::decode(&bytes).map_err(|e| format!("bad invoice: {e}"))?;
    Ok((peer, invoice))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    amount: u64,
    currency: String,
    memo: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayBody {
    /// An invoice token, paid over the mesh.
    token: Option<String>,
    /// Or: the nearest payee over BLE, for this amount.
    nearby: Option<NearbyBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NearbyBody {
    amount: u64,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowanceBody {
    allowance: String,
}

/// A JSON body or why it is not one.
pub(crate) type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The JSON body, or a 4xx naming what is wrong with it.
pub(crate) fn parse_body<T>(b: Body<T>) -> Result<T, Reply> {
    b.map(|Json(t)| t).map_err(|e| {
        // 400, 415, 422, or 413 for a body over the limit.
        (e.status(), Json(json!({ "error": e.body_text() })))
    })
}

async fn status(State(h): State<MeshHandle>) -> Reply {
    h.status().await.map_or_else(failed, ok)
}

async fn request(State(h): State<MeshHandle>, body: Body<RequestBody>) -> Reply {
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    if body.amount == 0 {
        return bad("amount must be positive");
    }
    let Some(currency) = Currency::new(&body.currency) else {
        return bad("currency must be three upper-case letters");
    };
    if body
        .memo
        .as_ref()
        .is_some_and(|m| m.len() > meshpay_proto::transfer::MAX_MEMO_LEN)
    {
        return bad("memo is longer than 64 bytes");
    }
    match h.request(body.amount, currency, body.memo).await {
        Ok(invoice) => ok(json!({
            "token": invoice_token(&h.peer_id, &invoice),
            "invoice": hex::encode(invoice.encode()),
            "peer_id": h.peer_id.to_string(),
        })),
        Err(e) => failed(e),
    }
}

async fn pay(State(h): State<MeshHandle>, body: Body<PayBody>) -> Reply {
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    match (body.token, body.nearby) {
        (Some(token), None) => {
            let (peer, invoice) = match parse_token(&token) {
                Ok(t) => t,
                Err(e) => return bad(e),
            };
            h.pay(invoice, peer).await.map_or_else(failed, ok)
        }
        (None, Some(nearby)) => {
            if nearby.amount == 0 {
                return bad("amount must be positive");
            }
            let Some(currency) = Currency::new(&nearby.currency) else {
                return bad("currency must be three upper-case letters");
            };
            h.pay_nearby(nearby.amount, currency)
                .await
                .map_or_else(failed, ok)
        }
        _ => bad("give either a token or nearby"),
    }
}

async fn history(State(h): State<MeshHandle>) -> Reply {
    h.history().await.map_or_else(failed, ok)
}

async fn ledger(State(h): State<MeshHandle>) -> Reply {
    h.ledger().await.map_or_else(failed, ok)
}

async fn conflicts(State(h): State<MeshHandle>) -> Reply {
    match h.ledger().await {
        Ok(l) => ok(json!({ "proofs": l.proofs })),
        Err(e) => failed(e),
    }
}

async fn peers(State(h): State<MeshHandle>) -> Reply {
    match h.status().await {
        Ok(s) => ok(json!({ "connected": s.peers })),
        Err(e) => failed(e),
    }
}

async fn allowances(State(h): State<MeshHandle>, body: Body<AllowanceBody>) -> Reply {
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let allowance = match hex::decode(body.allowance.trim())
        .map_err(|e| e.to_string())
        .and_then(|b| Allowance::decode(&b).map_err(|e| e.to_string()))
    {
        Ok(a) => a,
        Err(e) => return bad(format!("bad allowance: {e}")),
    };
    match h.add_allowance(allowance).await {
        Ok(()) => ok(json!({})),
        Err(MeshError::Node(e)) => bad(e),
        Err(e) => failed(e),
    }
}

/// The router.
pub fn router(handle: MeshHandle) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/request", post(request))
        .route("/v1/pay", post(pay))
        .route("/v1/history", get(history))
        .route("/v1/ledger", get(ledger))
        .route("/v1/allowances", post(allowances))
        .route("/v1/conflicts", get(conflicts))
        .route("/v1/peers", get(peers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(handle)
}

/// Binds the control API (loopback addresses only) and serves it on the
/// current runtime. Returns the bound address.
pub async fn serve(addr: SocketAddr, handle: MeshHandle) -> std::io::Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the control API listens on loopback only, not {addr}"),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(handle)).await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    Ok(bound)
}

/// A minimal blocking client for the CLI: one request, one JSON answer.
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| {
        format!(
            "cannot reach the node's control API at {addr}: {e} (is `meshpay node run` running?)"
        )
    })?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP answer")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed HTTP status line")?;
    let value = serde_json::from_str(body).map_err(|e| format!("malformed JSON answer: {e}"))?;
    Ok((code, value))
}
