//! MAC addresses in every accepted form (`domain::mac`).
//! The properties are `updraft::fuzzing::mac`'s; `fuzz/run.sh mac MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::mac(data));
