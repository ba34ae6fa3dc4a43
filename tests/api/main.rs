//! End-to-end tests of the real server over HTTP. See helpers.rs for the harness.

mod devices;
mod download;
mod firmware;
mod helpers;
mod ops;
