//! Gives the memory mimalloc holds but no longer uses back to the operating system, now.
//!
//! mimalloc gives a freed page back only when the thread that freed it calls the allocator
//! again after a delay (10 ms in mimalloc 2). A server's start-up allocates and frees several
//! MiB on a thread that then waits for the rest of its life (the main thread, blocked on the
//! runtime), so that memory stayed resident for good: 5.8 MiB of a fresh server's 15.8 MiB of
//! anonymous memory (docs/PERFORMANCE.md, "Idle").
//!
//! This crate exists because `unsafe` is forbidden in Updraft itself, and neither the
//! `mimalloc` crate nor any other offers this call safely. It is the only `unsafe` code of
//! the project, one foreign call with no preconditions.

/// Returns to the operating system what the calling thread's heap and every thread's freed
/// segments hold unused (`mi_collect(true)`). It walks every page of the heap: meant for the
/// end of start-up, not for hot paths.
pub fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called at any time from any thread;
    // with mimalloc as the global allocator it only touches mimalloc's own state.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
