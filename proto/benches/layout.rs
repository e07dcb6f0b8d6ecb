//! What one applied change costs automerge 0.12 as a document grows, with
//! every key in the root map (the ledger's layout, protocol.md 9.7)
//! against keys spread over nested maps that one genesis change creates;
//! and what a loaded document holds in memory per key.
//! The evidence for the next step of the simulator's scale goal
//! (docs/results.md, "Session 12").
//!
//! ```sh
//! cargo bench -p meshpay-proto --bench layout              # 20,000 keys
//! cargo bench -p meshpay-proto --bench layout -- 40000     # more keys
//! ```
//!
//! A writer document puts one 250-byte value per change; a reader document
//! applies each change on its own, as a node does with a sync message of
//! one change. Both start from the same genesis change (one actor, time
//! 0), so the nested maps are the same objects in both.

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use support::rss_kib;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjId, ObjType, ROOT, ScalarValue};

/// Applies `keys` changes one at a time, then reports the mean time of
/// applying 1,000 more.
fn run(keys: usize, shards: usize) -> f64 {
    let mut genesis = Automerge::new().with_actor(ActorId::from(&[0u8; 8][..]));
    let mut maps: Vec<ObjId> = Vec::new();
    if shards > 0 {
        let mut tx = genesis.transaction();
        for i in 0..shards {
            maps.push(
                tx.put_object(ROOT, format!("{i:02x}"), ObjType::Map)
                    .expect("map"),
            );
        }
        tx.commit_with(CommitOptions::default().with_time(0));
    }
    let mut writer = genesis.fork().with_actor(ActorId::from(&[1u8; 8][..]));
    let mut reader = genesis.fork().with_actor(ActorId::from(&[2u8; 8][..]));
    let value = vec![7u8; 250];
    let write = |i: usize, writer: &mut Automerge| {
        let key = format!("h/{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let obj = if shards > 0 {
            maps[(i * 7919) % shards].clone()
        } else {
            ROOT
        };
        let mut tx = writer.transaction();
        tx.put(&obj, key.as_str(), ScalarValue::Bytes(value.clone()))
            .expect("put");
        tx.commit_with(CommitOptions::default().with_time(0));
        writer.get_last_local_change().expect("change").clone()
    };
    for i in 0..keys {
        let c = write(i, &mut writer);
        reader.apply_changes([c]).expect("apply");
    }
    let more: Vec<_> = (keys..keys + 1_000)
        .map(|i| write(i, &mut writer))
        .collect();
    let t = Instant::now();
    for c in more {
        reader.apply_changes([c]).expect("apply");
    }
    t.elapsed().as_secs_f64() * 1e6 / 1_000.0
}

/// Memory of one loaded document of `keys` 250-byte keys from `writers`
/// writers, in bytes per key (RSS growth over ten loaded copies).
fn memory_per_key(keys: usize, writers: usize) -> f64 {
    let mut docs: Vec<Automerge> = (0..writers)
        .map(|w| Automerge::new().with_actor(ActorId::from(&(w as u64).to_le_bytes()[..])))
        .collect();
    for i in 0..keys {
        let mut value = vec![0u8; 250];
        value[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let d = &mut docs[i % writers];
        let mut tx = d.transaction();
        tx.put(
            ROOT,
            format!("h/{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ScalarValue::Bytes(value),
        )
        .expect("put");
        tx.commit_with(CommitOptions::default().with_time(0));
    }
    let mut all = Automerge::new();
    for d in &mut docs {
        all.merge(d).expect("merge");
    }
    // Measured in a fresh process, where no freed memory can be reused.
    let path = std::env::temp_dir().join(format!("meshpay-layout-{}.am", std::process::id()));
    std::fs::write(&path, all.save()).expect("write");
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("MESHPAY_LAYOUT_LOAD", &path)
        .output()
        .expect("child");
    let _ = std::fs::remove_file(&path);
    let kib: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    kib * 1024.0 / 10.0 / keys as f64
}

/// In the child: loads ten copies of the saved document and prints the
/// RSS they added, in KiB.
fn load_copies(path: &str) {
    let saved = std::fs::read(path).expect("read");
    let before = rss_kib();
    let copies: Vec<Automerge> = (0..10)
        .map(|_| Automerge::load(&saved).expect("load"))
        .collect();
    println!("{}", rss_kib().saturating_sub(before));
    drop(copies);
}

fn main() {
    if let Ok(path) = std::env::var("MESHPAY_LAYOUT_LOAD") {
        load_copies(&path);
        return;
    }
    let keys: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    println!("automerge 0.12: applying one change of one key, document of N keys");
    println!(
        "{:>8} {:>22} {:>22}",
        "N", "root map (us)", "256 nested maps (us)"
    );
    let mut n = 5_000;
    while n <= keys {
        let flat = run(n, 0);
        let nested = run(n, 256);
        println!("{n:>8} {flat:>22.1} {nested:>22.1}");
        n *= 2;
    }
    println!("\nautomerge 0.12: memory of a loaded document, 250-byte values");
    for (keys, writers) in [(10_000, 1), (10_000, 200), (40_000, 200)] {
        println!(
            "{keys:>8} keys, {writers:>4} writers: {:.0} B per key",
            memory_per_key(keys, writers)
        );
    }
}
