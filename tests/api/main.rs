//! End-to-end tests of the real server over HTTP. See helpers.rs for the harness.

#![allow(
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "tests report figures on stderr and drive blocking helpers from plain threads"
)]

mod accountability;
mod accounts;
mod assets;
mod audit;
mod bad_input;
mod compat;
mod config;
mod config_seed003;
mod dashboard_api;
mod ddi;
mod device_names;
mod devices;
mod download;
mod esphome;
mod firmware;
mod first_use;
mod helpers;
mod hostile;
mod hot_paths;
mod lvgl;
mod lvgl_reference;
mod mqtt;
mod no_update;
mod oidc;
mod ops;
mod orphan_blobs;
mod properties;
mod raw;
mod rollouts;
mod route_auth;
mod secrets_in_logs;
mod security;
mod seed003_contract;
mod storage;
mod thingsboard;
mod tls;
mod tls_certs;
mod web;
