//! End-to-end tests of the real server over HTTP. See helpers.rs for the harness.

mod compat;
mod devices;
mod download;
mod firmware;
mod helpers;
mod ops;
mod raw;
mod rollouts;
