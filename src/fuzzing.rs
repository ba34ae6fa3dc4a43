//! The properties of every parser of outside input, written once and checked twice: by the
//! cargo-fuzz targets of `fuzz/` (nightly, run for minutes; docs/RELIABILITY.md, "Fuzzing")
//! and by the proptests beside each parser (the normal suite, a bounded number of cases).
//!
//! Each function takes what a fuzzer gives, bytes, reads them as its parser's input (the
//! layout is in its comment; `fuzz/corpus/<target>/` holds examples) and panics when a
//! property fails. Input the parser refuses is not a failure; a panic inside the parser is.
//! Not part of Updraft's interface: it exists for `fuzz/` and the tests.

use std::cmp::Ordering;

use axum::body::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::Error;
use crate::domain::compat;
use crate::domain::config;
use crate::domain::esp_image::{self, EspImageParser};
use crate::domain::firmware::{self, ProductName, UploadMeta};
use crate::domain::lvgl::{ColorFormat, LvglVersion, SizeRule};
use crate::domain::mac::Mac;
use crate::domain::mqtt::{self, Access, Inbound, Principal, Role};
use crate::domain::version::Version;
use crate::http::range::{RangeRequest, resolve};

/// A target's properties, checked on one input.
pub type Check = fn(&[u8]);

/// Every target by its name in `fuzz/fuzz_targets/` and `fuzz/corpus/`.
pub const TARGETS: [(&str, Check); 12] = [
    ("esp_image", esp_image),
    ("version", version),
    ("mac", mac),
    ("range", range),
    ("firmware_upload", firmware_upload),
    ("mqtt_topic", mqtt_topic),
    ("mqtt_payload", mqtt_payload),
    ("compat", compat),
    ("config", config_layers),
    ("image_decode", image_decode),
    ("ddi", ddi),
    ("thingsboard_http", thingsboard_http),
];

/// Sizes of builds the chunked downloads are checked against.
const TOTALS: [u64; 5] = [0, 1, 1000, 1 << 20, u64::MAX / 2];
/// Chunk numbers a device may ask for.
const CHUNKS: [u64; 5] = [0, 1, 2, 4097, u64::MAX];

/// The next number of a xorshift64 sequence.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

// ---- ESP32 app images ----

/// `[4 bytes: seed of the chunk sizes][the file]`. The file fed in one piece and in chunks of
/// pseudo-random sizes (empty ones included) gives the same answer; a valid image accounts
/// for every byte, has its appended SHA-256 verified and claims to be an image.
pub fn esp_image(data: &[u8]) {
    let (seed, file) = data.split_at(data.len().min(4));
    let whole = esp_image::parse(file);

    let mut state = seed.iter().fold(0x9E37_79B9_7F4A_7C15u64, |s, b| (s << 8) ^ u64::from(*b)) | 1;
    let mut parser = EspImageParser::new();
    let mut rest = file;
    while !rest.is_empty() {
        let roll = next(&mut state);
        let size = match roll % 8 {
            0 => 0,
            1..=5 => (roll >> 8) as usize % 40,
            _ => (roll >> 8) as usize % 4096,
        };
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        parser.update(chunk);
        rest = after;
    }
    parser.update(&[]);
    assert_eq!(parser.finish(), whole, "the streamed answer differs from the whole file's");

    match whole {
        Ok(None) => assert!(!esp_image::looks_like_esp32_app(file), "an image header was not taken as an image"),
        Err(_) => assert!(esp_image::looks_like_esp32_app(file), "a file that is no image was refused as a bad image"),
        Ok(Some(info)) => {
            assert!(esp_image::looks_like_esp32_app(file));
            assert_eq!(info.image_len + info.trailing_bytes, file.len() as u64, "the image and what follows are the whole file");
            assert!(info.image_len <= esp_image::MAX_IMAGE_LEN);
            assert!((1..=esp_image::MAX_SEGMENTS).contains(&info.segment_count));
            // Fixed 32-byte fields, NUL-terminated or (read whole) filling all 32 bytes.
            assert!(info.version.len() <= 32 && info.project_name.len() <= 32 && info.idf_ver.len() <= 32);
            let end = usize::try_from(info.image_len).expect("image length");
            match info.appended_sha256 {
                Some(hash) => {
                    assert!(info.hash_appended);
                    assert_eq!(hash[..], Sha256::digest(&file[..end - 32])[..], "the appended SHA-256 is the image's");
                }
                None => assert!(!info.hash_appended),
            }
        }
    }
}

