//! The `updraft` binary. Everything lives in the library; see `cli`.

/// mimalloc instead of the system allocator: under many concurrent requests glibc's malloc
/// spent up to 15% of the check-in path in `_int_malloc` and `malloc_consolidate`
/// (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(updraft::cli::run());
}
