//! The wire of `/meshpay/1`: what peers ask each other, and the
//! length-prefixed codec that carries it (with a size cap).

use libp2p::StreamProtocol;
use libp2p::request_response;
use serde::{Deserialize, Serialize};

/// The protocol name on the wire.
pub const PROTOCOL: &str = "/meshpay/1";
/// Largest request or response accepted from a peer.
pub const MAX_WIRE_MESSAGE: usize = 32 << 20;
/// What one peer asks another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MeshRequest {
    /// Sync-session frames from the initiator; `first` opens a new session
    /// (the responder drops any older one with this peer).
    Sync {
        /// Whether this request opens the session.
        first: bool,
        /// Frames.
        frames: Vec<Vec<u8>>,
    },
    /// An encoded [`PaymentMessage`] (a transfer, payer to payee).
    Payment(Vec<u8>),
    /// Encoded receipts not yet acknowledged by settlement, for the peer
    /// to carry toward a gateway.
    Relay(Vec<Vec<u8>>),
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MeshResponse {
    /// The responder's frames, and whether its session is finished.
    Sync {
        /// Frames.
        frames: Vec<Vec<u8>>,
        /// The responder considers the ledgers in agreement.
        finished: bool,
    },
    /// An encoded [`PaymentMessage`] (an acknowledgement or a rejection).
    Payment(Vec<u8>),
    /// The request was refused (malformed, or too much at once).
    Refused(String),
    /// How many of the relayed receipts were new to the responder.
    Relayed(u32),
}

/// Length-prefixed postcard over a libp2p stream, with a size cap.
#[derive(Debug, Clone, Default)]
pub struct WireCodec;

async fn read_frame<T: futures::AsyncRead + Unpin + Send>(io: &mut T) -> std::io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_WIRE_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {MAX_WIRE_MESSAGE}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: &[u8],
) -> std::io::Result<()> {
    use futures::AsyncWriteExt;
    let len = u32::try_from(data.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too large"))?;
    io.write_all(&len.to_le_bytes()).await?;
    io.write_all(data).await?;
    io.close().await
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

impl request_response::Codec for WireCodec {
    type Protocol = StreamProtocol;
    type Request = MeshRequest;
    type Response = MeshResponse;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<MeshRequest>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io).await?)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<MeshResponse>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: MeshRequest,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&req)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: MeshResponse,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&res)?).await
    }
}
