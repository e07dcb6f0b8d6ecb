//! Encryption of a BLE link (threat model T36): an authenticated key
//! exchange bound to both nodes' wallet keys, then every message sealed
//! with ChaCha20-Poly1305. GATT without pairing is readable by anyone
//! nearby; with this, a listener sees only sizes and timing, and nobody
//! between the two nodes can alter, replay, reorder or inject a message.
//!
//! The exchange is a signed ephemeral Diffie-Hellman (the SIGMA pattern),
//! three messages on the link before anything else:
//!
//! ```text
//! 1  I -> R   0x53 'S', version, purpose, I's X25519 ephemeral (32), I's wallet key (32)
//! 2  R -> I   R's X25519 ephemeral (32), R's wallet key (32), sig_R (64)
//! 3  I -> R   sig_I (64)
//!
//! th    = SHA-256("meshpay/v1/ble-link/transcript" || 0 || message 1 || message 2 without sig_R)
//! sig_R = Ed25519 by R's wallet key over "meshpay/v1/ble-link" || 0 || "R" || th
//! sig_I = Ed25519 by I's wallet key over "meshpay/v1/ble-link" || 0 || "I" || th
//! keys  = HKDF-SHA-256(salt th, secret X25519(e_I, e_R), info "meshpay/v1/ble-link/keys"), 64 bytes:
//!         the first 32 seal I -> R, the last 32 seal R -> I
//! ```
//!
//! The purpose (what the initiator wants: to pay, to sync) travels in
//! message 1 so that R can answer at once: R sends sealed messages right
//! after message 2 (a payee its invoice), and I's first sealed messages
//! follow message 3 in the same connection event. R opens nothing from I
//! before message 3 has verified. What R sends before then is readable
//! only by whoever sent message 1 (it alone holds e_I), which is no more
//! than anyone learns by connecting.
//!
//! Each side checks the other's signature over a transcript that holds
//! both ephemerals, so each knows the other holds its wallet key and took
//! part in this very exchange; the keys are fresh per connection (forward
//! secrecy: a wallet key stolen later opens no recorded link). The
//! central also checks that the wallet key answering is the one whose
//! short id it connected to, and a payer that the invoice names that
//! same key. Sealed messages carry no nonce: the nonce is a per-direction
//! counter (96 bits, little-endian), so a replayed, dropped or reordered
//! message fails to open and closes the link.
//!
//! Not hidden: the wallet keys themselves travel in clear in messages 1
//! and 2 (the advertisement already carries their first 4 bytes), and
//! message sizes.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use meshpay_proto::prelude::{Hash, PublicKey, Signature};

use crate::transport::{Link, LinkError, Wait};

/// The domain of the exchange's signatures.
pub const SIGNATURE_TAG: &[u8] = b"meshpay/v1/ble-link";
const TRANSCRIPT_TAG: &[u8] = b"meshpay/v1/ble-link/transcript";
const KEYS_INFO: &[u8] = b"meshpay/v1/ble-link/keys";
/// The first byte of message 1.
const HELLO: u8 = b'S';
/// The exchange's version.
pub const VERSION: u8 = 1;
const HELLO_LEN: usize = 3 + 32 + 32;
const ANSWER_LEN: usize = 32 + 32 + 64;
/// Bytes a sealed message is longer than its plaintext.
pub const OVERHEAD: usize = 16;

/// Why a secure link could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// A message of the exchange had the wrong form.
    #[error("malformed key-exchange message")]
    Malformed,
    /// The peer speaks another version of the exchange.
    #[error("key-exchange version {0}, expected {VERSION}")]
    Version(u8),
    /// The peer's wallet key is not a valid key.
    #[error("the peer's wallet key is not a valid key")]
    BadKey,
    /// The peer's signature does not verify: it does not hold the wallet
    /// key it claims, or the exchange was tampered with.
    #[error("the peer's signature does not verify")]
    BadSignature,
    /// The Diffie-Hellman result is degenerate (a low-order point).
    #[error("degenerate key exchange")]
    Degenerate,
    /// The peer answered with another wallet key than expected.
    #[error("the peer is {found}, not the node connected to")]
    WrongPeer {
        /// The short id found.
        found: String,
    },
    /// The link failed during the exchange.
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// The peer did not answer in time.
    #[error("the peer did not finish the key exchange in time")]
    TimedOut,
    /// The operating system's random number generator failed.
    #[error("random: {0}")]
    Random(String),
    /// The node could not sign (it is stopping).
    #[error("the node's key is unavailable: {0}")]
    Unavailable(String),
}

