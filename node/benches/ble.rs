//! BLE figures over the emulated link (issue #7):
//!
//! - payment handshake, connection established to receipt stored at the
//!   payer, at MTU 23, 185, 244 and 517, 15 ms interval, LE 1M (goal at
//!   MTU 185: at most 100 ms), on a plain link and on the encrypted link
//!   the node runs (its key exchange included);
//! - bulk ledger sync throughput against the link's capacity (goal: at
//!   least 70 %).
//!
//! Each figure is the modelled link time (deterministic virtual clock)
//! plus the measured time of the protocol code in this process (signing,
//! checking, automerge, redb commits), taken as if they never overlapped;
//! the lower bounds come from the same link model in the same run.
//!
//! `cargo bench -p meshpay-node --bench ble`

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use std::time::Instant;

use fixture::World;
use meshpay_node::ble::emulated::{self, EmulatedConfig};
use meshpay_node::ble::secure::open_pair;
use meshpay_node::exchange::{
    Conversation, ExchangeError, Intent, PayeeSide, PayerSide, Side, SyncSide, drive_pair, step,
};
use meshpay_node::node::Node;
use meshpay_node::transport::Link;
use meshpay_proto::prelude::*;
use meshpay_proto::sync::SyncConfig;

const RUNS: usize = 30;

/// The payer's side, noting the link time at which the receipt was stored.
struct Timed {
    inner: PayerSide,
    done_at: Option<Millis>,
}

impl Conversation for Timed {
    fn channel(&self) -> meshpay_node::exchange::Channel {
        self.inner.channel()
    }
    fn handle(&mut self, node: &mut Node, m: &[u8], now: Millis) -> Result<(), ExchangeError> {
        self.inner.handle(node, m, now)?;
        if self.done_at.is_none() && self.inner.is_done() {
            self.done_at = Some(now);
        }
        Ok(())
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.inner.poll_transmit()
    }
    fn poll_timeout(&self) -> Option<Millis> {
        self.inner.poll_timeout()
    }
    fn handle_timeout(&mut self, node: &mut Node, now: Millis) -> Result<(), ExchangeError> {
        self.inner.handle_timeout(node, now)
    }
    fn is_done(&self) -> bool {
        self.inner.is_done()
    }
}

struct PaymentRun {
    link_ms: f64,
    compute_ms: f64,
    bytes: u64,
}

fn payment(config: EmulatedConfig, secure: bool) -> PaymentRun {
    let world = World::new();
    let mut payer = world.funded("payer", 11);
    let mut payee = world.node("payee", 12);
    let key = SecretKey::from_seed(&[12; 32]);
    let invoice = Invoice {
        payee: key.public(),
        amount: 450,
        currency: world.eur,
        nonce: Nonce([9; 16]),
        memo: Some("coffee".into()),
        credential: None,
    };
    let started = Instant::now();
    let mut es = PayeeSide::new(
        PayeeSession::with_invoice(key, invoice, Millis(0)),
        world.now,
    );
    let session = payer
        .start_payment(
            450,
            world.now,
            PayerConfig {
                send_allowance: true,
                ..PayerConfig::default()
            },
        )
        .expect("start");
    let mut ps = Timed {
        inner: PayerSide::new(session),
        done_at: None,
    };
    let (la, lb) = emulated::pair(config);
    let s = if secure {
        // The payer connects and starts the key exchange, naming its
        // intent; the payee seals its invoice right behind message 2, and
        // the payer's transfer follows message 3. (The node signs with the
        // wallet keys; these stand in for them.)
        let (opening, mut sb) = open_pair(
            la,
            lb,
            &SecretKey::from_seed(&[11; 32]),
            &SecretKey::from_seed(&[12; 32]),
            Intent::Pay as u8,
        )
        .expect("key exchange");
        step(&mut Side {
            node: &mut payee,
            conversation: &mut es,
            link: &mut sb,
        })
        .expect("invoice");
        let mut sa = opening.finish(&mut sb).expect("key exchange");
        run_payment(&mut payer, &mut payee, &mut ps, &mut es, &mut sa, &mut sb);
        sa.inner().port().stats()
    } else {
        let (mut la, mut lb) = (la, lb);
        run_payment(&mut payer, &mut payee, &mut ps, &mut es, &mut la, &mut lb);
        la.port().stats()
    };
    let compute_ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(matches!(ps.inner.state(), PayerState::Paid(_)));
    PaymentRun {
        link_ms: ps.done_at.expect("paid").0 as f64,
        compute_ms,
        bytes: s.payload_bytes[0] + s.payload_bytes[1],
    }
}

