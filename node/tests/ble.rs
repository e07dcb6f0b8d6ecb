//! Payments and ledger syncs over the emulated BLE link: the same results
//! as over the in-memory transport at every MTU, recovery from links that
//! drop mid-frame and mid-handshake, and property tests of the framing.

mod fixture;

use fixture::World;
use meshpay_node::ble::emulated::{self, EmulatedConfig};
use meshpay_node::ble::framing::{Framing, FramingConfig};
use meshpay_node::ble::{ChannelPort, FramedLink};
use meshpay_node::exchange::{
    Conversation, ExchangeError, PayeeSide, PayerSide, Side, SyncSide, drive, drive_pair,
};
use meshpay_node::node::Node;
use meshpay_node::store::Role;
use meshpay_node::transport::{Link, LinkError, MemoryLink, Wait};
use meshpay_proto::prelude::*;
use meshpay_proto::sync::SyncConfig;
use proptest::prelude::*;

const MTUS: [u16; 4] = [23, 185, 244, 517];
const PAYER_SEED: u8 = 11;
const PAYEE_SEED: u8 = 12;
const AMOUNT: u64 = 450;

/// A payer and payee with a fixed invoice, so that runs over different
/// transports produce byte-identical receipts.
fn payment(world: &World) -> (Node, Node, PayerSide, PayeeSide) {
    let payer = world.funded("payer", PAYER_SEED);
    let payee = world.node("payee", PAYEE_SEED);
    let key = SecretKey::from_seed(&[PAYEE_SEED; 32]);
    let invoice = Invoice {
        payee: key.public(),
        amount: AMOUNT,
        currency: world.eur,
        nonce: Nonce([9; 16]),
        memo: Some("coffee".into()),
        credential: None,
    };
    let payee_side = PayeeSide::new(
        PayeeSession::with_invoice(key, invoice, Millis(0)),
        world.now,
    );
    let config = PayerConfig {
        send_allowance: true,
        ..PayerConfig::default()
    };
    let payer_side = PayerSide::new(
        payer
            .start_payment(AMOUNT, world.now, config)
            .expect("start"),
    );
    (payer, payee, payer_side, payee_side)
}

fn run<L: Link>(
    a: (&mut Node, &mut dyn Conversation, &mut L),
    b: (&mut Node, &mut dyn Conversation, &mut L),
) -> Result<(), ExchangeError> {
    drive_pair(
        Side {
            node: a.0,
            conversation: a.1,
            link: a.2,
        },
        Side {
            node: b.0,
            conversation: b.1,
            link: b.2,
        },
        120_000,
    )
    .map(|_| ())
}

fn paid_receipt(side: &PayerSide) -> Receipt {
    match side.state() {
        PayerState::Paid(r) => r.clone(),
        other => panic!("payment not paid: {other:?}"),
    }
}

/// Exactly one receipt on each side, the same one, and the amount spent once.
fn assert_paid_once(payer: &Node, payee: &Node, receipt: &Receipt) {
    let paid = payer.receipts().expect("receipts");
    let received = payee.receipts().expect("receipts");
    assert_eq!(paid, vec![(receipt.clone(), Role::Paid)]);
    assert_eq!(received, vec![(receipt.clone(), Role::Received)]);
    let left: u64 = payer
        .balances()
        .expect("balances")
        .iter()
        .map(|(_, l)| l)
        .sum();
    assert_eq!(left, 100_000 - AMOUNT);
}

/// A clean payment over `link` (a fresh pair).
fn paid_over<L: Link>(link: (L, L)) -> (World, Node, Node, PayerSide, L) {
    let world = World::new();
    let (mut payer, mut payee, mut ps, mut es) = payment(&world);
    let (mut la, mut lb) = link;
    run(
        (&mut payer, &mut ps, &mut la),
        (&mut payee, &mut es, &mut lb),
    )
    .expect("payment");
    (world, payer, payee, ps, la)
}