/// The sealing keys of one link.
struct Keys {
    send: ChaCha20Poly1305,
    receive: ChaCha20Poly1305,
    sent: u64,
    received: u64,
}

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keys")
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(n)
}

/// A fresh X25519 ephemeral: its secret and public halves.
fn ephemeral() -> Result<([u8; 32], [u8; 32]), SecureError> {
    let mut secret = [0u8; 32];
    let mut rng = crate::os_rng().map_err(|e| SecureError::Random(e.to_string()))?;
    rand::Rng::fill_bytes(&mut rng, &mut secret);
    let public = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
    Ok((secret, public))
}

fn transcript(hello: &[u8], answer_unsigned: &[u8]) -> Hash {
    let mut t = Vec::with_capacity(hello.len() + answer_unsigned.len());
    t.extend_from_slice(hello);
    t.extend_from_slice(answer_unsigned);
    Hash::tagged(TRANSCRIPT_TAG, &t)
}

/// What each side signs: its role and the transcript.
fn signed_part(initiator: bool, th: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(33);
    m.push(if initiator { b'I' } else { b'R' });
    m.extend_from_slice(th.as_bytes());
    m
}

fn keys(
    secret: [u8; 32],
    peer_ephemeral: [u8; 32],
    th: &Hash,
    initiator: bool,
) -> Result<Keys, SecureError> {
    let shared = MontgomeryPoint(peer_ephemeral)
        .mul_clamped(secret)
        .to_bytes();
    if shared == [0u8; 32] {
        return Err(SecureError::Degenerate);
    }
    let mut okm = [0u8; 64];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(th.as_bytes()), &shared)
        .expand(KEYS_INFO, &mut okm)
        .map_err(|_| SecureError::Degenerate)?;
    let i_to_r = ChaCha20Poly1305::new(Key::from_slice(&okm[..32]));
    let r_to_i = ChaCha20Poly1305::new(Key::from_slice(&okm[32..]));
    let (send, receive) = if initiator {
        (i_to_r, r_to_i)
    } else {
        (r_to_i, i_to_r)
    };
    Ok(Keys {
        send,
        receive,
        sent: 0,
        received: 0,
    })
}

fn key_at(bytes: &[u8]) -> Result<PublicKey, SecureError> {
    let b: &[u8; 32] = bytes.try_into().map_err(|_| SecureError::Malformed)?;
    PublicKey::from_bytes(b).map_err(|_| SecureError::BadKey)
}

fn array32(bytes: &[u8]) -> Result<[u8; 32], SecureError> {
    bytes.try_into().map_err(|_| SecureError::Malformed)
}

/// The connecting side after message 1.
struct Initiator {
    secret: [u8; 32],
    hello: Vec<u8>,
}

impl core::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Initiator").finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts the exchange as `me`; returns the state and message 1.
    fn start(me: &PublicKey, purpose: u8) -> Result<(Initiator, Vec<u8>), SecureError> {
        let (secret, public) = ephemeral()?;
        let mut hello = Vec::with_capacity(HELLO_LEN);
        hello.extend_from_slice(&[HELLO, VERSION, purpose]);
        hello.extend_from_slice(&public);
        hello.extend_from_slice(me.as_bytes());
        Ok((
            Initiator {
                secret,
                hello: hello.clone(),
            },
            hello,
        ))
    }

    /// Reads message 2: checks the responder's signature; returns the
    /// responder's wallet key and what this side must sign for message 3
    /// (with [`Initiator::finish`]).
    fn answer(&self, answer: &[u8]) -> Result<(PublicKey, Hash), SecureError> {
        if answer.len() != ANSWER_LEN {
            return Err(SecureError::Malformed);
        }
        let peer = key_at(&answer[32..64])?;
        let th = transcript(&self.hello, &answer[..64]);
        let sig = Signature(
            answer[64..]
                .try_into()
                .map_err(|_| SecureError::Malformed)?,
        );
        if !peer.verify(SIGNATURE_TAG, &signed_part(false, &th), &sig) {
            return Err(SecureError::BadSignature);
        }
        Ok((peer, th))
    }

    /// Message 3 from this side's signature over `signed_part(true, th)`,
    /// and the link's keys.
    fn finish(
        self,
        answer: &[u8],
        th: &Hash,
        signature: &Signature,
    ) -> Result<(Keys, Vec<u8>), SecureError> {
        let keys = keys(self.secret, array32(&answer[..32])?, th, true)?;
        Ok((keys, signature.0.to_vec()))
    }
}

