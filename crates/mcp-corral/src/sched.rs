//! CPU scheduling: Corral runs as a batch task, the servers it starts as ordinary ones.
//!
//! Corral does a few microseconds of work per message it relays, and each message that reaches
//! it while it sleeps wakes it. Under the default policy a woken Corral preempts whatever runs
//! (often the client or the server it is relaying for), handles the one or two messages that
//! have arrived, and sleeps again: many context switches, small batches, and the two
//! processes it serves lose their cores to it. As `SCHED_BATCH` it still gets its fair share
//! of CPU time but does not preempt on wakeup; it runs when a core is free, by which time more
//! messages have queued, so it relays them in bigger batches at a fraction of the cost per
//! message (measured in docs/benchmarks.md). On an idle machine nothing changes: a free core
//! runs it at once.
//!
//! Servers must not inherit the policy: each child is put back to `SCHED_OTHER` before exec
//! ([`reset_in_child`]). `CORRAL_SCHED=normal` keeps Corral under the default policy.

/// Makes the calling thread, and every thread it creates afterwards, a batch task. Call it
/// before the async runtime starts its threads. Returns whether it took effect.
pub fn prefer_batching() -> bool {
    if std::env::var("CORRAL_SCHED").is_ok_and(|v| v == "normal") {
        return false;
    }
    set(libc::SCHED_BATCH)
}

/// Puts the calling process back under the default policy. Async-signal-safe: one system
/// call on a stack value, so it may run between `fork` and `exec`.
pub fn reset_in_child() -> bool {
    set(libc::SCHED_OTHER)
}

fn set(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread. Switching between SCHED_OTHER and SCHED_BATCH needs no privilege.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_switch_to_batch_and_back() {
        std::thread::spawn(|| {
            assert!(set(libc::SCHED_BATCH));
            // SAFETY: querying the calling thread's policy.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_BATCH);
            assert!(reset_in_child());
            // SAFETY: as above.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
