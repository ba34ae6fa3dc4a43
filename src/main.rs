//! The `updraft` binary. Everything lives in the library; see `cli`.

/// mimalloc instead of the system allocator: under many concurrent requests glibc's malloc
/// spent up to 15% of the check-in path in `_int_malloc` and `malloc_consolidate`
/// (docs/PERFORMANCE.md).
/// Version 2 (the crate's `v2` feature): it gives freed pages back after 10 ms, where version 3
/// waits a second and only for a thread that allocates again, which left idle MQTT sessions
/// costing 12 KiB instead of 9 and a soak's RSS stepping up with each rollout (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(updraft::cli::run());
}
