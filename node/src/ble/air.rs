//! The emulated air: Bluetooth LE between processes on one machine, for
//! tests and demonstrations where no adapter is (`meshpay node run
//! --ble-emulated DIR`). It is an emulation, not Bluetooth: only this
//! radio layer differs; the advertisement, the connection policy, the
//! framing and the exchanges above it are the ones a real adapter runs.
//!
//! A directory stands for the air. Each node has a place in it (metres,
//! two coordinates) and binds two Unix sockets there, named by its short
//! id:
//!
//! - `<id>.adv`, a datagram socket: every [`ADVERT_INTERVAL`] each node
//!   sends its 31-byte advertisement, followed by its position (two
//!   little-endian `f64`), to every other `.adv` socket in the directory.
//!   The receiver derives the RSSI from the distance (free-space path
//!   loss, [`rssi_at`]), so a payer picks the nearest payee as it would
//!   by radio. A node that stops stops being heard.
//! - `<id>.gatt`, a stream socket: a central connects to it. Both ends
//!   send `"M"`, the framing version, their short id and the ATT MTU
//!   they support (u16 LE); the connection runs at the smaller MTU, as
//!   an ATT MTU exchange settles. Then each packet (a GATT write or
//!   notification, at most MTU - 3 bytes) travels as a u16 LE length and
//!   its bytes.
//!
//! Timing is not emulated here (packets move at socket speed); the
//! in-process emulated link ([`super::emulated`]) models connection
//! intervals, PHY rate and loss for the benchmarks.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ChannelPort;
use super::advert::{Advertisement, LEGACY_ADVERT_LEN};
use super::framing::{ATT_HEADER, VERSION};
use super::runtime::{BleHandle, IncomingLink, Radio, RadioError, RadioEvent};

/// How often a node advertises.
pub const ADVERT_INTERVAL: Duration = Duration::from_millis(100);
/// The smallest and largest ATT MTU.
const MTU_RANGE: (u16, u16) = (23, 517);
/// Path loss at one metre at 2.4 GHz, dB (free space: 20 log10(4 pi / lambda)).
const LOSS_AT_1M_DB: f64 = 40.0;
const HELLO_LEN: usize = 8;
/// Most connections whose hello is still awaited.
const MAX_HELLOS: usize = 8;
const DATAGRAM_LEN: usize = LEGACY_ADVERT_LEN + 16;

/// Where and how a node sits in the emulated air.
#[derive(Debug, Clone, PartialEq)]
pub struct AirConfig {
    /// The directory that stands for the air.
    pub dir: PathBuf,
    /// The node's position, metres.
    pub position: (f64, f64),
    /// The ATT MTU this node supports (23..=517).
    pub mtu: u16,
    /// Append every packet of this node's connections, both ways, to this
    /// file: what a listener nearby would record (to check what the air
    /// carries).
    pub record: Option<PathBuf>,
}

/// Why the emulated air could not be joined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AirError {
    /// A socket or the directory failed.
    #[error("emulated air in {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// An MTU outside 23..=517.
    #[error("ATT MTU {0} is outside 23..=517")]
    Mtu(u16),
}

/// The RSSI, dBm, of a transmission at `tx_power` dBm heard `metres`
/// away: free-space path loss, 40 dB at one metre and 20 dB more per
/// tenfold distance (closer than 10 cm counts as 10 cm).
pub fn rssi_at(tx_power: i8, metres: f64) -> i16 {
    let loss = LOSS_AT_1M_DB + 20.0 * metres.max(0.1).log10();
    (f64::from(tx_power) - loss).round().clamp(-127.0, 20.0) as i16
}

/// A node's radio in the emulated air; dropping it goes quiet.
#[derive(Debug)]
pub struct AirRadio {
    config: AirConfig,
    recorder: Recorder,
    me: [u8; 4],
    advert: Arc<Mutex<Option<[u8; DATAGRAM_LEN]>>>,
    stop: Arc<AtomicBool>,
}

fn socket_path(dir: &Path, node: [u8; 4], kind: &str) -> PathBuf {
    dir.join(format!("{}.{kind}", hex::encode(node)))
}

