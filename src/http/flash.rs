//! The first flash of a new board over USB, from the dashboard: an ESP Web Tools manifest
//! (<https://esphome.github.io/esp-web-tools/>) for one stored build. The dashboard's "Flash
//! a board" page gives its URL to the `<esp-web-install-button>`, which fetches it and then
//! the build's file (the admin download, with the browser's session cookie) and writes it
//! over Web Serial.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Viewer;
use super::error::{ApiQuery, ApiResult, ErrorBody};
use crate::domain::esp_image::chip_family;
use crate::domain::{ArtifactId, Error};
use crate::services::firmware as service;

/// Where an ESP32 app image goes when the board already has ESP-IDF's bootloader and
/// partition table: the default `factory`/`ota_0` offset.
pub const APP_OFFSET: u64 = 0x1_0000;

/// Largest flash offset accepted (16 MiB, the largest common flash).
const MAX_OFFSET: u64 = 16 << 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(flash_manifest))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FlashManifestQuery {
    /// Flash offset of the file, decimal or `0x` hex. Default: `0x10000` for an ESP32 app
    /// image (after the bootloader and partition table), `0` for any other file (a merged
    /// image with bootloader and partition table, from `esptool merge_bin`).
    pub offset: Option<String>,
    /// The chip family, required when the file is not an ESP32 app image (which names its
    /// chip): an ESP-IDF target such as `esp32s3`, or `esp8266`.
    pub chip: Option<String>,
}

/// An ESP Web Tools manifest (its `Manifest` type).
#[derive(Serialize, ToSchema)]
pub struct FlashManifest {
    pub name: String,
    pub version: String,
    /// Asks whether to erase the flash first.
    pub new_install_prompt_erase: bool,
    pub builds: Vec<FlashBuild>,
}

#[derive(Serialize, ToSchema)]
pub struct FlashBuild {
    /// `ESP32`, `ESP32-S3`, `ESP32-C3`, ... (ESP Web Tools' names).
    #[serde(rename = "chipFamily")]
    pub chip_family: String,
    pub parts: Vec<FlashPart>,
}

#[derive(Serialize, ToSchema)]
pub struct FlashPart {
    /// The build's file (a path on this server, fetched with the browser's session).
    pub path: String,
    pub offset: u64,
}

/// An ESP Web Tools manifest for flashing one build over USB from the dashboard.
#[utoipa::path(
    get, path = "/api/v1/firmware/{id}/flash-manifest", tag = "firmware",
    params(("id" = String, Path, description = "Artifact id"), FlashManifestQuery),
    responses(
        (status = 200, body = FlashManifest),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "The chip is unknown (give `chip`), or the offset is not a flash offset", body = ErrorBody),
    ),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn flash_manifest(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path(id): Path<ArtifactId>,
    ApiQuery(query): ApiQuery<FlashManifestQuery>,
) -> ApiResult<Json<FlashManifest>> {
    let artifact = service::find(&state.core, &id).await?;
    let image_chip = artifact.image.as_ref().and_then(|i| i.chip.clone());
    let chip = match (&query.chip, &image_chip) {
        (Some(asked), _) => chip_family(asked).ok_or_else(|| {
            Error::unprocessable(
                "unknown_chip",
                format!("`{asked}` is not a chip ESP Web Tools can flash (esp32, esp32s3, esp32c3, ..., esp8266)"),
            )
        })?,
        (None, Some(chip)) => {
            chip_family(chip).ok_or_else(|| Error::unprocessable("unknown_chip", format!("ESP Web Tools cannot flash a {chip}")))?
        }
        (None, None) => {
            return Err(Error::unprocessable(
                "unknown_chip",
                "this build is not an ESP32 app image, so it does not say its chip: give `chip` (e.g. esp32s3)",
            )
            .into());
        }
    };
    let offset = match &query.offset {
        Some(text) => parse_offset(text)?,
        None if artifact.image.is_some() => APP_OFFSET,
        None => 0,
    };
    if offset % 0x1000 != 0 || offset.saturating_add(artifact.size) > MAX_OFFSET {
        return Err(Error::unprocessable(
            "invalid_offset",
            format!("offset {offset:#x} is not 4 KiB-aligned, or the build would not fit below 16 MiB at it"),
        )
        .into());
    }
    Ok(Json(FlashManifest {
        name: artifact.product.to_string(),
        version: artifact.version.clone(),
        new_install_prompt_erase: true,
        builds: vec![FlashBuild {
            chip_family: chip.to_string(),
            parts: vec![FlashPart { path: format!("/api/v1/firmware/{}/download", artifact.id), offset }],
        }],
    }))
}

fn parse_offset(text: &str) -> Result<u64, Error> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| Error::unprocessable("invalid_offset", format!("offset `{text}` is not a number (decimal or 0x hex)")))
}

#[cfg(test)]
mod tests {
    use super::parse_offset;

    #[test]
    fn offsets_are_decimal_or_hex() {
        assert_eq!(parse_offset("0x10000").unwrap(), 0x10000);
        assert_eq!(parse_offset("65536").unwrap(), 65536);
        assert_eq!(parse_offset("0").unwrap(), 0);
        assert!(parse_offset("0x").is_err());
        assert!(parse_offset("-1").is_err());
        assert!(parse_offset("1e3").is_err());
    }
}