#[test]
fn payments_over_emulated_ble_give_the_in_memory_result_at_every_mtu() {
    let (_world, payer, payee, ps, _) = paid_over(MemoryLink::pair());
    let expected = paid_receipt(&ps);
    assert_paid_once(&payer, &payee, &expected);

    for mtu in MTUS {
        let (_world, payer, payee, ps, la) = paid_over(emulated::pair(EmulatedConfig::phone(mtu)));
        assert_eq!(paid_receipt(&ps), expected, "mtu {mtu}");
        assert_paid_once(&payer, &payee, &expected);
        assert_eq!(
            payer.ledger().digest(),
            payee.ledger().digest(),
            "mtu {mtu}"
        );
        // Small MTUs really cut the messages into many packets.
        let stats = la.port().stats();
        assert!(
            stats.pdus[0] > 1 && stats.pdus[1] > 1,
            "mtu {mtu}: {stats:?}"
        );
    }
}

fn sync_nodes(world: &World) -> (Node, Node) {
    let mut a = world.node("a", 21);
    let mut b = world.node("b", 22);
    world.fill_ledger(&mut a, 0, 250);
    world.fill_ledger(&mut b, 10, 150);
    (a, b)
}

fn sync_over<L: Link>(
    a: &mut Node,
    b: &mut Node,
    la: &mut L,
    lb: &mut L,
) -> Result<(), ExchangeError> {
    let config = SyncConfig::default();
    let mut sa = SyncSide::new(a, config, Millis(la.now_us() / 1000));
    let mut sb = SyncSide::new(b, config, Millis(lb.now_us() / 1000));
    run((&mut *a, &mut sa, la), (&mut *b, &mut sb, lb))?;
    assert!(sa.is_done() && sb.is_done(), "{:?} {:?}", sa, sb);
    Ok(())
}

#[test]
fn ledger_sync_over_emulated_ble_gives_the_in_memory_result_at_every_mtu() {
    let world = World::new();
    let (mut a, mut b) = sync_nodes(&world);
    let before = a.ledger().digest();
    let (mut la, mut lb) = MemoryLink::pair();
    sync_over(&mut a, &mut b, &mut la, &mut lb).expect("memory");
    let union = a.ledger().digest();
    assert_ne!(union, before, "the sync must have changed something");
    assert_eq!(b.ledger().digest(), union);
    let entries = a.ledger().len();

    for mtu in MTUS {
        let world = World::new();
        let (mut a, mut b) = sync_nodes(&world);
        let (mut la, mut lb) = emulated::pair(EmulatedConfig::phone(mtu));
        sync_over(&mut a, &mut b, &mut la, &mut lb).expect("ble");
        assert_eq!(a.ledger().digest(), union, "mtu {mtu}");
        assert_eq!(b.ledger().digest(), union, "mtu {mtu}");
        assert_eq!(a.ledger().len(), entries);
    }
}

/// Runs a payment whose link drops after `cut` payload bytes, then
/// reconnects (a second later on the link clock) and finishes it.
fn payment_with_drop(mtu: u16, cut: u64) -> Result<(), String> {
    let world = World::new();
    let (mut payer, mut payee, mut ps, mut es) = payment(&world);
    let config = EmulatedConfig {
        disconnect_after_bytes: Some(cut),
        ..EmulatedConfig::phone(mtu)
    };
    let (mut la, mut lb) = emulated::pair(config);
    let first = run(
        (&mut payer, &mut ps, &mut la),
        (&mut payee, &mut es, &mut lb),
    );
    match first {
        Ok(()) => {}
        Err(ExchangeError::Link(LinkError::Lost { .. })) => {
            let again = EmulatedConfig {
                start_us: la.now_us() + 1_000_000,
                ..EmulatedConfig::phone(mtu)
            };
            let (mut la, mut lb) = emulated::pair(again);
            run(
                (&mut payer, &mut ps, &mut la),
                (&mut payee, &mut es, &mut lb),
            )
            .map_err(|e| format!("after reconnect: {e}"))?;
        }
        Err(e) => return Err(format!("cut {cut}: {e}")),
    }
    let receipt = paid_receipt(&ps);
    assert_paid_once(&payer, &payee, &receipt);
    Ok(())
}