/// The side connected to, after message 1.
struct Answering {
    purpose: u8,
    peer: PublicKey,
    secret: [u8; 32],
    peer_ephemeral: [u8; 32],
    unsigned: Vec<u8>,
    th: Hash,
}

impl Answering {
    /// Reads message 1 as `me`.
    fn hello(hello: &[u8], me: &PublicKey) -> Result<Answering, SecureError> {
        if hello.len() != HELLO_LEN || hello[0] != HELLO {
            return Err(SecureError::Malformed);
        }
        if hello[1] != VERSION {
            return Err(SecureError::Version(hello[1]));
        }
        let peer = key_at(&hello[35..67])?;
        let (secret, public) = ephemeral()?;
        let mut unsigned = Vec::with_capacity(ANSWER_LEN);
        unsigned.extend_from_slice(&public);
        unsigned.extend_from_slice(me.as_bytes());
        let th = transcript(hello, &unsigned);
        Ok(Answering {
            purpose: hello[2],
            peer,
            secret,
            peer_ephemeral: array32(&hello[3..35])?,
            unsigned,
            th,
        })
    }

    /// Message 2 from this side's signature over `signed_part(false, th)`.
    fn answer(self, signature: &Signature) -> Result<(Answered, Vec<u8>), SecureError> {
        let keys = keys(self.secret, self.peer_ephemeral, &self.th, false)?;
        let mut answer = self.unsigned;
        answer.extend_from_slice(&signature.0);
        Ok((
            Answered {
                keys,
                peer: self.peer,
                th: self.th,
            },
            answer,
        ))
    }
}

/// The side connected to, after message 2.
struct Answered {
    keys: Keys,
    peer: PublicKey,
    th: Hash,
}

impl Answered {
    /// Reads message 3: checks the initiator's signature.
    fn check_finish(peer: &PublicKey, th: &Hash, finish: &[u8]) -> Result<(), SecureError> {
        let sig = Signature(finish.try_into().map_err(|_| SecureError::Malformed)?);
        if !peer.verify(SIGNATURE_TAG, &signed_part(true, th), &sig) {
            return Err(SecureError::BadSignature);
        }
        Ok(())
    }

    /// The responder's end, secured, awaiting message 3.
    fn into_link<L>(self, inner: L) -> SecureLink<L> {
        SecureLink {
            inner,
            keys: self.keys,
            peer: self.peer,
            awaiting_finish: Some(self.th),
            broken: false,
        }
    }
}

/// The next message on `link` within `limit_ms` of link time.
fn receive(link: &mut dyn Link, limit_ms: u64) -> Result<Vec<u8>, SecureError> {
    let deadline = link.now_us().saturating_add(limit_ms.saturating_mul(1000));
    loop {
        if let Some(m) = link.try_recv()? {
            return Ok(m);
        }
        if link.now_us() >= deadline || link.wait(Some(deadline))? == Wait::Idle {
            return Err(SecureError::TimedOut);
        }
    }
}

/// A link whose messages are sealed after the key exchange; the peer's
/// wallet key is authenticated.
#[derive(Debug)]
pub struct SecureLink<L> {
    inner: L,
    keys: Keys,
    peer: PublicKey,
    /// The responder's transcript until message 3 has verified.
    awaiting_finish: Option<Hash>,
    broken: bool,
}

impl<L: Link> SecureLink<L> {
    /// Runs the exchange as the connecting side over `inner`, telling the
    /// other side `purpose`, signing with `sign` (the wallet key's
    /// [`crate::node::Node::sign_link`]); `expect` is the short id
    /// connected to, if known. Returns once message 3 has left: the link
    /// is ready, and the peer authenticated.
    pub fn connect(
        mut inner: L,
        me: &PublicKey,
        expect: Option<[u8; 4]>,
        purpose: u8,
        sign: impl FnOnce(&[u8]) -> Result<Signature, SecureError>,
        limit_ms: u64,
    ) -> Result<Self, SecureError> {
        let (state, hello) = Initiator::start(me, purpose)?;
        inner.send(&hello)?;
        let answer = receive(&mut inner, limit_ms)?;
        let (peer, th) = state.answer(&answer)?;
        if let Some(id) = expect
            && peer.as_bytes()[..4] != id
        {
            return Err(SecureError::WrongPeer {
                found: hex::encode(&peer.as_bytes()[..4]),
            });
        }
        let signature = sign(&signed_part(true, &th))?;
        let (keys, finish) = state.finish(&answer, &th, &signature)?;
        inner.send(&finish)?;
        Ok(SecureLink {
            inner,
            keys,
            peer,
            awaiting_finish: None,
            broken: false,
        })
    }

