//! Gives the memory mimalloc holds but no longer uses back to the operating system: now
//! ([`collect`]), and from then on as soon as a page is free ([`purge_at_once`]).
//!
//! mimalloc gives a freed page back only when the thread that freed it calls the allocator
//! again after a delay (10 ms in mimalloc 2). A server's start-up allocates and frees several
//! MiB on a thread that then waits for the rest of its life (the main thread, blocked on the
//! runtime), so that memory stayed resident for good: 5.8 MiB of a fresh server's 15.8 MiB of
//! anonymous memory (docs/PERFORMANCE.md, "Idle").
//!
//! This crate exists because `unsafe` is forbidden in Updraft itself, and neither the
//! `mimalloc` crate nor any other offers this call safely. It is the only `unsafe` code of
//! the project: two foreign calls with no preconditions.

/// Returns to the operating system what the calling thread's heap and every thread's freed
/// segments hold unused (`mi_collect(true)`). It walks every page of the heap: meant for the
/// end of start-up, not for hot paths.
pub fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called at any time from any thread;
    // with mimalloc as the global allocator it only touches mimalloc's own state.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h` of mimalloc 2 and 3), which
/// `libmimalloc-sys` does not name; a test checks it by its default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give a free page back to the system at once instead of 10 ms later, unless
/// `MIMALLOC_PURGE_DELAY` is set (the operator's choice stands). Pages that threads free and
/// take again within those 10 ms stayed resident under a check-in flood: 1.8 MiB at 100,000
/// devices, at no measured cost in check-ins or downloads a second (docs/PERFORMANCE.md, "idle").
pub fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` takes no pointers and may be called at any time from any thread;
    // an option is a plain integer that mimalloc reads on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_15_is_the_purge_delay_and_purge_at_once_sets_it_to_zero() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reading an option has no preconditions.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // The purge delay's default: 10 ms in mimalloc 2 (Updraft's build), 1000 in mimalloc 3
        // (this crate built alone). Its neighbour, `use_numa_nodes`, is 16 in both.
        assert!(before == 10 || before == 1000, "option 15 is not mimalloc's purge delay: {before}");
        assert_eq!(libmimalloc_sys::mi_option_use_numa_nodes, MI_OPTION_PURGE_DELAY + 1);
        purge_at_once();
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, 0);
    }
}
