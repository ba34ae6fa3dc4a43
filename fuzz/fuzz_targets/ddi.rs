//! hawkBit DDI bodies (`http::compat::ddi`).
//! The properties are `updraft::fuzzing::ddi`'s; `fuzz/run.sh ddi MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::ddi(data));
