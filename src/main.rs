//! The `updraft` binary. Everything lives in the library; see `cli`.

fn main() {
    std::process::exit(updraft::cli::run());
}
