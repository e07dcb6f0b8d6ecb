//! Partial-ledger and sync figures (issue #3), each beside its lower bound
//! and a range-based set reconciliation baseline (negentropy) in the same
//! run.
//!
//! ```sh
//! cargo bench -p meshpay-proto --bench ledger                  # N = 1k, 10k, 100k
//! cargo bench -p meshpay-proto --bench ledger -- --quick       # N = 1k, 10k only
//! cargo bench -p meshpay-proto --bench ledger -- --large       # adds 1,000,000 headers
//! ```
//!
//! Ledgers are built the way a mesh builds them: each writer (automerge
//! actor) is a node that inserts its own headers one payment at a time;
//! the ledger under test imports every writer's saved document.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;
use support::rss_kib;

use std::time::{Duration, Instant};

use common::*;
use meshpay_proto::ledger::{Entry, PartialLedger, RetentionPolicy};
use meshpay_proto::prelude::*;
use meshpay_proto::sync::{SyncConfig, SyncSession};

type Ledger = PartialLedger;
type PeerState = meshpay_proto::ledger::ClockPeer;

/// Size of one gossiped signed header: the per-header lower bound.
fn header_size() -> usize {
    let (k, a) = wallet(0);
    header(&k, &a, 1, 100, 1).encode().len()
}

/// Headers for `n` payments spread over wallets of 100 payments each.
struct Payments {
    wallets: Vec<(SecretKey, Allowance)>,
    headers: Vec<SignedHeader>,
}

fn payments(n: usize, first_wallet: u32) -> Payments {
    let per_wallet = 100usize;
    let n_wallets = n.div_ceil(per_wallet);
    let wallets: Vec<_> = (0..n_wallets as u32)
        .map(|i| wallet(first_wallet + i))
        .collect();
    let mut headers = Vec::with_capacity(n);
    for i in 0..n {
        let (k, a) = &wallets[i / per_wallet];
        let seq = (i % per_wallet) as u32 + 1;
        headers.push(header(k, a, seq, u64::from(seq) * 100, (i % 251) as u8));
    }
    Payments { wallets, headers }
}

/// 8-byte actor ids, as a node derives them from its key: every change
/// carries its actor id, so shorter is cheaper on the wire.
fn actor(i: usize) -> [u8; 8] {
    (i as u64 | 0xAC00_0000_0000_0000).to_le_bytes()
}

/// A ledger holding `p`'s headers, written by `writers` distinct actors
/// (each inserting its share one header at a time) and merged.
fn build(p: &Payments, writers: usize, node: usize) -> Ledger {
    let mut target = Ledger::new(&actor(1_000_000 + node), trust());
    let share = p.headers.len().div_ceil(writers.max(1));
    for (w, chunk) in p.headers.chunks(share.max(1)).enumerate() {
        let mut writer = if writers == 1 {
            std::mem::replace(&mut target, Ledger::new(&actor(0), trust()))
        } else {
            Ledger::new(&actor(w), trust())
        };
        for h in chunk {
            let a = &p
                .wallets
                .iter()
                .find(|(_, a)| a.id == h.allowance)
                .expect("wallet")
                .1;
            writer
                .insert(Entry::Allowance(a.clone()))
                .expect("allowance");
            writer.insert(Entry::Header(h.clone())).expect("header");
        }
        if writers == 1 {
            target = writer;
        } else {
            target.import(&writer.save()).expect("import");
        }
    }
    target
}

fn copy(l: &mut Ledger, node: usize) -> Ledger {
    Ledger::load(&l.save(), l.epoch(), &actor(2_000_000 + node), trust()).expect("reload")
}

struct SyncRun {
    a_to_b: u64,
    b_to_a: u64,
    messages: u32,
    cpu_a: Duration,
    cpu_b: Duration,
    a_state: PeerState,
    b_state: PeerState,
}

