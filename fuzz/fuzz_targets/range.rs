//! `Range` headers against a file size (`http::range::resolve`).
//! The properties are `updraft::fuzzing::range`'s; `fuzz/run.sh range MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::range(data));