/// What the image builder writes, the parser reads back, whatever the chunking.
#[allow(clippy::too_many_arguments, reason = "one argument per setting of the image builder")]
pub fn esp_image_built(
    project: &str,
    version: &str,
    chip_id: u16,
    payload_len: usize,
    seed: u64,
    hash: bool,
    flash: (u8, u8, u8),
    trailing: &[u8],
) {
    let image = esp_image::builder::EspImageBuilder::new(project, version)
        .chip_id(chip_id)
        .payload_len(payload_len)
        .seed(seed)
        .hash_appended(hash)
        .flash(flash.0, flash.1, flash.2)
        .trailing_bytes(trailing)
        .build();
    let info = esp_image::parse(&image).expect("a built image is valid").expect("a built image is an image");
    let cut = |s: &str| {
        let mut end = s.len().min(31);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].split('\0').next().unwrap_or_default().to_string()
    };
    assert_eq!(info.project_name, cut(project));
    assert_eq!(info.version, cut(version));
    assert_eq!(info.chip_id, chip_id);
    assert_eq!(info.hash_appended, hash);
    assert_eq!((info.spi_mode, info.spi_speed, info.spi_size), (flash.0, flash.1 & 0x0F, flash.2 & 0x0F));
    assert_eq!(info.trailing_bytes, trailing.len() as u64);
    let mut data = seed.to_le_bytes()[..4].to_vec();
    data.extend(&image);
    esp_image(&data);
}

// ---- versions and MACs ----

/// A version as text. Its canonical form reads back as the same version, its plain form is
/// the release it belongs to, and esp32FOTA's form is the same version.
pub fn version(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(version) = Version::parse(&text) else { return };
    let canonical = version.canonical();
    let again = Version::parse(&canonical).unwrap_or_else(|e| panic!("the canonical form of `{text}` does not parse: {e}"));
    assert!(again.is_identical(&version) && again.cmp(&version) == Ordering::Equal);
    assert_eq!(again.canonical(), canonical);
    assert_eq!(version.to_string(), canonical);
    let plain = Version::parse(&version.plain()).expect("the plain form parses");
    if version.is_prerelease() {
        assert!(version < plain, "a pre-release sorts before its release");
    } else {
        assert_eq!(plain, version);
    }
    match compat::esp32fota_version(&version) {
        Some(text) => assert_eq!(Version::parse(&text).expect("esp32FOTA's form parses"), version),
        None => assert!(version.is_prerelease()),
    }
}

/// A MAC as text. Every form Updraft writes reads back as the same MAC.
pub fn mac(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(mac) = Mac::parse(&text) {
        round_trips(mac);
    }
    if let Ok(mac) = Mac::parse_esp32fota_id(&text) {
        round_trips(mac);
        if text.trim().bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(mac.efuse_decimal().parse::<u64>().ok(), text.trim().parse::<u64>().ok(), "the eFuse value is the MAC");
        }
    }
}

fn round_trips(mac: Mac) {
    for form in [mac.canonical(), mac.hyphenated_lower(), mac.bare_upper(), format!("efuse:{}", mac.efuse_decimal())] {
        assert_eq!(Mac::parse(&form).ok(), Some(mac), "`{form}` reads back");
    }
    assert_eq!(Mac::from_efuse_decimal(&mac.efuse_decimal()), Some(mac));
    assert_eq!(Mac::parse_esp32fota_id(&mac.efuse_decimal()).ok(), Some(mac));
}

// ---- byte ranges ----

/// `<file size>\n<Range header>`. A range served lies inside the file and is not empty.
pub fn range(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;
    let (size, header) = text.split_once('\n').unwrap_or(("", text));
    let size = size.trim().parse::<u64>().unwrap_or(size.len() as u64);
    assert_eq!(resolve(None, size), RangeRequest::Full);
    match resolve(Some(header), size) {
        RangeRequest::Partial(range) => assert!(range.start < range.end && range.end <= size, "{range:?} of {size} bytes"),
        RangeRequest::Unsatisfiable => assert!(header.contains("bytes="), "416 for a header that asks no bytes"),
        RangeRequest::Full => {}
    }
}

/// `bytes=<first>-<last>`, `bytes=<first>-` or `bytes=-<last>` against a model of RFC 9110's
/// single ranges.
pub fn range_model(first: Option<u64>, last: Option<u64>, size: u64) {
    let header = format!("bytes={}-{}", first.map(|n| n.to_string()).unwrap_or_default(), last.map(|n| n.to_string()).unwrap_or_default());
    let expected = match (first, last) {
        (None, None) => RangeRequest::Full,
        (None, Some(n)) if n == 0 || size == 0 => RangeRequest::Unsatisfiable,
        (None, Some(n)) => RangeRequest::Partial(size - n.min(size)..size),
        (Some(a), Some(b)) if b < a => RangeRequest::Full,
        (Some(a), _) if a >= size => RangeRequest::Unsatisfiable,
        (Some(a), None) => RangeRequest::Partial(a..size),
        (Some(a), Some(b)) => RangeRequest::Partial(a..b.saturating_add(1).min(size)),
    };
    assert_eq!(resolve(Some(&header), size), expected, "`{header}` of {size} bytes");
    range(format!("{size}\n{header}").as_bytes());
}

