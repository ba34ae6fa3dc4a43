//! Device payloads, through every decoder of `mqtt::handler` and `mqtt::thingsboard`.
//! The properties are `updraft::fuzzing::mqtt_payload`'s; `fuzz/run.sh mqtt_payload MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::mqtt_payload(data));
