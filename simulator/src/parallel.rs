//! Independent work on more than one core, with results in a fixed order.
//!
//! The simulator stays deterministic on any number of threads because the
//! work handed to [`map`] is independent by construction (each job owns the
//! devices it touches, see `sim::Simulation::sync_round`) and the results
//! come back in the order of the jobs, whichever thread ran each one.

use std::sync::{Mutex, PoisonError};

/// Applies `job` to every item on up to `threads` threads (the caller's
/// own included) and returns the results in the order of `items`.
///
/// Threads take the next item as they finish one, so a few long jobs do
/// not leave a core idle while others wait. With one thread, or one item,
/// nothing is spawned.
pub fn map<T, R, F>(threads: usize, items: Vec<T>, job: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    let n = items.len();
    if threads <= 1 || n < 2 {
        return items.into_iter().map(job).collect();
    }
    let queue = Mutex::new(items.into_iter().enumerate());
    let work = || {
        let mut done = Vec::new();
        loop {
            // A job that panicked poisons nothing this loop relies on: the
            // iterator is only ever advanced under the lock.
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            match next {
                Some((i, item)) => done.push((i, job(item))),
                None => return done,
            }
        }
    };
    let mut all = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(n)).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in helpers {
            match h.join() {
                Ok(done) => all.extend(done),
                // A panic in a job is a bug in the simulator: surface it as
                // the single-threaded run would.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// The number of threads to use by default: the cores this process may run
/// on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order_on_any_number_of_threads() {
        let items: Vec<u64> = (0..1_000).collect();
        // Uneven jobs, so that threads finish out of order.
        let job = |x: u64| {
            let mut h = x;
            for _ in 0..(x % 7) * 1_000 {
                h = h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            }
            (x, h)
        };
        let one = map(1, items.clone(), job);
        for threads in [2, 3, 8] {
            assert_eq!(map(threads, items.clone(), job), one, "{threads} threads");
        }
        assert_eq!(one.iter().map(|(x, _)| *x).collect::<Vec<_>>(), items);
    }

    #[test]
    fn jobs_may_own_mutable_borrows_of_disjoint_items() {
        let mut counters = vec![0u32; 16];
        let borrows: Vec<&mut u32> = counters.iter_mut().collect();
        let out = map(2, borrows, |c| {
            *c += 1;
            *c
        });
        assert_eq!(out, vec![1; 16]);
        assert_eq!(counters, vec![1; 16]);
    }
}
