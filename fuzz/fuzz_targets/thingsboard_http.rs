//! ThingsBoard HTTP bodies and queries (`http::compat::thingsboard`).
//! The properties are `updraft::fuzzing::thingsboard_http`'s; `fuzz/run.sh thingsboard_http MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::thingsboard_http(data));
