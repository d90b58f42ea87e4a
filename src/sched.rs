//! The scheduling class of the message pipeline's own threads: the
//! verifier, the commit and checkpoint threads run as `SCHED_BATCH`.
//!
//! Why: every message crosses threads (connection task, verifier, router,
//! connection task again), and on a busy core Linux lets each thread it
//! wakes preempt the one that woke it. The waker is then switched out in
//! the middle of its work, only to be switched back in a moment later:
//! measured at 1k msgs/s on one core, 2.4 of the 9.4 context switches per
//! message were such preemptions. A `SCHED_BATCH` thread is not given that
//! wake-up preemption (the kernel decides by the woken thread's class, so
//! the front door's tasks they wake still get it); it runs when the core
//! next becomes free, which is usually microseconds later when the waker
//! blocks, and by then it often has more to take in one go. sled's I/O
//! threads inherit the class from whichever of these starts sled's pool.
//! Its share of the CPU (its nice value) is unchanged, and on an idle core
//! it runs at once as before.
//!
//! The router is the exception, and stays `SCHED_OTHER` with the front
//! door's runtime. It is the step between a batch made durable and its
//! delivery: in `SCHED_BATCH` a router woken by a commit waited, on a busy
//! core, for whatever ran to finish its slice, and every message of the
//! batch waited with it. Measured on one core at 40k msgs/s, the router
//! back in `SCHED_OTHER` took p50 from 1.04 to 0.79 ms for about 1 % more
//! CPU at 1k. Measured figures are in docs/benchmarks.md.

/// Puts the calling thread (and the threads it spawns later, which inherit
/// it) in `SCHED_BATCH`; where that is refused it stays as it was.
pub fn pipeline_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call, which only reads it; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "The pipeline threads cannot use SCHED_BATCH here.");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_calling_thread_becomes_batch_and_passes_it_on() {
        std::thread::spawn(|| {
            super::pipeline_thread();
            // SAFETY: plain queries of the calling thread.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_BATCH);
            let child = std::thread::spawn(|| unsafe { libc::sched_getscheduler(0) });
            assert_eq!(child.join().unwrap(), libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
