//! End-to-end tests of the real server over HTTP. See helpers.rs for the harness.

mod helpers;
mod devices;
mod firmware;
mod download;
mod ops;
