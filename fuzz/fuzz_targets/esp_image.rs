//! An ESP32 app image fed to the streaming parser whole and in pseudo-random chunks.
//! The properties are `updraft::fuzzing::esp_image`'s; `fuzz/run.sh esp_image MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::esp_image(data));