impl AirRadio {
    /// Joins the air in `config.dir` as short id `me`, reporting what it
    /// hears and who connects to `events`.
    pub fn open(config: AirConfig, me: [u8; 4], events: BleHandle) -> Result<AirRadio, AirError> {
        if !(MTU_RANGE.0..=MTU_RANGE.1).contains(&config.mtu) {
            return Err(AirError::Mtu(config.mtu));
        }
        let io = |source| AirError::Io {
            dir: config.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(io)?;
        // A socket file left by a node that died is stale; ours replaces it.
        let adv_path = socket_path(&config.dir, me, "adv");
        let gatt_path = socket_path(&config.dir, me, "gatt");
        let _ = std::fs::remove_file(&adv_path);
        let _ = std::fs::remove_file(&gatt_path);
        let ears = UnixDatagram::bind(&adv_path).map_err(io)?;
        ears.set_read_timeout(Some(ADVERT_INTERVAL)).map_err(io)?;
        let listener = UnixListener::bind(&gatt_path).map_err(io)?;
        let mouth = UnixDatagram::unbound().map_err(io)?;
        let recorder = match &config.record {
            Some(path) => Some(Arc::new(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io)?,
            ))),
            None => None,
        };
        let radio = AirRadio {
            recorder: recorder.clone(),
            config: config.clone(),
            me,
            advert: Arc::new(Mutex::new(None)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let position = config.position;
        let (stop, events_heard) = (radio.stop.clone(), events.clone());
        std::thread::spawn(move || listen(&ears, position, &stop, &events_heard));
        let (stop, advert, dir) = (radio.stop.clone(), radio.advert.clone(), config.dir.clone());
        std::thread::spawn(move || beacon(&mouth, &dir, &adv_path, &advert, &stop));
        let mtu = config.mtu;
        std::thread::spawn(move || accept(&listener, me, mtu, &events, &recorder));
        Ok(radio)
    }
}

impl Drop for AirRadio {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(socket_path(&self.config.dir, self.me, "adv"));
        let _ = std::fs::remove_file(socket_path(&self.config.dir, self.me, "gatt"));
    }
}

/// Receives advertisements until stopped; reports each with its RSSI.
fn listen(ears: &UnixDatagram, me: (f64, f64), stop: &AtomicBool, events: &BleHandle) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = ears.recv(&mut buf) else {
            continue;
        };
        // Anything else in the air is noise.
        if n != DATAGRAM_LEN {
            continue;
        }
        let Ok(advert) = Advertisement::decode(&buf[..LEGACY_ADVERT_LEN]) else {
            continue;
        };
        let coordinate = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            f64::from_le_bytes(b)
        };
        let (x, y) = (
            coordinate(LEGACY_ADVERT_LEN),
            coordinate(LEGACY_ADVERT_LEN + 8),
        );
        if !x.is_finite() || !y.is_finite() {
            continue;
        }
        let rssi = rssi_at(advert.tx_power, (x - me.0).hypot(y - me.1));
        if !events.report(RadioEvent::Heard { advert, rssi }) {
            return;
        }
    }
}

/// Sends the current advertisement to every other node in the air, every
/// [`ADVERT_INTERVAL`], until stopped.
fn beacon(
    mouth: &UnixDatagram,
    dir: &Path,
    own: &Path,
    advert: &Mutex<Option<[u8; DATAGRAM_LEN]>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let current = advert.lock().ok().and_then(|a| *a);
        if let (Some(datagram), Ok(entries)) = (current, std::fs::read_dir(dir)) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "adv") && path != own {
                    // A node that left refuses: nobody hears it.
                    let _ = mouth.send_to(&datagram, &path);
                }
            }
        }
        std::thread::sleep(ADVERT_INTERVAL);
    }
}

/// The opening both ends of a connection send.
fn hello(me: [u8; 4], mtu: u16) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[0] = b'M';
    h[1] = VERSION;
    h[2..6].copy_from_slice(&me);
    h[6..].copy_from_slice(&mtu.to_le_bytes());
    h
}

/// Exchanges hellos on a new connection; returns the peer's short id
/// and the connection's MTU.
fn handshake(stream: &mut UnixStream, me: [u8; 4], mtu: u16) -> std::io::Result<([u8; 4], u16)> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(&hello(me, mtu))?;
    let mut theirs = [0u8; HELLO_LEN];
    stream.read_exact(&mut theirs)?;
    stream.set_read_timeout(None)?;
    if theirs[0] != b'M' {
        return Err(bad("not a meshpay node"));
    }
    if theirs[1] != VERSION {
        return Err(bad("another framing version"));
    }
    let mut peer = [0u8; 4];
    peer.copy_from_slice(&theirs[2..6]);
    let their_mtu = u16::from_le_bytes([theirs[6], theirs[7]]);
    Ok((peer, mtu.min(their_mtu).max(MTU_RANGE.0)))
}

/// Where a node's air is recorded, if it is.
type Recorder = Option<Arc<Mutex<std::fs::File>>>;

fn record(recorder: &Recorder, packet: &[u8]) {
    if let Some(file) = recorder
        && let Ok(mut file) = file.lock()
    {
        let _ = file.write_all(packet);
    }
}