// ---- firmware uploads ----

/// The boundary of the multipart bodies of `firmware_upload`.
pub const BOUNDARY: &str = "fuzz";

/// A `multipart/form-data` body with [`BOUNDARY`] of these fields (`file` is sent as a file).
pub fn multipart_body(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        let disposition = if *name == "file" {
            "Content-Disposition: form-data; name=\"file\"; filename=\"app.bin\"\r\nContent-Type: application/octet-stream".to_string()
        } else {
            format!("Content-Disposition: form-data; name=\"{name}\"")
        };
        body.extend(format!("--{BOUNDARY}\r\n{disposition}\r\n\r\n").as_bytes());
        body.extend(*value);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A `multipart/form-data` body (boundary [`BOUNDARY`]) of `POST /api/v1/firmware`, read as
/// the handler reads it; the same bytes are also read as the query string of a raw upload.
/// See [`upload_meta`] for what must hold.
pub fn firmware_upload(data: &[u8]) {
    use axum::extract::{FromRequest, Multipart};
    let request = axum::http::Request::builder()
        .method("POST")
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(axum::body::Body::from(data.to_vec()))
        .expect("a request");
    let read = futures::executor::block_on(async {
        let mut multipart = Multipart::from_request(request, &()).await.ok()?;
        let mut meta = UploadMeta::default();
        let mut file: Option<Vec<u8>> = None;
        while let Some(field) = multipart.next_field().await.ok()? {
            let name = field.name().unwrap_or("").to_string();
            let bytes = field.bytes().await.ok()?;
            if name == "file" {
                if file.replace(bytes.to_vec()).is_some() {
                    return None;
                }
                continue;
            }
            if bytes.len() > crate::http::firmware::MAX_FIELD_BYTES {
                return None;
            }
            let value = String::from_utf8(bytes.to_vec()).ok()?;
            if let Err(e) = crate::http::firmware::set_meta_field(&mut meta, &name, value) {
                assert_eq!(e.code(), "invalid_multipart");
                return None;
            }
        }
        Some((meta, file))
    });
    if let Some((meta, file)) = read {
        upload_meta(&meta, file.as_deref());
    }
    let query = String::from_utf8_lossy(data);
    if let Ok(query) = serde_urlencoded::from_str::<crate::http::firmware::UploadQuery>(&query) {
        upload_meta(&query.into_meta(), None);
    }
}

/// Upload metadata and the file. What `precheck` refuses `resolve` refuses too, with a 400 or
/// 422; what `resolve` accepts is valid, agrees with what was given and with the image.
pub fn upload_meta(meta: &UploadMeta, file: Option<&[u8]>) {
    let image = file.and_then(|f| esp_image::parse(f).ok().flatten());
    let resolved = firmware::resolve(meta, image.as_ref());
    if firmware::precheck(meta).is_err() {
        assert!(resolved.is_err(), "resolve accepts what precheck refuses");
    }
    let spec = match resolved {
        Ok(spec) => spec,
        Err(e) => {
            assert!(matches!(e, Error::Invalid { .. } | Error::Unprocessable { .. }), "{e:?}");
            return;
        }
    };
    assert_eq!(ProductName::parse(spec.product.as_str()).ok().as_ref(), Some(&spec.product));
    if let Some(product) = &meta.product {
        assert_eq!(ProductName::parse(product).ok().as_ref(), Some(&spec.product));
    }
    let label = Version::parse(&spec.version_label).expect("the version label parses");
    assert!(label.is_identical(&spec.version));
    let embedded = image.as_ref().and_then(|i| Version::parse(&i.version).ok());
    match (&meta.version, embedded) {
        (Some(given), embedded) => {
            let given = Version::parse(given).expect("the given version parses");
            assert!(given.is_identical(&spec.version));
            if let Some(embedded) = embedded {
                assert_eq!(embedded.canonical(), spec.version.canonical(), "the image's version agrees");
            }
        }
        (None, embedded) => assert!(embedded.is_some_and(|e| e.is_identical(&spec.version))),
    }
    assert!(!spec.hardware.is_empty());
    for (i, id) in spec.hardware.iter().enumerate() {
        assert!(!spec.hardware[..i].contains(id), "hardware `{}` listed twice", id.as_str());
    }
    assert!(spec.notes.len() <= firmware::MAX_NOTES_LEN);
}

// ---- MQTT ----

const DEVICE: &str = "dev-1";
const OTHER_DEVICE: &str = "dev-10";

fn device_mac() -> Mac {
    Mac::parse("AA:BB:CC:DD:EE:01").expect("a MAC")
}

/// Topics of another device (and another MAC): no device credential may reach them.
fn other_topics() -> Vec<String> {
    let mut topics: Vec<String> = ["status", "telemetry", "attributes", "ota", "ota/status", "config", "cmd", "cmd/result"]
        .iter()
        .map(|t| format!("updraft/{OTHER_DEVICE}/{t}"))
        .collect();
    for mac in ["AA:BB:CC:DD:EE:02", "aa-bb-cc-dd-ee-02", "AABBCCDDEE02"] {
        topics.extend(["firmware", "flashing/status", "keepalive"].iter().map(|t| format!("{mac}/{t}")));
    }
    topics
}

/// MQTT's own matching of a topic name against a filter (MQTT 3.1.1 §4.7).
fn mqtt_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let topic: Vec<&str> = topic.split('/').collect();
    let filter: Vec<&str> = filter.split('/').collect();
    for (i, level) in filter.iter().enumerate() {
        if *level == "#" {
            return true;
        }
        match topic.get(i) {
            Some(t) if *level == "+" || level == t => {}
            _ => return false,
        }
    }
    filter.len() == topic.len()
}

