//! A small HTTP/1.1 JSON client for the settlement API, used by gateways
//! (the relay) and by `meshpay allowance load`. Plain HTTP on a trusted
//! link or loopback; everything the service returns that matters is signed
//! by the issuer and checked by the caller.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a call failed: the service is unreachable, or answered badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http://host:port`.
    #[error("settlement URL {0:?}: expected http://host:port")]
    Url(String),
    /// No connection, or it broke.
    #[error("settlement unreachable: {0}")]
    Unreachable(String),
    /// The answer was not HTTP with a JSON body.
    #[error("settlement answered badly: {0}")]
    Malformed(String),
    /// A 4xx or 5xx answer.
    #[error("settlement refused ({status}): {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The service's `error` text.
        message: String,
    },
}

/// Largest answer read.
const MAX_ANSWER: u64 = 8 << 20;

/// `host:port` of an `http://host:port[/]` URL.
pub fn authority(url: &str) -> Result<String, ClientError> {
    let rest = url
        .trim()
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url(url.into()))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || !host.contains(':') {
        return Err(ClientError::Url(url.into()));
    }
    Ok(host.to_string())
}

/// One call: `method path` with an optional JSON body; the JSON answer of a
/// 2xx, or the error. Gives up after `timeout`.
pub async fn call(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let host = authority(url)?;
    tokio::time::timeout(timeout, exchange(&host, method, path, body))
        .await
        .map_err(|_| ClientError::Unreachable(format!("no answer within {timeout:?}")))?
}

async fn exchange(
    host: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, ClientError> {
    let unreachable = |e: std::io::Error| ClientError::Unreachable(format!("{host}: {e}"));
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(unreachable)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(unreachable)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Malformed("no header end".into()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Malformed("no status".into()))?;
    let value: Value =
        serde_json::from_str(body).map_err(|e| ClientError::Malformed(e.to_string()))?;
    if status >= 400 {
        return Err(ClientError::Status {
            status,
            message: value["error"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            authority("http://127.0.0.1:7070").as_deref(),
            Ok("127.0.0.1:7070")
        );
        assert_eq!(authority("http://host:1/").as_deref(), Ok("host:1"));
        for bad in [
            "https://x:1",
            "127.0.0.1:7070",
            "http://",
            "http://x",
            "http://x:1/v1",
        ] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }
}