/// One whole session in memory, timing each side's work separately.
fn run_sync(a: &mut Ledger, b: &mut Ledger, sa0: PeerState, sb0: PeerState) -> SyncRun {
    let config = SyncConfig::default();
    let (mut cpu_a, mut cpu_b) = (Duration::ZERO, Duration::ZERO);
    let t = Instant::now();
    let mut sa = SyncSession::new(a, sa0, config, Millis(0));
    cpu_a += t.elapsed();
    let t = Instant::now();
    let mut sb = SyncSession::new(b, sb0, config, Millis(0));
    cpu_b += t.elapsed();
    for step in 0..1_000_000u64 {
        let mut moved = false;
        if let Some(f) = sa.poll_transmit() {
            let t = Instant::now();
            sb.handle_frame(b, &f, Millis(step)).expect("honest");
            cpu_b += t.elapsed();
            moved = true;
        }
        if let Some(f) = sb.poll_transmit() {
            let t = Instant::now();
            sa.handle_frame(a, &f, Millis(step)).expect("honest");
            cpu_a += t.elapsed();
            moved = true;
        }
        if sa.is_finished() && sb.is_finished() {
            break;
        }
        assert!(moved, "stuck");
    }
    assert_eq!(a.digest(), b.digest(), "not in sync after the session");
    let (a_to_b, b_to_a) = (sa.stats().bytes_sent, sb.stats().bytes_sent);
    let messages = sa.stats().messages_sent + sb.stats().messages_sent;
    SyncRun {
        a_to_b,
        b_to_a,
        messages,
        cpu_a,
        cpu_b,
        a_state: sa.into_peer_state(),
        b_state: sb.into_peer_state(),
    }
}

struct Baseline {
    bytes: u64,
    rounds: u32,
    cpu: Duration,
}