#[test]
fn payments_dropped_mid_frame_and_mid_handshake_recover_without_duplicate_or_lost_receipt() {
    for mtu in [23u16, 185] {
        // The bytes a clean payment carries, to cut at every point of it.
        let s = paid_over(emulated::pair(EmulatedConfig::phone(mtu)))
            .4
            .port()
            .stats();
        let total = s.payload_bytes[0] + s.payload_bytes[1];
        let step = if mtu == 23 { 13 } else { 29 };
        let mut cuts: Vec<u64> = (0..=total).step_by(step).collect();
        cuts.extend([total - 1, total]);
        for cut in cuts {
            payment_with_drop(mtu, cut).unwrap_or_else(|e| panic!("mtu {mtu}, cut {cut}: {e}"));
        }
    }
}

#[test]
fn syncs_dropped_midway_converge_on_the_next_connection() {
    let world = World::new();
    let (mut a, mut b) = sync_nodes(&world);
    let (mut la, mut lb) = MemoryLink::pair();
    sync_over(&mut a, &mut b, &mut la, &mut lb).expect("memory");
    let union = a.ledger().digest();
    for cut in [0u64, 100, 5_000, 20_000, 40_000] {
        let world = World::new();
        let (mut a, mut b) = sync_nodes(&world);
        let config = EmulatedConfig {
            disconnect_after_bytes: Some(cut),
            ..EmulatedConfig::phone(185)
        };
        let (mut la, mut lb) = emulated::pair(config);
        match sync_over(&mut a, &mut b, &mut la, &mut lb) {
            Ok(()) => {}
            Err(ExchangeError::Link(LinkError::Lost { .. })) => {
                let again = EmulatedConfig {
                    start_us: la.now_us() + 1_000_000,
                    ..EmulatedConfig::phone(185)
                };
                let (mut la, mut lb) = emulated::pair(again);
                sync_over(&mut a, &mut b, &mut la, &mut lb).expect("second session");
            }
            Err(e) => panic!("cut {cut}: {e}"),
        }
        assert_eq!(a.ledger().digest(), union, "cut {cut}");
        assert_eq!(b.ledger().digest(), union, "cut {cut}");
    }
}