fn run_payment(
    payer: &mut Node,
    payee: &mut Node,
    ps: &mut Timed,
    es: &mut PayeeSide,
    a: &mut dyn Link,
    b: &mut dyn Link,
) {
    drive_pair(
        Side {
            node: payer,
            conversation: ps,
            link: a,
        },
        Side {
            node: payee,
            conversation: es,
            link: b,
        },
        10_000,
    )
    .expect("payment");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn payments() {
    for secure in [false, true] {
        payments_on(secure);
    }
}

fn payments_on(secure: bool) {
    println!(
        "payment handshake, connection established -> receipt stored at the payer, {}",
        if secure {
            "encrypted link (key exchange included)"
        } else {
            "plain link"
        }
    );
    println!("(15 ms interval, LE 1M; link time from the model, compute measured; p50 of {RUNS})");
    println!(
        "{:>5} {:>9} {:>11} {:>10} {:>9} {:>16}",
        "MTU",
        "link ms",
        "compute ms",
        "total ms",
        "bytes",
        if secure {
            "bound: 3 events"
        } else {
            "bound: 2 events"
        }
    );
    for mtu in [23u16, 185, 244, 517] {
        let config = EmulatedConfig::phone(mtu);
        let runs: Vec<PaymentRun> = (0..RUNS).map(|_| payment(config, secure)).collect();
        let link = median(runs.iter().map(|r| r.link_ms).collect());
        let compute = median(runs.iter().map(|r| r.compute_ms).collect());
        // Invoice, transfer, acknowledgement: each needs a connection
        // event after the one that delivered the message before it; the
        // key exchange adds one: message 1, then message 2 with the
        // invoice behind it, message 3 with the transfer, the ack.
        let events = if secure { 3.0 } else { 2.0 };
        let bound = events * config.interval_us as f64 / 1e3;
        println!(
            "{mtu:>5} {link:>9.1} {compute:>11.2} {:>10.1} {:>9} {bound:>13.1} ms",
            link + compute,
            runs[0].bytes
        );
    }
}

fn sync_throughput(mtu: u16, headers: usize) {
    let world = World::new();
    let mut full = world.node("full", 21);
    let mut empty = world.node("empty", 22);
    world.fill_ledger(&mut full, 0, headers);
    let config = EmulatedConfig::phone(mtu);
    let sync_config = SyncConfig::default();
    let started = Instant::now();
    let mut sa = SyncSide::new(&full, sync_config, Millis(0));
    let mut sb = SyncSide::new(&empty, sync_config, Millis(0));
    let (mut la, mut lb) = emulated::pair(config);
    drive_pair(
        Side {
            node: &mut full,
            conversation: &mut sa,
            link: &mut la,
        },
        Side {
            node: &mut empty,
            conversation: &mut sb,
            link: &mut lb,
        },
        600_000,
    )
    .expect("sync");
    let compute_s = started.elapsed().as_secs_f64();
    assert_eq!(full.ledger().digest(), empty.ledger().digest());
    use meshpay_node::transport::Link;
    let link_s = la.now_us() as f64 / 1e6;
    let bulk = sa.stats().bytes_sent as f64;
    let capacity = config.capacity_bytes_per_sec();
    let total_s = link_s + compute_s;
    let throughput = bulk / total_s;
    println!(
        "{mtu:>5} {headers:>7} {:>9.0} {:>8.2} {:>10.3} {:>12.1} {:>12.1} {:>7.1} % {:>7.1} %",
        bulk / 1e3,
        link_s,
        compute_s,
        capacity / 1e3,
        throughput / 1e3,
        100.0 * throughput / capacity,
        100.0 * (bulk / link_s) / capacity,
    );
}

fn syncs() {
    println!();
    println!("bulk ledger sync, a full ledger into an empty one (15 ms interval, LE 1M)");
    println!("throughput = sync bytes sent by the full side / (link time + compute time)");
    println!(
        "{:>5} {:>7} {:>9} {:>8} {:>10} {:>12} {:>12} {:>9} {:>9}",
        "MTU",
        "headers",
        "bulk KB",
        "link s",
        "compute s",
        "capacity KB/s",
        "achieved KB/s",
        "of cap",
        "link only"
    );
    for mtu in [185u16, 244, 517] {
        sync_throughput(mtu, 2_000);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("ble: bench");
        return;
    }
    payments();
    syncs();
}
