//! The multipart metadata of `POST /api/v1/firmware` (and the raw upload's query).
//! The properties are `updraft::fuzzing::firmware_upload`'s; `fuzz/run.sh firmware_upload MINUTES` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| updraft::fuzzing::firmware_upload(data));