/// Carries a connection's packets to and from a [`ChannelPort`]; either
/// side closing ends both directions.
fn bridge(stream: UnixStream, mtu: u16, recorder: &Recorder) -> std::io::Result<ChannelPort> {
    let (port, to_port, from_port) = ChannelPort::new();
    let (heard, said) = (recorder.clone(), recorder.clone());
    let mut reader = stream.try_clone()?;
    let max = usize::from(mtu) - ATT_HEADER;
    std::thread::spawn(move || {
        let mut len = [0u8; 2];
        while reader.read_exact(&mut len).is_ok() {
            let n = usize::from(u16::from_le_bytes(len));
            if n == 0 || n > max {
                // Larger than the MTU allows: the peer broke the rules.
                break;
            }
            let mut packet = vec![0u8; n];
            if reader.read_exact(&mut packet).is_err() {
                break;
            }
            record(&heard, &packet);
            if to_port.send(packet).is_err() {
                break;
            }
        }
        let _ = reader.shutdown(std::net::Shutdown::Both);
    });
    let mut writer = stream;
    std::thread::spawn(move || {
        while let Ok(packet) = from_port.recv() {
            let Ok(n) = u16::try_from(packet.len()) else {
                break;
            };
            record(&said, &packet);
            let mut framed = Vec::with_capacity(packet.len() + 2);
            framed.extend_from_slice(&n.to_le_bytes());
            framed.extend_from_slice(&packet);
            if writer.write_all(&framed).is_err() {
                break;
            }
        }
        // The exchange dropped its port: the connection is done.
        let _ = writer.shutdown(std::net::Shutdown::Both);
    });
    Ok(port)
}

/// Accepts centrals until the process ends; each hello is read on a
/// thread of its own (at most [`MAX_HELLOS`] at once), so a caller that
/// says nothing holds up nobody.
fn accept(listener: &UnixListener, me: [u8; 4], mtu: u16, events: &BleHandle, recorder: &Recorder) {
    let pending = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            continue;
        };
        if pending.load(Ordering::SeqCst) >= MAX_HELLOS {
            continue;
        }
        pending.fetch_add(1, Ordering::SeqCst);
        let (pending, events, recorder) = (pending.clone(), events.clone(), recorder.clone());
        std::thread::spawn(move || {
            let link = handshake(&mut stream, me, mtu).and_then(|(peer, mtu)| {
                Ok(IncomingLink {
                    peer: hex::encode(peer),
                    node: Some(peer),
                    port: bridge(stream, mtu, &recorder)?,
                    mtu,
                })
            });
            pending.fetch_sub(1, Ordering::SeqCst);
            match link {
                Ok(link) => {
                    events.report(RadioEvent::Incoming(link));
                }
                Err(e) => tracing::debug!(error = %e, "emulated connection refused"),
            }
        });
    }
}

impl Radio for AirRadio {
    fn advertise(&mut self, advert: &Advertisement) -> Result<(), RadioError> {
        let mut datagram = [0u8; DATAGRAM_LEN];
        datagram[..LEGACY_ADVERT_LEN].copy_from_slice(&advert.encode());
        datagram[LEGACY_ADVERT_LEN..LEGACY_ADVERT_LEN + 8]
            .copy_from_slice(&self.config.position.0.to_le_bytes());
        datagram[LEGACY_ADVERT_LEN + 8..].copy_from_slice(&self.config.position.1.to_le_bytes());
        *self
            .advert
            .lock()
            .map_err(|_| RadioError("internal state poisoned".into()))? = Some(datagram);
        Ok(())
    }

