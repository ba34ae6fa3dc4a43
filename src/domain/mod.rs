//! The domain: types, rules and decisions. Nothing here does IO or knows about HTTP,
//! MQTT or SQL; adapters and storage convert to and from these types.

pub mod accounts;
pub mod asset;
pub mod audit;
pub mod auth;
pub mod command;
pub mod compat;
pub mod config;
pub mod device;
pub mod error;
pub mod esp_image;
pub mod firmware;
pub mod ids;
pub mod lvgl;
pub mod mac;
pub mod mqtt;
pub mod patterns;
pub mod rollout;
pub mod secret;
pub mod update;
pub mod version;

pub use error::{Error, Result};
pub use ids::{ArtifactId, AssetId, AttemptId, CommandId, DeviceId, GroupId, ReleaseId, RolloutId};