/// A topic name or filter. `Inbound::parse` reads back the topics Updraft names, the server
/// subscribes to every topic it parses, a device reaches only its own topics, nobody
/// publishes to a wildcard, and `covers` is MQTT matching.
pub fn mqtt_topic(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let topic: &str = &text;
    if let Some(inbound) = Inbound::parse(topic) {
        let expected = match &inbound {
            Inbound::Status { device_id } => mqtt::status_topic(device_id),
            Inbound::Telemetry { device_id } => format!("updraft/{}/telemetry", device_id.as_str()),
            Inbound::Attributes { device_id } => format!("updraft/{}/attributes", device_id.as_str()),
            Inbound::OtaStatus { device_id } => format!("{}/status", mqtt::ota_topic(device_id)),
            Inbound::CommandResult { device_id } => format!("{}/result", mqtt::command_topic(device_id)),
            Inbound::LegacyFlashing { mac, mac_text } => {
                assert_eq!(Mac::parse(mac_text).ok(), Some(*mac));
                format!("{mac_text}/flashing/status")
            }
            Inbound::LegacyKeepalive { mac, mac_text } => {
                assert_eq!(Mac::parse(mac_text).ok(), Some(*mac));
                format!("{mac_text}/keepalive")
            }
        };
        assert_eq!(expected, topic, "{inbound:?}");
        // Devices publish topic names, without wildcards: the server receives every one.
        for split in [false, true].into_iter().filter(|_| !topic.contains(['+', '#'])) {
            let filters = Inbound::subscriptions(split);
            assert!(filters.iter().any(|(f, _)| mqtt::covers(mqtt::strip_share(f), topic)), "the server does not receive `{topic}`");
        }
    }

    let principals = [
        Principal::Device { id: DEVICE.into(), mac: Some(device_mac()) },
        Principal::Device { id: DEVICE.into(), mac: None },
        Principal::User { name: "ops".into(), role: Role::FleetRead },
        Principal::User { name: "gw".into(), role: Role::Gateway },
        Principal::User { name: "root".into(), role: Role::Admin },
        Principal::Server,
        Principal::Provision,
    ];
    let others = other_topics();
    let well_formed = !topic.is_empty() && topic.len() <= 1024 && !topic.contains('\0');
    for principal in &principals {
        if mqtt::allowed(principal, Access::Publish, topic) {
            assert!(well_formed && !topic.contains(['+', '#']), "{principal:?} may publish to `{topic}`");
            assert!(!matches!(principal, Principal::User { role: Role::FleetRead, .. }));
            if let Principal::Device { .. } = principal {
                assert!(others.iter().all(|o| o != topic), "{principal:?} may publish to another device's `{topic}`");
            }
        }
        if mqtt::allowed(principal, Access::Subscribe, topic) {
            let filter = mqtt::strip_share(topic);
            assert!(!filter.is_empty() && filter.len() <= 1024 && !filter.contains('\0'));
            if let Principal::Device { .. } = principal {
                let reached = others.iter().find(|o| mqtt::covers(filter, o));
                assert!(reached.is_none(), "{principal:?} may subscribe to `{topic}`, which reaches {reached:?}");
            }
        }
    }

    assert!(mqtt::covers(topic, topic), "`{topic}` covers itself");
    if !topic.contains(['+', '#']) {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut filters =
            vec!["#".to_string(), "+".to_string(), "+/+".to_string(), "updraft/+/status".to_string(), "+/keepalive".to_string()];
        for i in 0..levels.len() {
            let mut plus = levels.clone();
            plus[i] = "+";
            filters.push(plus.join("/"));
            filters.push(format!("{}/#", levels[..i].join("/")));
        }
        for filter in filters {
            assert_eq!(mqtt::covers(&filter, topic), mqtt_matches(&filter, topic), "`{filter}` against `{topic}`");
        }
    }
}