    fn connect(&mut self, node: [u8; 4]) -> Result<IncomingLink, RadioError> {
        let path = socket_path(&self.config.dir, node, "gatt");
        let failed = |e: std::io::Error| RadioError(format!("{}: {e}", hex::encode(node)));
        let mut stream = UnixStream::connect(&path).map_err(failed)?;
        let (peer, mtu) = handshake(&mut stream, self.me, self.config.mtu).map_err(failed)?;
        if peer != node {
            return Err(RadioError(format!(
                "{} answered as {}",
                hex::encode(node),
                hex::encode(peer)
            )));
        }
        Ok(IncomingLink {
            peer: hex::encode(peer),
            node: Some(peer),
            port: bridge(stream, mtu, &self.recorder).map_err(failed)?,
            mtu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{LinkError, Wait};

    #[test]
    fn rssi_falls_with_distance_as_free_space_does() {
        assert_eq!(rssi_at(0, 1.0), -40);
        assert_eq!(rssi_at(0, 10.0), -60);
        assert_eq!(rssi_at(-8, 10.0), -68);
        assert_eq!(rssi_at(0, 0.0), rssi_at(0, 0.1));
        assert!(rssi_at(0, 2.0) > rssi_at(0, 3.0));
    }

    #[test]
    fn two_radios_hear_each_other_and_connect_at_the_smaller_mtu() {
        use crate::transport::Link;
        let dir = tempfile::tempdir().expect("in a test");
        let (a_handle, a_events) = super::super::runtime::channel();
        let (b_handle, b_events) = super::super::runtime::channel();
        let config = |x: f64, mtu| AirConfig {
            dir: dir.path().to_path_buf(),
            position: (x, 0.0),
            mtu,
            record: None,
        };
        let mut a = AirRadio::open(config(0.0, 517), [1; 4], a_handle).expect("in a test");
        let mut b = AirRadio::open(config(10.0, 185), [2; 4], b_handle).expect("in a test");
        let advert = Advertisement {
            node: [2; 4],
            digest: [9; 4],
            flags: Default::default(),
            tx_power: 0,
        };
        b.advertise(&advert).expect("in a test");
        a.advertise(&Advertisement {
            node: [1; 4],
            ..advert
        })
        .expect("in a test");
        let heard = a_events.next(Duration::from_secs(5)).expect("a hears b");
        let RadioEvent::Heard { advert: got, rssi } = heard else {
            panic!("expected an advertisement, got {heard:?}");
        };
        assert_eq!((got, rssi), (advert, -60));
        let link = a.connect([2; 4]).expect("a connects to b");
        assert_eq!((link.node, link.mtu), (Some([2; 4]), 185));
        let incoming = loop {
            match b_events.next(Duration::from_secs(5)).expect("b sees a") {
                RadioEvent::Incoming(l) => break l,
                RadioEvent::Heard { .. } => continue,
            }
        };
        assert_eq!((incoming.node, incoming.mtu), (Some([1; 4]), 185));
        let mut central = super::super::FramedLink::new(
            link.port,
            super::super::framing::FramingConfig::with_mtu(185),
        );
        let mut peripheral = super::super::FramedLink::new(
            incoming.port,
            super::super::framing::FramingConfig::with_mtu(185),
        );
        let message: Vec<u8> = (0..2_000u32).map(|i| i as u8).collect();
        central.send(&message).expect("in a test");
        let got = loop {
            if let Some(m) = peripheral.try_recv().expect("in a test") {
                break m;
            }
            let _ = central.try_recv();
            peripheral
                .wait(Some(peripheral.now_us() + 10_000))
                .expect("in a test");
        };
        assert_eq!(got, message);
        drop(central);
        let lost = loop {
            match peripheral.try_recv() {
                Err(e) => break e,
                Ok(_) => {
                    let _ = peripheral.wait(Some(peripheral.now_us() + 10_000));
                }
            }
        };
        assert!(matches!(lost, crate::transport::LinkError::Lost { .. }));
    }

    #[test]
    fn garbage_in_the_air_is_ignored_and_an_oversized_packet_closes_the_link() {
        let dir = tempfile::tempdir().expect("in a test");
        let (handle, events) = super::super::runtime::channel();
        let config = AirConfig {
            dir: dir.path().to_path_buf(),
            position: (0.0, 0.0),
            mtu: 23,
            record: None,
        };
        let _radio = AirRadio::open(config, [7; 4], handle).expect("in a test");
        // Noise on the advertising socket, and a caller that is not a node.
        let noise = UnixDatagram::unbound().expect("in a test");
        let adv = socket_path(dir.path(), [7; 4], "adv");
        noise
            .send_to(&[0xff; DATAGRAM_LEN], &adv)
            .expect("in a test");
        noise.send_to(b"short", &adv).expect("in a test");
        let gatt = socket_path(dir.path(), [7; 4], "gatt");
        let mut stranger = UnixStream::connect(&gatt).expect("in a test");
        stranger
            .write_all(b"GET / HTTP/1.1\r\n")
            .expect("in a test");
        assert!(events.next(Duration::from_millis(300)).is_none());
        // A node that sends a packet larger than the MTU allows is cut off.
        let mut rude = UnixStream::connect(&gatt).expect("in a test");
        handshake(&mut rude, [8; 4], 23).expect("in a test");
        let Some(RadioEvent::Incoming(link)) = events.next(Duration::from_secs(5)) else {
            panic!("expected a connection");
        };
        let mut port = link.port;
        // Header and body in one write: the radio may close the link as
        // soon as it reads the length, and a second write would then fail
        // with a broken pipe (a race this test once lost in CI).
        let mut oversized = 21u16.to_le_bytes().to_vec();
        oversized.extend_from_slice(&[0u8; 21]);
        if let Err(e) = rude.write_all(&oversized) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        use super::super::PacketPort;
        let lost = loop {
            match port.wait(Some(port.now_us() + 2_000_000)) {
                Ok(Wait::Deadline) => panic!("the link stayed open"),
                Ok(_) => match port.try_recv_packet() {
                    Ok(Some(p)) => panic!("an oversized packet was delivered: {p:?}"),
                    Ok(None) => {}
                    Err(e) => break e,
                },
                Err(e) => break e,
            }
        };
        assert!(matches!(lost, LinkError::Lost { .. }));
    }
}