    /// Runs the exchange as the side connected to; returns the link and
    /// the purpose the other side named, as soon as message 2 has left.
    /// The peer's key is its claim until its message 3 verifies, which
    /// happens before any message from it is opened (a failure closes
    /// the link).
    pub fn accept(
        mut inner: L,
        me: &PublicKey,
        sign: impl FnOnce(&[u8]) -> Result<Signature, SecureError>,
        limit_ms: u64,
    ) -> Result<(Self, u8), SecureError> {
        let hello = receive(&mut inner, limit_ms)?;
        let state = Answering::hello(&hello, me)?;
        let purpose = state.purpose;
        let signature = sign(&signed_part(false, &state.th))?;
        let (state, answer) = state.answer(&signature)?;
        inner.send(&answer)?;
        Ok((state.into_link(inner), purpose))
    }

    /// The peer's wallet key: authenticated by the exchange (on the
    /// accepting side, once [`SecureLink::is_authenticated`]).
    pub fn peer(&self) -> &PublicKey {
        &self.peer
    }

    /// Whether the peer's signature has verified (always on the
    /// connecting side; on the accepting side once message 3 arrived).
    pub fn is_authenticated(&self) -> bool {
        self.awaiting_finish.is_none()
    }

    /// The link underneath (its counters, its MTU).
    pub fn inner(&self) -> &L {
        &self.inner
    }
}

/// Carries the next message from `from` to `to`, two ends of one link
/// that share a clock (an emulated or in-memory pair), in one thread.
fn pass<L: Link>(from: &mut L, to: &mut L) -> Result<Vec<u8>, SecureError> {
    loop {
        if let Some(m) = to.try_recv()? {
            return Ok(m);
        }
        // Let the sender take credit grants.
        from.try_recv()?;
        if to.wait(None)? == Wait::Idle {
            return Err(SecureError::TimedOut);
        }
    }
}

/// The connecting end of an exchange run by [`open_pair`], message 2 on
/// its way to it.
#[derive(Debug)]
pub struct Opening<L> {
    link: L,
    state: Initiator,
    initiator: meshpay_proto::prelude::SecretKey,
}

impl<L: Link> Opening<L> {
    /// Takes message 2 (the responder's end, `other`, is pumped for the
    /// link's credits), sends message 3: the connecting end, secured.
    pub fn finish(mut self, other: &mut SecureLink<L>) -> Result<SecureLink<L>, SecureError> {
        let answer = pass(&mut other.inner, &mut self.link)?;
        let (peer, th) = self.state.answer(&answer)?;
        let signature = self.initiator.sign(SIGNATURE_TAG, &signed_part(true, &th));
        let (keys, finish) = self.state.finish(&answer, &th, &signature)?;
        self.link.send(&finish)?;
        Ok(SecureLink {
            inner: self.link,
            keys,
            peer,
            awaiting_finish: None,
            broken: false,
        })
    }
}

/// Starts the exchange between the two ends of one link that share a clock
/// (an emulated or in-memory pair: tests and the benchmark) in one
/// thread, `initiator` holding end `a`: message 1 is delivered and message
/// 2 sent. Returns the connecting end, to finish with [`Opening::finish`],
/// and the responder's end, ready to send (as a payee sends its invoice
/// at once).
pub fn open_pair<L: Link>(
    mut a: L,
    mut b: L,
    initiator: &meshpay_proto::prelude::SecretKey,
    responder: &meshpay_proto::prelude::SecretKey,
    purpose: u8,
) -> Result<(Opening<L>, SecureLink<L>), SecureError> {
    let (state, hello) = Initiator::start(&initiator.public(), purpose)?;
    a.send(&hello)?;
    let hello = pass(&mut a, &mut b)?;
    let answering = Answering::hello(&hello, &responder.public())?;
    let signature = responder.sign(SIGNATURE_TAG, &signed_part(false, &answering.th));
    let (answered, answer) = answering.answer(&signature)?;
    b.send(&answer)?;
    Ok((
        Opening {
            link: a,
            state,
            initiator: initiator.clone(),
        },
        answered.into_link(b),
    ))
}

