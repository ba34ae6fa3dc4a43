//! Seed 001's djb2 tokens and version syntax (`domain::compat`).
//! The properties are `updraft::fuzzing::compat`'s; `fuzz/run.sh compat MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::compat(data));