/// negentropy over the same header ids: reconciliation messages, then the
/// k missing headers themselves.
fn negentropy_baseline(common: &[SignedHeader], extra: &[SignedHeader]) -> Baseline {
    use negentropy::{Id, Negentropy, NegentropyStorageVector};
    let t = Instant::now();
    let mut have = NegentropyStorageVector::with_capacity(common.len() + extra.len());
    let mut lacks = NegentropyStorageVector::with_capacity(common.len());
    for h in common {
        let id = Id::from_byte_array(h.id().0);
        have.insert(u64::from(h.seq), id).expect("insert");
        lacks.insert(u64::from(h.seq), id).expect("insert");
    }
    for h in extra {
        have.insert(u64::from(h.seq), Id::from_byte_array(h.id().0))
            .expect("insert");
    }
    have.seal().expect("seal");
    lacks.seal().expect("seal");
    // The side that lacks headers initiates.
    let mut client = Negentropy::borrowed(&lacks, 0).expect("client");
    let mut server = Negentropy::borrowed(&have, 0).expect("server");
    let mut msg = client.initiate().expect("initiate");
    let mut bytes = msg.len() as u64;
    let mut rounds = 1;
    let mut need = Vec::new();
    loop {
        let reply = server.reconcile(&msg).expect("reconcile");
        bytes += reply.len() as u64;
        let mut have_ids = Vec::new();
        match client
            .reconcile_with_ids(&reply, &mut have_ids, &mut need)
            .expect("client")
        {
            Some(next) => {
                bytes += next.len() as u64;
                rounds += 1;
                msg = next;
            }
            None => break,
        }
    }
    assert_eq!(need.len(), extra.len());
    // Then the missing headers cross, one encoding each.
    bytes += (extra.len() * header_size()) as u64;
    Baseline {
        bytes,
        rounds,
        cpu: t.elapsed(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One size-and-memory case, in a fresh process.
fn memory_case(n: usize, writers: usize) {
    let p = payments(n, 0);
    let encoded: usize = p.headers.iter().map(|h| h.encode().len()).sum::<usize>()
        + p.wallets
            .iter()
            .map(|(_, a)| a.encode().len())
            .sum::<usize>();
    let before = rss_kib();
    let t = Instant::now();
    let mut l = build(&p, writers, 7);
    let build_time = t.elapsed();
    drop(p);
    let held = rss_kib().saturating_sub(before) * 1024;
    let saved = l.save();
    let t = Instant::now();
    let raw = automerge::Automerge::load(&saved).expect("load");
    let raw_load = t.elapsed();
    drop(raw);
    let t = Instant::now();
    let mut back = Ledger::load(&saved, 0, &actor(8), trust()).expect("load");
    let checked_load = t.elapsed();
    drop(l);
    // One merge: a single new header from a peer that remembers us.
    let mut peer = copy(&mut back, 9);
    let warmup = payments(1, 990_000);
    peer.insert(Entry::Allowance(warmup.wallets[0].1.clone()))
        .expect("a");
    peer.insert(Entry::Header(warmup.headers[0].clone()))
        .expect("h");
    let warm = run_sync(&mut back, &mut peer, PeerState::new(), PeerState::new());
    let extra = payments(1, 950_000);
    peer.insert(Entry::Allowance(extra.wallets[0].1.clone()))
        .expect("a");
    peer.insert(Entry::Header(extra.headers[0].clone()))
        .expect("h");
    let one = run_sync(&mut back, &mut peer, warm.a_state, warm.b_state);
    println!(
        "{n:>8} headers, {writers:>5} writers: encoded {:.1} MB, RSS +{:.1} MB ({:.2}x encoded), saved {:.1} MB, build {:.1} s, \
         automerge load {:.0} ms, checked load {:.0} ms, one-header sync {:.2} ms (receiver) / {:.2} ms (sender), {} B",
        encoded as f64 / 1e6,
        held as f64 / 1e6,
        held as f64 / encoded as f64,
        saved.len() as f64 / 1e6,
        build_time.as_secs_f64(),
        ms(raw_load),
        ms(checked_load),
        ms(one.cpu_a),
        ms(one.cpu_b),
        one.a_to_b + one.b_to_a,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-case") {
        let n = args.get(i + 1).and_then(|s| s.parse().ok()).expect("N");
        let w = args
            .get(i + 2)
            .and_then(|s| s.parse().ok())
            .expect("writers");
        memory_case(n, w);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let large = args.iter().any(|a| a == "--large");
    let hs = header_size();
    println!("signed header: {hs} B (the per-header lower bound)");

    // ---- sync: N common headers, k more on one side ----------------------
    let ns: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let writers = 1_000;
    println!("\nsync, ledgers of N headers from {writers} writers, one side has k more");
    println!(
        "{:>7} {:>5} {:>10} | {:>10} {:>9} {:>5} {:>8} {:>8} | {:>10} {:>9} {:>5} {:>8} | {:>9} {:>6} {:>7}",
        "N",
        "k",
        "bound B",
        "first B",
        "x bound",
        "msgs",
        "cpu A ms",
        "cpu B ms",
        "again B",
        "x bound",
        "msgs",
        "cpu ms",
        "negent. B",
        "rounds",
        "cpu ms"
    );
    for &n in ns {
        let t = Instant::now();
        let base_payments = payments(n, 0);
        let mut base = build(&base_payments, writers.min(n), 0);
        let build_time = t.elapsed();
        for &k in &[1usize, 100, 1_000] {
            let extra = payments(k, 900_000);
            let mut a = copy(&mut base, 1);
            let mut b = copy(&mut base, 2);
            // Remembered: the two met before, when one of them had one
            // payment the other lacked, and kept their sync states.
            let warmup = payments(1, 990_000);
            a.insert(Entry::Allowance(warmup.wallets[0].1.clone()))
                .expect("a");
            a.insert(Entry::Header(warmup.headers[0].clone()))
                .expect("h");
            let warm = run_sync(&mut a, &mut b, PeerState::new(), PeerState::new());
            let mut a_first = copy(&mut a, 3);
            let mut b_first = copy(&mut b, 4);
            for h in &extra.headers {
                let al = &extra
                    .wallets
                    .iter()
                    .find(|(_, w)| w.id == h.allowance)
                    .expect("w")
                    .1;
                for l in [&mut a, &mut a_first] {
                    l.insert(Entry::Allowance(al.clone())).expect("allowance");
                    l.insert(Entry::Header(h.clone())).expect("header");
                }
            }
            let first = run_sync(
                &mut a_first,
                &mut b_first,
                PeerState::new(),
                PeerState::new(),
            );
            let again = run_sync(&mut a, &mut b, warm.a_state, warm.b_state);
            let mut common_headers = base_payments.headers.clone();
            common_headers.push(warmup.headers[0].clone());
            let ng = negentropy_baseline(&common_headers, &extra.headers);
            let bound = (k * hs) as f64;
            let first_bytes = first.a_to_b + first.b_to_a;
            let again_bytes = again.a_to_b + again.b_to_a;
            println!(
                "{n:>7} {k:>5} {bound:>10.0} | {first_bytes:>10} {:>9.2} {:>5} {:>8.2} {:>8.2} | {again_bytes:>10} {:>9.2} {:>5} {:>8.2} | {:>9} {:>6} {:>7.2}",
                first_bytes as f64 / bound,
                first.messages,
                ms(first.cpu_a),
                ms(first.cpu_b),
                again_bytes as f64 / bound,
                again.messages,
                ms(again.cpu_a.max(again.cpu_b)),
                ng.bytes,
                ng.rounds,
                ms(ng.cpu),
            );
        }
        // Already in sync, meeting for the first time (other histories).
        let mut x = copy(&mut base, 5);
        let mut y = copy(&mut base, 6);
        let same = run_sync(&mut x, &mut y, PeerState::new(), PeerState::new());
        println!(
            "{n:>7} in sync, first meeting: {} B total, {} messages (build of the N-header ledger: {:.1} s)",
            same.a_to_b + same.b_to_a,
            same.messages,
            build_time.as_secs_f64()
        );
    }

    // ---- size, load time, memory, one merge -------------------------------
    // Each case runs in a child process of this binary, so that its memory
    // is measured from a clean start.
    println!("\nsize and memory");
    let mut cases = vec![(100_000usize, 5_000usize), (100_000, 1_000), (100_000, 1)];
    if large {
        cases.push((1_000_000, 1));
    }
    if quick {
        cases = vec![(10_000, 1_000)];
    }
    let exe = std::env::current_exe().expect("own path");
    for (n, writers) in cases {
        let out = std::process::Command::new(&exe)
            .args(["--memory-case", &n.to_string(), &writers.to_string()])
            .output()
            .expect("child runs");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }

    // ---- steady state under epoch rotation ---------------------------------
    // 14 days; 400 payments an hour at one node; settlement every 6 h
    // acknowledges what is at least 1 h old; rotate after every ack.
    println!("\nsteady state under epoch rotation (400 payments/h, acks every 6 h, 14 days)");
    let mut l = Ledger::new(&actor(42), trust());
    let mut ids: Vec<(u64, TransferId)> = Vec::new();
    let per_hour = 400usize;
    let mut wallet_no = 500_000u32;
    let mut serial = 0u64;
    let mut sizes = Vec::new();
    let mut total = 0usize;
    for hour in 0..14 * 24u64 {
        let p = payments(per_hour, wallet_no);
        wallet_no += p.wallets.len() as u32;
        for (_, a) in &p.wallets {
            l.insert(Entry::Allowance(a.clone())).expect("a");
        }
        for h in &p.headers {
            l.insert(Entry::Header(h.clone())).expect("h");
            ids.push((hour, h.id()));
        }
        total += per_hour;
        if hour % 6 == 5 {
            serial += 1;
            let outcomes = ids
                .iter()
                .filter(|(h, _)| *h < hour)
                .map(|(_, id)| (*id, Outcome::Settled))
                .collect();
            ids.retain(|(h, _)| *h >= hour);
            let ack = SettlementAck::sign(
                SettlementAckTerms {
                    serial,
                    issued_at: NOW,
                    issuer: issuer().public(),
                    outcomes,
                },
                &issuer(),
            );
            l.insert(Entry::Ack(ack)).expect("ack");
            l.rotate_epoch(NOW, &RetentionPolicy::default());
            sizes.push((hour, l.len(), l.save().len()));
        }
    }
    let tail = &sizes[sizes.len() / 2..];
    let max_entries = tail.iter().map(|s| s.1).max().unwrap_or(0);
    let max_bytes = tail.iter().map(|s| s.2).max().unwrap_or(0);
    println!(
        "  {total} payments in all; after each rotation in the second week: at most {max_entries} entries, {:.2} MB saved \
         (without rotation: {total} headers, ~{:.1} MB of headers alone)",
        max_bytes as f64 / 1e6,
        (total * hs) as f64 / 1e6
    );
}