/// The whole exchange over a shared-clock pair ([`open_pair`], then
/// [`Opening::finish`]).
pub fn establish_pair<L: Link>(
    a: L,
    b: L,
    initiator: &meshpay_proto::prelude::SecretKey,
    responder: &meshpay_proto::prelude::SecretKey,
) -> Result<(SecureLink<L>, SecureLink<L>), SecureError> {
    let (opening, mut b) = open_pair(a, b, initiator, responder, 0)?;
    let a = opening.finish(&mut b)?;
    Ok((a, b))
}

impl<L: Link> Link for SecureLink<L> {
    fn send(&mut self, message: &[u8]) -> Result<(), LinkError> {
        if self.broken {
            return Err(LinkError::Tampered);
        }
        let sealed = self
            .keys
            .send
            .encrypt(&nonce(self.keys.sent), message)
            .map_err(|_| LinkError::TooLarge {
                len: message.len(),
                max: usize::MAX,
            })?;
        self.keys.sent += 1;
        self.inner.send(&sealed)
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        if self.broken {
            return Err(LinkError::Tampered);
        }
        if let Some(th) = self.awaiting_finish {
            let Some(finish) = self.inner.try_recv()? else {
                return Ok(None);
            };
            if Answered::check_finish(&self.peer, &th, &finish).is_err() {
                self.broken = true;
                return Err(LinkError::Tampered);
            }
            self.awaiting_finish = None;
        }
        let Some(sealed) = self.inner.try_recv()? else {
            return Ok(None);
        };
        match self
            .keys
            .receive
            .decrypt(&nonce(self.keys.received), sealed.as_slice())
        {
            Ok(m) => {
                self.keys.received += 1;
                Ok(Some(m))
            }
            Err(_) => {
                self.broken = true;
                Err(LinkError::Tampered)
            }
        }
    }

    fn now_us(&self) -> u64 {
        self.inner.now_us()
    }

    fn wait(&mut self, deadline_us: Option<u64>) -> Result<Wait, LinkError> {
        if self.broken {
            return Err(LinkError::Tampered);
        }
        self.inner.wait(deadline_us)
    }

    fn is_flushed(&self) -> bool {
        self.inner.is_flushed()
    }
}

#[cfg(test)]
mod tests {
    use meshpay_proto::prelude::SecretKey;

    use super::*;
    use crate::ble::framing::FramingConfig;
    use crate::ble::{ChannelPort, FramedLink};
    use crate::transport::MemoryLink;