/// Sends `messages` from the central and collects what the peripheral
/// receives until the link ends or all have arrived.
fn deliver(config: EmulatedConfig, messages: &[Vec<u8>]) -> (Vec<Vec<u8>>, Option<LinkError>) {
    let (mut a, mut b) = emulated::pair(config);
    let mut got = Vec::new();
    let mut sent = 0;
    loop {
        // Hand over a message at a time, as an exchange would.
        if sent < messages.len() {
            match a.send(&messages[sent]) {
                Ok(()) => sent += 1,
                Err(_) => sent = messages.len(),
            }
        }
        match b.try_recv() {
            Ok(Some(m)) => {
                got.push(m);
                continue;
            }
            Ok(None) => {}
            Err(e) => return (got, Some(e)),
        }
        if got.len() == messages.len() {
            return (got, None);
        }
        let _ = a.try_recv();
        match b.wait(None) {
            Ok(Wait::Idle) if sent == messages.len() => return (got, None),
            Ok(_) => {}
            Err(e) => return (got, Some(e)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the MTU, window, loss and point of disconnection: the
    /// receiver gets a prefix of the messages, each whole, and if it does
    /// not get them all the link reports the loss.
    #[test]
    fn a_lost_link_delivers_whole_messages_or_reports_the_loss(
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1500), 1..8),
        mtu in 23u16..=517,
        window in 8u16..64,
        loss in 0.0f64..0.3,
        seed in any::<u64>(),
        cut in prop::option::of(0u64..12_000),
    ) {
        let config = EmulatedConfig {
            window,
            loss,
            seed,
            disconnect_after_bytes: cut,
            ..EmulatedConfig::phone(mtu)
        };
        let (got, error) = deliver(config, &messages);
        prop_assert!(got.len() <= messages.len());
        prop_assert_eq!(&got[..], &messages[..got.len()]);
        if got.len() < messages.len() {
            prop_assert!(matches!(error, Some(LinkError::Lost { .. })), "{:?}", error);
        }
        if cut.is_none() {
            prop_assert_eq!(got.len(), messages.len());
        }
    }

    /// Arbitrary packets from a hostile peer: typed errors, no panic, and
    /// never a message over the limit.
    #[test]
    fn arbitrary_packets_never_panic(
        packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..64),
    ) {
        let config = FramingConfig { max_message: 200, ..FramingConfig::with_mtu(40) };
        let mut f = Framing::new(config);
        for p in packets {
            if f.handle_packet(&p).is_err() {
                break;
            }
            match f.poll_message() {
                Ok(Some(m)) => prop_assert!(m.len() <= 200),
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }
}

/// Wires two channel ports back to back through forwarding threads, as
/// the GATT tasks do; `cut` stops forwarding after that many packets.
fn channel_pair(cut: Option<usize>) -> (ChannelPort, ChannelPort) {
    let (a, to_a, from_a) = ChannelPort::new();
    let (b, to_b, from_b) = ChannelPort::new();
    for (from, to) in [(from_a, to_b), (from_b, to_a)] {
        std::thread::spawn(move || {
            let mut n = 0;
            while let Ok(p) = from.recv() {
                n += 1;
                if cut.is_some_and(|c| n > c) || to.send(p).is_err() {
                    break;
                }
            }
        });
    }
    (a, b)
}

/// One side of a sync on its own thread, as `node run --ble` runs it.
fn sync_thread(
    mut node: Node,
    port: ChannelPort,
) -> std::thread::JoinHandle<(Node, Result<(), ExchangeError>)> {
    std::thread::spawn(move || {
        let mut link = FramedLink::new(port, FramingConfig::with_mtu(185));
        let mut side = SyncSide::new(&node, SyncConfig::default(), Millis(0));
        let r = drive(
            Side {
                node: &mut node,
                conversation: &mut side,
                link: &mut link,
            },
            20_000,
        )
        .map(|_| ());
        (node, r)
    })
}

#[test]
fn sync_runs_over_channel_ports_between_threads_and_reports_a_cut() {
    let world = World::new();
    let (a, b) = sync_nodes(&world);
    let (pa, pb) = channel_pair(None);
    let (ta, tb) = (sync_thread(a, pa), sync_thread(b, pb));
    let (a, ra) = ta.join().expect("thread");
    let (b, rb) = tb.join().expect("thread");
    ra.expect("a");
    rb.expect("b");
    assert_eq!(a.ledger().digest(), b.ledger().digest());
    let union = a.ledger().digest();
    drop((a, b));

    // The same over a link that dies after 40 packets each way.
    let world = World::new();
    let (a, b) = sync_nodes(&world);
    let (pa, pb) = channel_pair(Some(40));
    let (ta, tb) = (sync_thread(a, pa), sync_thread(b, pb));
    let (a, ra) = ta.join().expect("thread");
    let (b, rb) = tb.join().expect("thread");
    for r in [ra, rb] {
        // Either the loss is seen, or (the forwarding thread still alive
        // but silent) the session's own stall limit ends it.
        assert!(
            matches!(
                r,
                Err(ExchangeError::Link(LinkError::Lost { .. }))
                    | Err(ExchangeError::Sync(_))
                    | Err(ExchangeError::TimedOut(_))
            ),
            "{r:?}"
        );
    }
    assert_ne!(a.ledger().digest(), union);
    drop(b);
}

#[test]
fn payments_survive_link_layer_loss_and_slow_down_with_the_interval() {
    let expected = paid_receipt(&paid_over(MemoryLink::pair()).3);

    let mut finish = Vec::new();
    for (interval_us, loss) in [(7_500, 0.0), (30_000, 0.0), (30_000, 0.3)] {
        let config = EmulatedConfig {
            interval_us,
            loss,
            seed: 7,
            ..EmulatedConfig::phone(185)
        };
        let (_world, payer, payee, ps, la) = paid_over(emulated::pair(config));
        assert_eq!(paid_receipt(&ps), expected);
        assert_paid_once(&payer, &payee, &expected);
        if loss > 0.0 {
            assert!(la.port().stats().retransmissions > 0);
        }
        finish.push(la.now_us());
    }
    // Three messages, each an event after the last: the interval sets the
    // pace, and resent PDUs only add to it.
    assert!(finish[0] < finish[1], "{finish:?}");
    assert!(finish[1] <= finish[2], "{finish:?}");
}