/// A device's payload, read by every decoder of `mqtt::handler` and `mqtt::thingsboard`: none
/// takes more than 64 KiB, the JSON ones agree with each other, the word decoders ignore
/// padding and case, and the payload read as a firmware chunk size asks for bytes inside the
/// build.
pub fn mqtt_payload(data: &[u8]) {
    const MAX: usize = 64 * 1024;
    let status = mqtt::parse_status(data);
    let padded = [b" \t".as_slice(), data, b"\r\n".as_slice()].concat();
    assert_eq!(mqtt::parse_status(&padded), status);
    let flash = mqtt::parse_legacy_flash_state(data);
    assert_eq!(mqtt::parse_legacy_flash_state(&padded), flash);
    assert_eq!(mqtt::parse_legacy_flash_state(&data.to_ascii_uppercase()), flash);

    let plain = serde_json::from_slice::<Value>(data).ok();
    let json = crate::mqtt::handler::json(data);
    let tb = crate::mqtt::thingsboard::parse_json(data);
    let ota = crate::mqtt::handler::ota_status(data);
    for refused in [json.as_ref().err(), tb.as_ref().err(), ota.as_ref().err()].into_iter().flatten() {
        assert!(matches!(refused, Error::Invalid { .. }), "{refused:?}");
    }
    if data.len() > MAX {
        assert!(json.is_err() && tb.is_err() && ota.is_err(), "a message over 64 KiB is read");
    } else {
        assert_eq!(json.as_ref().ok(), plain.as_ref());
        assert_eq!(tb.as_ref().ok(), plain.as_ref());
        if ota.is_ok() {
            assert!(plain.as_ref().is_some_and(|v| v.get("state").is_some_and(Value::is_string)));
        }
    }

    // `v2/fw/request/{rid}/chunk/{n}`: the payload is the chunk size.
    if let Some(Ok(size)) = std::str::from_utf8(data).ok().map(str::trim).filter(|t| !t.is_empty()).map(str::parse::<usize>) {
        for total in TOTALS {
            for chunk in CHUNKS {
                chunk_bounds(total, size, chunk);
            }
        }
    }
}

/// The bytes the MQTT firmware chunk `chunk` of `size` bytes of a `total`-byte build covers.
pub fn chunk_bounds(total: u64, size: usize, chunk: u64) {
    let (start, end) = crate::mqtt::thingsboard::chunk_bounds(total, size, chunk);
    assert!(start <= end && end <= total, "{start}..{end} of {total}");
    if size == 0 {
        assert_eq!((start, end), if chunk == 0 { (0, total) } else { (total, total) });
    } else {
        assert!(end - start <= size as u64);
        if let Some(first) = (size as u64).checked_mul(chunk).filter(|first| *first < total) {
            assert_eq!((start, end), (first, first.saturating_add(size as u64).min(total)));
        }
    }
}

// ---- compatibility protocols ----

/// `<MAC as sent>\n<secret>\n<presented token>\n<version>`. Both token variants of seed 001
/// are accepted in any case and padding, a presented token matches exactly when its value is
/// one of them, and a seed-001 version is a version.
pub fn compat(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let (mac, secret, presented, version) =
        (lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let hashed = format!("{}{secret}", mac.replace(':', "").to_ascii_uppercase());
    let (firmware, readme) = (compat::djb2(0, &hashed), compat::djb2(5381, &hashed));
    for token in [format!("{firmware:x}"), format!("{firmware:X}"), format!("{readme:08X}"), format!(" {readme:08x} ")] {
        assert!(compat::ota_server_token_matches(&token, mac, secret), "`{token}` for `{mac}`");
    }
    let split = hashed.len() / 2;
    if hashed.is_char_boundary(split) {
        assert_eq!(compat::djb2(compat::djb2(7, &hashed[..split]), &hashed[split..]), compat::djb2(7, &hashed));
    }
    let trimmed = presented.trim();
    let value = (!trimmed.is_empty() && trimmed.len() <= 8 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(trimmed, 16).ok())
        .flatten();
    assert_eq!(compat::ota_server_token_matches(presented, mac, secret), value.is_some_and(|v| v == firmware || v == readme));

    if compat::ota_server_version_valid(version) {
        let parsed = Version::parse(version).unwrap_or_else(|e| panic!("seed 001's `{version}` is not a version: {e}"));
        assert!(!parsed.is_prerelease());
        assert!(compat::esp32fota_version(&parsed).is_some());
    }
}

// ---- configuration ----

fn fake_encrypt(value: &Value) -> crate::domain::Result<String> {
    Ok(format!("enc:{value}"))
}

fn fake_decrypt(token: &str) -> crate::domain::Result<Value> {
    let json = token.strip_prefix("enc:").expect("a token of fake_encrypt");
    Ok(serde_json::from_str(json).expect("the encrypted JSON"))
}

/// Every `{"$secret": v}` replaced by `v`.
fn unsecret(value: &Value) -> Value {
    match value {
        Value::Object(map) if map.len() == 1 && map.contains_key(config::SECRET_KEY) => map[config::SECRET_KEY].clone(),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), unsecret(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(unsecret).collect()),
        other => other.clone(),
    }
}