    fn sign_with(key: &SecretKey) -> impl FnOnce(&[u8]) -> Result<Signature, SecureError> + '_ {
        move |part| Ok(key.sign(SIGNATURE_TAG, part))
    }

    /// Both ends, secured over a memory link.
    fn pair(
        i_key: &SecretKey,
        r_key: &SecretKey,
    ) -> (SecureLink<MemoryLink>, SecureLink<MemoryLink>) {
        let (a, b) = MemoryLink::pair();
        let (a, b) = establish_pair(a, b, i_key, r_key).expect("in a test");
        assert_eq!((a.peer, b.peer), (r_key.public(), i_key.public()));
        (a, b)
    }

    #[test]
    fn sealed_messages_round_trip_both_ways_and_replays_fail() {
        let (i, r) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
        );
        let (mut a, mut b) = pair(&i, &r);
        a.send(b"invoice please").expect("in a test");
        a.send(b"second").expect("in a test");
        assert_eq!(
            b.try_recv().expect("in a test").as_deref(),
            Some(&b"invoice please"[..])
        );
        assert_eq!(
            b.try_recv().expect("in a test").as_deref(),
            Some(&b"second"[..])
        );
        b.send(b"here it is").expect("in a test");
        assert_eq!(
            a.try_recv().expect("in a test").as_deref(),
            Some(&b"here it is"[..])
        );
        // A sealed message sent again (a replay) does not open.
        let sealed = a
            .keys
            .send
            .encrypt(&nonce(0), &b"old"[..])
            .expect("in a test");
        a.inner.send(&sealed).expect("in a test");
        assert_eq!(b.try_recv(), Err(LinkError::Tampered));
        assert_eq!(
            b.send(b"x"),
            Err(LinkError::Tampered),
            "the link stays closed"
        );
    }

    #[test]
    fn an_altered_or_reordered_message_closes_the_link() {
        let (i, r) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
        );
        let (mut a, mut b) = pair(&i, &r);
        let first = a
            .keys
            .send
            .encrypt(&nonce(0), &b"one"[..])
            .expect("in a test");
        let second = a
            .keys
            .send
            .encrypt(&nonce(1), &b"two"[..])
            .expect("in a test");
        a.inner.send(&second).expect("in a test");
        a.inner.send(&first).expect("in a test");
        assert_eq!(b.try_recv(), Err(LinkError::Tampered));

        let (mut a, mut b) = pair(&i, &r);
        let mut flipped = a
            .keys
            .send
            .encrypt(&nonce(0), &b"pay 4.50"[..])
            .expect("in a test");
        flipped[3] ^= 1;
        a.inner.send(&flipped).expect("in a test");
        assert_eq!(b.try_recv(), Err(LinkError::Tampered));
    }

    #[test]
    fn a_node_that_lacks_the_key_it_claims_is_refused_by_both_sides() {
        let (i, r, thief) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
            SecretKey::from_seed(&[3; 32]),
        );
        // A responder that claims r's key but signs with another.
        let (initiator, hello) = Initiator::start(&i.public(), 1).expect("in a test");
        let answering = Answering::hello(&hello, &r.public()).expect("in a test");
        let forged = thief.sign(SIGNATURE_TAG, &signed_part(false, &answering.th));
        let (_, answer) = answering.answer(&forged).expect("in a test");
        assert_eq!(
            initiator.answer(&answer).err(),
            Some(SecureError::BadSignature)
        );
        // An initiator that claims i's key but signs with another.
        let (initiator, hello) = Initiator::start(&i.public(), 1).expect("in a test");
        let answering = Answering::hello(&hello, &r.public()).expect("in a test");
        let r_sig = r.sign(SIGNATURE_TAG, &signed_part(false, &answering.th));
        let (answered, answer) = answering.answer(&r_sig).expect("in a test");
        let (_, th) = initiator.answer(&answer).expect("in a test");
        let forged = thief.sign(SIGNATURE_TAG, &signed_part(true, &th));
        let (_, finish) = initiator.finish(&answer, &th, &forged).expect("in a test");
        assert_eq!(
            Answered::check_finish(&answered.peer, &answered.th, &finish).err(),
            Some(SecureError::BadSignature)
        );
        // A signature from another exchange (another transcript) fails too.
        let (_, hello2) = Initiator::start(&i.public(), 1).expect("in a test");
        let other = Answering::hello(&hello2, &r.public()).expect("in a test");
        assert_ne!(other.th, th);
        // Bad input is typed, never a panic.
        assert_eq!(
            Answering::hello(&[], &r.public()).err(),
            Some(SecureError::Malformed)
        );
        let mut v2 = hello2.clone();
        v2[1] = 2;
        assert_eq!(
            Answering::hello(&v2, &r.public()).err(),
            Some(SecureError::Version(2))
        );
    }

    #[test]
    fn the_side_connected_to_opens_nothing_before_message_3_verifies() {
        let (i, r, thief) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
            SecretKey::from_seed(&[3; 32]),
        );
        let (mut a, b) = MemoryLink::pair();
        let (state, hello) = Initiator::start(&i.public(), 1).expect("in a test");
        a.send(&hello).expect("in a test");
        let (mut b, purpose) =
            SecureLink::accept(b, &r.public(), sign_with(&r), 1_000).expect("in a test");
        assert_eq!((purpose, b.is_authenticated()), (1, false));
        // It may already send (a payee its invoice)...
        b.send(b"invoice").expect("in a test");
        let answer = a.try_recv().expect("in a test").expect("message 2");
        let (_, th) = state.answer(&answer).expect("in a test");
        // ...but a message 3 signed by another key than the one claimed
        // closes the link before the sealed transfer behind it is opened.
        let forged = thief.sign(SIGNATURE_TAG, &signed_part(true, &th));
        let (keys, finish) = state.finish(&answer, &th, &forged).expect("in a test");
        a.send(&finish).expect("in a test");
        let transfer = keys
            .send
            .encrypt(&nonce(0), &b"transfer"[..])
            .expect("in a test");
        a.send(&transfer).expect("in a test");
        assert_eq!(b.try_recv(), Err(LinkError::Tampered));
        assert!(!b.is_authenticated());
    }

    proptest::proptest! {
        /// Whatever bytes a peer sends at any step of the exchange, or as a
        /// sealed message, the answer is a typed error, never a panic.
        #[test]
        fn any_bytes_from_a_peer_are_refused_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let (i, r) = (SecretKey::from_seed(&[1; 32]), SecretKey::from_seed(&[2; 32]));
            let _ = Answering::hello(&bytes, &r.public());
            let (initiator, hello) = Initiator::start(&i.public(), 1).expect("in a test");
            let _ = initiator.answer(&bytes);
            let answering = Answering::hello(&hello, &r.public()).expect("in a test");
            let r_sig = r.sign(SIGNATURE_TAG, &signed_part(false, &answering.th));
            let (answered, _) = answering.answer(&r_sig).expect("in a test");
            proptest::prop_assert!(Answered::check_finish(&answered.peer, &answered.th, &bytes).is_err());
            let (mut a, mut b) = pair(&i, &r);
            a.inner.send(&bytes).expect("in a test");
            // Not sealed by the peer: refused (a forgery of 16+ bytes
            // passing Poly1305 is out of reach).
            let got = b.try_recv();
            proptest::prop_assert!(got.is_err(), "{:?}", got);
        }
    }

    /// Two framed links over channel ports wired by threads that record
    /// every packet, as a listener nearby would.
    fn sniffed_pair() -> (
        FramedLink<ChannelPort>,
        FramedLink<ChannelPort>,
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    ) {
        let air = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, to_a, from_a) = ChannelPort::new();
        let (b, to_b, from_b) = ChannelPort::new();
        for (from, to) in [(from_a, to_b), (from_b, to_a)] {
            let air = air.clone();
            std::thread::spawn(move || {
                while let Ok(p) = from.recv() {
                    air.lock().expect("in a test").extend_from_slice(&p);
                    if to.send(p).is_err() {
                        break;
                    }
                }
            });
        }
        let config = FramingConfig::with_mtu(185);
        (FramedLink::new(a, config), FramedLink::new(b, config), air)
    }

    #[test]
    fn over_real_threads_a_listener_sees_no_plaintext_and_the_wrong_node_is_named() {
        let (i, r) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
        );
        let (a, b, air) = sniffed_pair();
        let r_pub = r.public();
        let expect = Some(r_pub.as_bytes()[..4].try_into().expect("4 bytes"));
        let responder = std::thread::spawn(move || {
            let (mut b, purpose) =
                SecureLink::accept(b, &r_pub, sign_with(&r), 5_000).expect("in a test");
            assert_eq!(purpose, 7);
            let m = loop {
                if let Some(m) = b.try_recv().expect("in a test") {
                    break m;
                }
                b.wait(Some(b.now_us() + 100_000)).expect("in a test");
            };
            (m, *b.peer())
        });
        let mut a = SecureLink::connect(a, &i.public(), expect, 7, sign_with(&i), 5_000)
            .expect("in a test");
        assert_eq!(
            Some(a.peer().as_bytes()[..4].try_into().expect("4 bytes")),
            expect
        );
        let secret = b"memo: the secret recipe, amount 4.50 EUR".to_vec();
        a.send(&secret).expect("in a test");
        let (got, peer) = responder.join().expect("in a test");
        assert_eq!((got, peer), (secret.clone(), i.public()));
        let heard = air.lock().expect("in a test").clone();
        assert!(
            !heard
                .windows(12)
                .any(|w| secret.windows(12).any(|s| s == w))
        );

        // A central that expected another node says which one answered.
        let (a, b, _) = sniffed_pair();
        let r = SecretKey::from_seed(&[2; 32]);
        let r_pub = r.public();
        std::thread::spawn(move || SecureLink::accept(b, &r_pub, sign_with(&r), 5_000).map(|_| ()));
        let err = SecureLink::connect(a, &i.public(), Some([9; 4]), 7, sign_with(&i), 5_000)
            .expect_err("refused");
        assert!(matches!(err, SecureError::WrongPeer { .. }), "{err}");
    }
}
