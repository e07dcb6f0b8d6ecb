//! A message [`Link`] over any packet carrier: [`Framing`] on top of a
//! [`PacketPort`] (the emulated radio, or a GATT connection through
//! [`ChannelPort`]).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::framing::{Framing, FramingConfig, FramingError};
use crate::transport::{Link, LinkError, Wait};

/// A carrier of packets of at most `ATT_MTU - 3` bytes, reliable and in
/// order while the connection lives (GATT writes-without-response and
/// notifications ride on the link layer's acknowledged PDUs).
pub trait PacketPort {
    /// Sends one packet.
    fn send_packet(&mut self, packet: Vec<u8>) -> Result<(), LinkError>;
    /// The next packet that has arrived; `Err(Lost)` once the connection
    /// is gone and every packet that arrived before has been taken.
    fn try_recv_packet(&mut self) -> Result<Option<Vec<u8>>, LinkError>;
    /// The carrier's clock in microseconds.
    fn now_us(&self) -> u64;
    /// Lets time pass until a packet may have arrived or the deadline.
    fn wait(&mut self, deadline_us: Option<u64>) -> Result<Wait, LinkError>;
}

/// Framing over a packet carrier: the BLE message link.
#[derive(Debug)]
pub struct FramedLink<P> {
    framing: Framing,
    port: P,
    /// The carrier is gone (remembered so the error repeats).
    lost: bool,
    /// The peer broke the framing (remembered so the error repeats).
    broken: Option<FramingError>,
}

impl<P: PacketPort> FramedLink<P> {
    /// Frames messages over `port` with `config`.
    pub fn new(port: P, config: FramingConfig) -> Self {
        FramedLink {
            framing: Framing::new(config),
            port,
            lost: false,
            broken: None,
        }
    }

    /// The framing state (counters, configuration).
    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// The packet carrier.
    pub fn port(&self) -> &P {
        &self.port
    }

    fn lost(&mut self) -> LinkError {
        self.lost = true;
        LinkError::Lost {
            partial: self.framing.partial_len(),
        }
    }

    fn check(&self) -> Result<(), LinkError> {
        match self.broken {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Hands every packet the framing allows to the carrier.
    fn flush(&mut self) -> Result<(), LinkError> {
        while let Some(p) = self.framing.poll_packet() {
            if self.port.send_packet(p).is_err() {
                return Err(self.lost());
            }
        }
        Ok(())
    }

    /// Takes every packet that has arrived into the framing.
    fn take_packets(&mut self) -> Result<(), LinkError> {
        if self.lost {
            return Ok(());
        }
        loop {
            match self.port.try_recv_packet() {
                Ok(Some(p)) => {
                    if let Err(e) = self.framing.handle_packet(&p) {
                        self.broken = Some(e);
                        return Err(e.into());
                    }
                }
                Ok(None) => return Ok(()),
                Err(_) => {
                    self.lost = true;
                    return Ok(());
                }
            }
        }
    }
}

impl<P: PacketPort> Link for FramedLink<P> {
    fn send(&mut self, message: &[u8]) -> Result<(), LinkError> {
        self.check()?;
        if self.lost {
            return Err(self.lost());
        }
        self.framing
            .send_message(message)
            .map_err(|_| LinkError::TooLarge {
                len: message.len(),
                max: self.framing.config().max_message,
            })?;
        self.flush()
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        self.check()?;
        self.take_packets()?;
        let message = match self.framing.poll_message() {
            Ok(m) => m,
            Err(e) => {
                self.broken = Some(e);
                return Err(e.into());
            }
        };
        if !self.lost {
            // Consuming may have freed credit for the peer. A peer that
            // is gone shows on the next call: what has arrived is still
            // delivered.
            let _ = self.flush();
        }
        match message {
            Some(m) => Ok(Some(m)),
            None if self.lost => Err(self.lost()),
            None => Ok(None),
        }
    }

    fn now_us(&self) -> u64 {
        self.port.now_us()
    }

    fn is_flushed(&self) -> bool {
        !self.framing.has_unsent()
    }

    fn wait(&mut self, deadline_us: Option<u64>) -> Result<Wait, LinkError> {
        self.check()?;
        if self.lost {
            return Err(self.lost());
        }
        self.flush()?;
        match self.port.wait(deadline_us) {
            Ok(w) => Ok(w),
            // Packets that arrived before the loss are still delivered.
            Err(_) => {
                self.lost = true;
                Ok(Wait::Ready)
            }
        }
    }
}

/// A packet carrier fed by channels: the bridge between a GATT connection
/// served by an async task (btleplug or bluer) and an exchange driven on
/// a blocking thread. The task forwards received packets into `incoming`
/// and writes whatever arrives on `outgoing`; dropping its sender ends
/// the connection.
#[derive(Debug)]
pub struct ChannelPort {
    incoming: mpsc::Receiver<Vec<u8>>,
    outgoing: mpsc::Sender<Vec<u8>>,
    started: Instant,
    pending: Option<Vec<u8>>,
    closed: bool,
}

impl ChannelPort {
    /// A port and the task's ends: `(port, to_port, from_port)`.
    pub fn new() -> (ChannelPort, mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
        let (to_port, incoming) = mpsc::channel();
        let (outgoing, from_port) = mpsc::channel();
        (
            ChannelPort {
                incoming,
                outgoing,
                started: Instant::now(),
                pending: None,
                closed: false,
            },
            to_port,
            from_port,
        )
    }
}

impl PacketPort for ChannelPort {
    fn send_packet(&mut self, packet: Vec<u8>) -> Result<(), LinkError> {
        self.outgoing
            .send(packet)
            .map_err(|_| LinkError::Lost { partial: 0 })
    }

    fn try_recv_packet(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        if self.closed {
            return Err(LinkError::Lost { partial: 0 });
        }
        match self.incoming.try_recv() {
            Ok(p) => Ok(Some(p)),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => {
                self.closed = true;
                Err(LinkError::Lost { partial: 0 })
            }
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn wait(&mut self, deadline_us: Option<u64>) -> Result<Wait, LinkError> {
        if self.pending.is_some() {
            return Ok(Wait::Ready);
        }
        if self.closed {
            return Err(LinkError::Lost { partial: 0 });
        }
        let timeout = match deadline_us {
            Some(d) => Duration::from_micros(d.saturating_sub(self.now_us())),
            // A real link never knows it is idle; wake up now and then.
            None => Duration::from_secs(1),
        };
        match self.incoming.recv_timeout(timeout) {
            Ok(p) => {
                self.pending = Some(p);
                Ok(Wait::Ready)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(Wait::Deadline),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.closed = true;
                Err(LinkError::Lost { partial: 0 })
            }
        }
    }
}
