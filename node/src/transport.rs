//! The transport trait: a bidirectional link that carries whole messages
//! between two nodes, with a clock and a typed error for a lost connection.
//!
//! Payments and ledger syncs ([`crate::exchange`]) run over any [`Link`]:
//! the in-memory [`MemoryLink`] here, the emulated BLE link
//! ([`crate::ble::emulated`]) and, with the `ble` feature, a real GATT
//! connection ([`crate::ble::FramedLink`] over a
//! [`ChannelPort`](crate::ble::ChannelPort)).
//!
//! A link is reliable and in order while it lives (as GATT and TCP are);
//! what it can do is die. After [`LinkError::Lost`] no further message
//! arrives, and none arrives in part: a message is delivered whole or not
//! at all.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::ble::framing::FramingError;

/// What [`Link::wait`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Something may have arrived: call [`Link::try_recv`].
    Ready,
    /// The deadline passed with nothing new.
    Deadline,
    /// Nothing is in flight and no deadline was given: nothing will ever
    /// arrive (only links that can know this, the in-process ones, say so).
    Idle,
}

/// Why a link failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The connection is gone. `partial` bytes of a message had arrived
    /// and are discarded: a message is never delivered in part.
    #[error("connection lost ({partial} bytes of an unfinished message discarded)")]
    Lost {
        /// Bytes of an unfinished incoming message that were dropped.
        partial: usize,
    },
    /// A message larger than the link carries.
    #[error("message of {len} bytes exceeds the link's limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer broke the BLE framing rules; the link is closed.
    #[error("peer broke the framing: {0}")]
    Framing(#[from] FramingError),
    /// A message failed its authentication (altered, replayed, reordered
    /// or forged on the way); the link is closed.
    #[error("a message failed its authentication; the link is closed")]
    Tampered,
}

/// A bidirectional message link to one peer.
pub trait Link {
    /// Hands a whole message to the link for the peer.
    fn send(&mut self, message: &[u8]) -> Result<(), LinkError>;

    /// The next whole message from the peer, if one has arrived. Never
    /// blocks.
    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError>;

    /// The link's clock in microseconds: virtual for an emulated link,
    /// monotonic since the connection for a real one.
    fn now_us(&self) -> u64;

    /// Lets time pass until something may have arrived, or until
    /// `deadline_us` (on [`Link::now_us`]'s clock).
    fn wait(&mut self, deadline_us: Option<u64>) -> Result<Wait, LinkError>;

    /// Whether everything handed to [`Link::send`] has left this end (a
    /// link with flow control may hold messages until the peer grants
    /// credit). Closing the link before then loses them.
    fn is_flushed(&self) -> bool {
        true
    }
}

/// Both ends of an in-memory link: messages arrive at once, whole.
#[derive(Debug, Default)]
struct Wire {
    /// `queues[i]` holds messages for end `i`.
    queues: [VecDeque<Vec<u8>>; 2],
    now_us: u64,
    closed: bool,
}

/// One end of an in-process link with instant delivery and a virtual
/// clock that moves only when both ends are idle and a timer is due: the
/// transport of [`crate::local`].
#[derive(Debug)]
pub struct MemoryLink {
    wire: Rc<RefCell<Wire>>,
    end: usize,
}

impl MemoryLink {
    /// A connected pair.
    pub fn pair() -> (MemoryLink, MemoryLink) {
        let wire = Rc::new(RefCell::new(Wire::default()));
        (
            MemoryLink {
                wire: wire.clone(),
                end: 0,
            },
            MemoryLink { wire, end: 1 },
        )
    }

    /// Closes the link for both ends.
    pub fn close(&self) {
        self.wire.borrow_mut().closed = true;
    }
}

impl Link for MemoryLink {
    fn send(&mut self, message: &[u8]) -> Result<(), LinkError> {
        let mut wire = self.wire.borrow_mut();
        if wire.closed {
            return Err(LinkError::Lost { partial: 0 });
        }
        wire.queues[1 - self.end].push_back(message.to_vec());
        Ok(())
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        let mut wire = self.wire.borrow_mut();
        match wire.queues[self.end].pop_front() {
            Some(m) => Ok(Some(m)),
            None if wire.closed => Err(LinkError::Lost { partial: 0 }),
            None => Ok(None),
        }
    }

    fn now_us(&self) -> u64 {
        self.wire.borrow().now_us
    }

    fn wait(&mut self, deadline_us: Option<u64>) -> Result<Wait, LinkError> {
        let mut wire = self.wire.borrow_mut();
        if wire.queues.iter().any(|q| !q.is_empty()) {
            return Ok(Wait::Ready);
        }
        if wire.closed {
            return Err(LinkError::Lost { partial: 0 });
        }
        match deadline_us {
            Some(d) => {
                wire.now_us = wire.now_us.max(d);
                Ok(Wait::Deadline)
            }
            None => Ok(Wait::Idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_link_delivers_in_order_and_reports_loss() {
        let (mut a, mut b) = MemoryLink::pair();
        a.send(b"one").expect("in a test");
        a.send(b"two").expect("in a test");
        assert_eq!(
            b.try_recv().expect("in a test").as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            b.try_recv().expect("in a test").as_deref(),
            Some(&b"two"[..])
        );
        assert_eq!(b.try_recv().expect("in a test"), None);
        assert_eq!(b.wait(None).expect("in a test"), Wait::Idle);
        assert_eq!(b.wait(Some(5_000)).expect("in a test"), Wait::Deadline);
        assert_eq!(a.now_us(), 5_000);
        a.close();
        assert_eq!(b.try_recv(), Err(LinkError::Lost { partial: 0 }));
        assert_eq!(a.send(b"x"), Err(LinkError::Lost { partial: 0 }));
    }
}
