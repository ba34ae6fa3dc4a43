//! MQTT topics and filters: `domain::mqtt` parsing and `allowed`.
//! The properties are `updraft::fuzzing::mqtt_topic`'s; `fuzz/run.sh mqtt_topic MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::mqtt_topic(data));
