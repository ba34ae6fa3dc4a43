//! Version strings (`domain::version`).
//! The properties are `updraft::fuzzing::version`'s; `fuzz/run.sh version MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::version(data));