/// Visits every value with its JSON pointer (a stored secret as one value).
fn walk(value: &Value, pointer: &str, visit: &mut dyn FnMut(&str, &Value)) {
    visit(pointer, value);
    if config::is_encrypted(value) {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                walk(child, &format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1")), visit);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{pointer}/{i}"), visit);
            }
        }
        _ => {}
    }
}

/// How many secrets (`{"$secret": v}`, `v` taken whole) a written document holds.
fn secrets_written(value: &Value) -> usize {
    match value {
        Value::Object(map) if map.contains_key(config::SECRET_KEY) => 1,
        Value::Object(map) => map.values().map(secrets_written).sum(),
        Value::Array(items) => items.iter().map(secrets_written).sum(),
        _ => 0,
    }
}

/// The places and number of stored secrets, and whether any marker is left unstored.
fn secrets_of(value: &Value) -> (Vec<String>, bool) {
    let mut places = Vec::new();
    let mut stray = false;
    walk(value, "", &mut |pointer, v| {
        if config::is_encrypted(v) {
            places.push(pointer.to_string());
        } else if let Value::Object(map) = v {
            stray |= map.contains_key(config::SECRET_KEY) || map.contains_key(config::ENCRYPTED_KEY);
        }
    });
    (places, stray)
}

/// JSON Merge Patch (RFC 7386) with stored secrets as leaves: the reference of `config::merge`.
fn merge_patch(target: &mut Value, patch: &Value) {
    if !patch.is_object() || config::is_encrypted(patch) {
        *target = patch.clone();
        return;
    }
    if !target.is_object() || config::is_encrypted(target) {
        *target = Value::Object(Map::new());
    }
    let (Value::Object(target), Value::Object(patch)) = (target, patch) else { return };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Up to four documents separated by the byte 0x1E (JSON; one that is not is skipped).
/// `prepare` stores every secret encrypted and nothing else, a stored document read back
/// (masked) and written again is unchanged, the views hide every secret, and the merge of
/// the stored layers is JSON Merge Patch with secrets kept whole and marked, every leaf's
/// source named.
pub fn config_layers(data: &[u8]) {
    let documents: Vec<Value> = data.split(|b| *b == 0x1E).take(4).filter_map(|d| serde_json::from_slice(d).ok()).collect();
    let mut stored = Vec::new();
    for document in &documents {
        let prepared = config::prepare(document, None, &mut fake_encrypt);
        let doc = match prepared {
            Ok(doc) => doc,
            Err(e) => {
                assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
                continue;
            }
        };
        let (places, stray) = secrets_of(&doc);
        assert!(!stray, "a secret marker is stored as given: {doc}");
        assert_eq!(places.len(), secrets_written(document), "every secret written is stored encrypted");
        assert_eq!(config::reveal(&doc, &mut fake_decrypt).expect("reveal"), unsecret(document));

        // What the secrets became: no view may hold one of these strings (a key or a plain
        // value that merely contains `enc:` is no secret).
        let ciphertexts: Vec<&str> = places.iter().filter_map(|p| doc.pointer(p)?[config::ENCRYPTED_KEY].as_str()).collect();
        let masked = config::mask(&doc);
        assert!(!holds_any(&masked, &ciphertexts) && secrets_of(&masked).0.is_empty(), "the mask shows a secret: {masked}");
        let anonymous = config::without_secrets(&doc);
        assert!(secrets_of(&anonymous).0.is_empty() && !secrets_of(&anonymous).1);
        let rewritten = config::prepare(&masked, Some(&doc), &mut |_| panic!("a kept secret was encrypted again")).expect("rewrite");
        assert_eq!(rewritten, doc, "a document read back and written again changed");
        assert!(config::diff(Some(&doc), Some(&doc)).is_empty());
        for change in config::diff(None, Some(&doc)) {
            assert!(!change.to.as_ref().is_some_and(|to| holds_any(to, &ciphertexts)), "a diff shows a secret");
        }
        stored.push(doc);
    }

    let layers: Vec<(String, &Value)> = stored.iter().enumerate().map(|(i, d)| (format!("layer{i}"), d)).collect();
    let merged = config::merge(&layers);
    let mut expected = Value::Object(Map::new());
    for (_, layer) in &layers {
        merge_patch(&mut expected, layer);
    }
    assert_eq!(merged.content, expected, "the merge is not JSON Merge Patch");
    for place in secrets_of(&merged.content).0 {
        let value = merged.content.pointer(&place);
        assert!(layers.iter().any(|(_, l)| l.pointer(&place) == value), "the secret at `{place}` is no layer's");
    }
    config::reveal(&merged.content, &mut fake_decrypt).expect("the merged document reveals");
    for pointer in merged.sources.keys() {
        assert!(merged.content.pointer(pointer).is_some(), "a source for `{pointer}`, which is not in the document");
    }
    walk(&merged.content, "", &mut |pointer, value| {
        let leaf = !value.is_object() || config::is_encrypted(value) || value.as_object().is_some_and(Map::is_empty);
        if leaf && !pointer.is_empty() && !pointer_in_array(&merged.content, pointer) {
            assert!(merged.sources.contains_key(pointer), "no source for `{pointer}` in {}", merged.content);
        }
    });
}

/// Whether a string anywhere in `value` is one of `strings`.
fn holds_any(value: &Value, strings: &[&str]) -> bool {
    match value {
        Value::String(text) => strings.contains(&text.as_str()),
        Value::Array(items) => items.iter().any(|v| holds_any(v, strings)),
        Value::Object(map) => map.values().any(|v| holds_any(v, strings)),
        _ => false,
    }
}

/// Whether `pointer` lies inside an array (array items are parts of one leaf).
fn pointer_in_array(root: &Value, pointer: &str) -> bool {
    let mut at = String::new();
    for token in pointer.split('/').skip(1) {
        if root.pointer(&at).is_some_and(Value::is_array) {
            return true;
        }
        at = format!("{at}/{token}");
    }
    false
}

// ---- images ----

/// The pixel limit of the image targets (`UPDRAFT_IMAGE_MAX_PIXELS` of the fuzzer).
pub const IMAGE_MAX_PIXELS: u64 = 1 << 16;

/// `[options][box side][the file]`: options' low 3 bits pick the colour format, 0x08 LVGL 9,
/// 0x10 seed 003's size rule, 0x20 C source; a box side of 0 keeps the size. A file is
/// converted or refused as `invalid_image`/`image_too_large` (422/400), never more pixels
/// than the limit; `fuzz/run.sh` also caps each allocation, so a decoder that ignored its
/// byte limit is caught.
pub fn image_decode(data: &[u8]) {
    let [options, side, file @ ..] = data else { return };
    let formats = [
        ColorFormat::Rgb565,
        ColorFormat::Rgb565A8,
        ColorFormat::Rgb888,
        ColorFormat::Xrgb8888,
        ColorFormat::Argb8888,
        ColorFormat::L8,
        ColorFormat::A8,
    ];
    let version = if options & 0x08 != 0 { LvglVersion::V9 } else { LvglVersion::V8 };
    let side = (*side != 0).then_some(u32::from(*side));
    let convert = crate::services::images::ConvertOptions {
        width: side,
        height: side,
        size_rule: if options & 0x10 != 0 { SizeRule::Seed003 } else { SizeRule::Nearest },
        cf: formats[usize::from(options & 0x07) % formats.len()],
        version,
        c_array: (options & 0x20 != 0).then(|| "image".to_string()),
    };
    let out = match crate::services::images::convert_blocking(file.to_vec(), &convert, IMAGE_MAX_PIXELS) {
        Ok(out) => out,
        Err(e) => {
            // 400 for options LVGL cannot do (RGB888 in LVGL 8), else 422 or 400 for the file.
            assert!(matches!(e, Error::Invalid { .. } | Error::Unprocessable { .. }), "{e:?}");
            return;
        }
    };
    if convert.c_array.is_some() {
        assert!(std::str::from_utf8(&out).is_ok());
        return;
    }
    let (header, width, height) = match version {
        LvglVersion::V9 => (12, u16::from_le_bytes([out[4], out[5]]) as u64, u16::from_le_bytes([out[6], out[7]]) as u64),
        LvglVersion::V8 => {
            let word = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
            (4, u64::from((word >> 10) & 0x7FF), u64::from(word >> 21))
        }
    };
    let pixels = width * height;
    assert!(pixels > 0 && pixels <= IMAGE_MAX_PIXELS, "{width}x{height}");
    let data_len = out.len() as u64 - header;
    assert!(data_len >= pixels && data_len <= pixels * 4 + 1024, "{data_len} bytes for {width}x{height}");
}

// ---- hawkBit DDI and ThingsBoard over HTTP ----

/// `[kind][body]`: kind % 3 picks a deployment feedback, `configData` or `installedBase`.
/// A body is read or refused with a 400; a feedback's state, progress and details line
/// follow hawkBit's documents and stay bounded.
pub fn ddi(data: &[u8]) {
    use crate::http::compat::ddi::{self as wire, ConfigData, DdiError, Feedback, InstalledBase};
    let Some((kind, body)) = data.split_first() else { return };
    if body.len() > wire::MAX_BODY_BYTES {
        return; // Refused with a 413 before it is read.
    }
    let refused = |e: &DdiError| assert!(matches!(e.0, Error::Invalid { .. }), "{:?}", e.0);
    match kind % 3 {
        0 => match wire::decode_body::<Feedback>(body) {
            Err(e) => refused(&e),
            Ok(feedback) => {
                let status = &feedback.status;
                match wire::deployment_state(status) {
                    Err(e) => refused(&e),
                    Ok(state) => assert!(state.is_some()),
                }
                if let Some(progress) = wire::progress_of(status.result.as_ref()) {
                    assert!(progress <= 100);
                }
                match wire::details_line(status) {
                    Some(line) => {
                        assert!(!line.is_empty() && !line.chars().any(char::is_control));
                        assert!(line.chars().count() <= wire::MAX_DETAILS_CHARS + 1);
                    }
                    None => assert!(status.details.iter().all(|d| d.trim().is_empty())),
                }
            }
        },
        1 => {
            if let Err(e) = wire::decode_body::<ConfigData>(body) {
                refused(&e);
            }
        }
        _ => {
            if let Err(e) = wire::decode_body::<InstalledBase>(body) {
                refused(&e);
            }
        }
    }
}

/// `[kind][rest]`: an even kind makes the rest a body (telemetry or attributes), an odd one
/// a query string (attributes keys, firmware chunk). Bodies over 64 KiB are 413, bad ones
/// 400, HTTP and MQTT read a body alike, telemetry flattens to the values it holds, and a
/// chunk lies inside the build.
pub fn thingsboard_http(data: &[u8]) {
    use crate::http::compat::thingsboard as wire;
    let Some((kind, rest)) = data.split_first() else { return };
    if kind % 2 == 0 {
        let body = Bytes::copy_from_slice(rest);
        let value = match wire::json_body(&body) {
            Err(wire::TbError(status)) => {
                let expected = if rest.len() > 64 * 1024 { 413 } else { 400 };
                assert_eq!(status.as_u16(), expected);
                return;
            }
            Ok(value) => value,
        };
        assert_eq!(crate::mqtt::thingsboard::parse_json(rest).ok().as_ref(), Some(&value), "MQTT reads the body otherwise");
        match crate::services::thingsboard::flatten_telemetry(&value) {
            Err(e) => assert!(matches!(e, Error::Invalid { .. })),
            Ok(flat) => {
                let items = match &value {
                    Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                for (key, v) in &flat {
                    let found = items.iter().rev().find_map(|item| {
                        let item: &Value = item;
                        let values = item.get("values").filter(|_| item.get("ts").is_some()).unwrap_or(item);
                        values.get(key)
                    });
                    assert_eq!(found, Some(v), "telemetry key `{key}`");
                }
                if let Value::Object(map) = &value
                    && !map.contains_key("ts")
                {
                    assert_eq!(&flat, map);
                }
            }
        }
    } else {
        let query = String::from_utf8_lossy(rest);
        for name in ["clientKeys", "sharedKeys"] {
            // Repeated keys are joined: as many lists as the query names the key.
            let named = url::form_urlencoded::parse(query.as_bytes()).filter(|(key, _)| key == name).count();
            match wire::attribute_keys(Some(&query), name) {
                Some(keys) => assert!(named > 0 && keys.split(',').count() >= named),
                None => assert_eq!(named, 0),
            }
        }
        if let Ok(firmware) = serde_urlencoded::from_str::<wire::FirmwareQuery>(&query) {
            for total in TOTALS {
                let (start, end) = firmware.range(total);
                assert!(start <= end && end <= total, "{start}..{end} of {total}");
                match firmware.size.filter(|s| *s > 0) {
                    None => assert_eq!((start, end), (0, total)),
                    Some(size) => assert!(end - start <= size),
                }
            }
        }
    }
}

#[cfg(test)]
mod corpus;
