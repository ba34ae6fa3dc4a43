//! Configuration documents: secret marking, storage views and the merge (`domain::config`).
//! The properties are `updraft::fuzzing::config_layers`'s; `fuzz/run.sh config MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::config_layers(data));
