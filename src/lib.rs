//! Updraft: a fleet server for ESP32-class devices and small Linux gateways.
//!
//! Reading order: `domain` (rules, no IO) → `storage` (all SQL) and `blob` (file bytes) →
//! `services` (use cases) → adapters (`http`, `mqtt`) → `startup` and `cli` (wiring).

/// Blob storage: local folder or S3.
pub mod blob;
/// Command line: `updraft serve` and maintenance subcommands.
pub mod cli;
/// Layered, validated settings.
pub mod config;
/// Types, rules and decisions; no IO.
pub mod domain;
/// The properties of the parsers of outside input, for `fuzz/` and the proptests.
#[doc(hidden)]
pub mod fuzzing;
/// The HTTP adapter: routes, wire types, middleware.
pub mod http;
/// The MQTT adapter: embedded broker, Updraft's client, device topics.
pub mod mqtt;
/// The connection-limited listener.
pub mod net;
/// Use cases combining domain, storage and blobs.
pub mod services;
/// Building and running the server.
pub mod startup;
/// The database; the only module with SQL.
pub mod storage;
/// Logs and metrics.
pub mod telemetry;
/// TLS certificates (reloaded when their files change) and devices' client certificates.
pub mod tls;
