//! The image decode path of `services::images`, under its pixel and byte limits.
//! The properties are `updraft::fuzzing::image_decode`'s; `fuzz/run.sh image_decode MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::image_decode(data));
