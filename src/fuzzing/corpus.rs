//! The committed seed corpus (`fuzz/corpus/<target>/`): made here from the fixtures the tests
//! already build (ESP images, real version strings, topics, documents, bodies), so that it
//! cannot drift from what the parsers accept. `UPDRAFT_BLESS=1 cargo nextest run --lib
//! fuzzing` rewrites it; without it, a seed that is missing or different fails. Every file of
//! the corpus, seeds and committed crash inputs alike, is run through its target's properties.

use std::io::Cursor;
use std::path::PathBuf;

use super::{TARGETS, multipart_body as multipart};
use crate::domain::compat::djb2;
use crate::domain::esp_image::builder::EspImageBuilder;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn seeded(seed: u32, image: Vec<u8>) -> Vec<u8> {
    let mut data = seed.to_le_bytes().to_vec();
    data.extend(image);
    data
}

fn encoded(image: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// `(target, file name, contents)` of every seed.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, data: Vec<u8>| seeds.push((target, name.to_string(), data));

    // ESP images, as tests/api builds them.
    let blink = EspImageBuilder::new("blink", "1.0.1").payload_len(256).build();
    add("esp_image", "esp32-hash", seeded(1, blink.clone()));
    add(
        "esp_image",
        "esp32s3-no-hash",
        seeded(7, EspImageBuilder::new("thermo", "2.3.0-beta.1").chip_id(0x0009).hash_appended(false).payload_len(64).build()),
    );
    add(
        "esp_image",
        "esp32c3-no-payload",
        seeded(0xFFFF_FFFF, EspImageBuilder::new("gateway", "v3").chip_id(0x0005).payload_len(0).build()),
    );
    add(
        "esp_image",
        "esp32c6-padding",
        seeded(42, EspImageBuilder::new("x", "0.0.1").chip_id(0x000D).payload_len(32).trailing_bytes(&[0xFF; 64]).build()),
    );
    add("esp_image", "truncated", seeded(3, blink[..300].to_vec()));
    let mut bad_checksum = blink.clone();
    let at = bad_checksum.len() - 33;
    bad_checksum[at] ^= 0x5A;
    add("esp_image", "bad-checksum", seeded(5, bad_checksum));
    add("esp_image", "header-only", seeded(9, blink[..24].to_vec()));

    for (i, text) in [
        "1.0",
        "v2.3.1",
        "1.02",
        "1.2.3-beta.1",
        "1.0.0+build.5",
        "V10.20.30-rc.1+exp.sha.5114f85",
        " 1.2.3 ",
        "0.0.1-alpha.0a",
        "1.2.3.4",
        "1.2.x",
    ]
    .iter()
    .enumerate()
    {
        add("version", &format!("v{i}"), text.as_bytes().to_vec());
    }

    for (i, text) in [
        "AA:BB:CC:DD:EE:FF",
        "aa-bb-cc-dd-ee-ff",
        "AABB.CCDD.EEFF",
        "240ac4123456",
        "efuse:94264410399780",
        "94264410399780",
        "24:0A:C4:12:34:5",
    ]
    .iter()
    .enumerate()
    {
        add("mac", &format!("m{i}"), text.as_bytes().to_vec());
    }

    for (i, text) in [
        "1000\nbytes=0-99",
        "1000\nbytes=500-",
        "1000\nbytes=-200",
        "1000\nbytes=0-1000",
        "0\nbytes=0-",
        "1000\nbytes=5-1",
        "1000\nbytes=0-1,5-9",
        "1000\nitems=0-1",
        "1000\nbytes=-0",
    ]
    .iter()
    .enumerate()
    {
        add("range", &format!("r{i}"), text.as_bytes().to_vec());
    }

    let small = EspImageBuilder::new("blink", "1.0.1").payload_len(16).build();
    add("firmware_upload", "image-only", multipart(&[("file", small.as_slice())]));
    add(
        "firmware_upload",
        "all-fields",
        multipart(&[
            ("product", b"blink".as_slice()),
            ("version", b"1.0.1".as_slice()),
            ("hardware", b"esp32, esp32-devkit".as_slice()),
            ("hardware", b"esp32s3".as_slice()),
            ("notes", b"fixes the LED".as_slice()),
            ("channel", b"beta".as_slice()),
            ("file", small.as_slice()),
        ]),
    );
    add("firmware_upload", "version-mismatch", multipart(&[("version", b"2.0.0".as_slice()), ("file", small.as_slice())]));
    add(
        "firmware_upload",
        "not-an-image",
        multipart(&[
            ("product", b"gw".as_slice()),
            ("version", b"1".as_slice()),
            ("hardware", b"rpi".as_slice()),
            ("file", b"\x7fELF".as_slice()),
        ]),
    );
    add("firmware_upload", "twice", multipart(&[("product", b"a".as_slice()), ("product", b"b".as_slice()), ("file", b"x".as_slice())]));
    add("firmware_upload", "unknown", multipart(&[("colour", b"red".as_slice()), ("file", b"x".as_slice())]));
    add("firmware_upload", "query", b"product=blink&version=v1.2&hardware=esp32,esp32s3&channel=stable".to_vec());

    for (i, topic) in [
        "updraft/dev-1/status",
        "updraft/dev-1/telemetry",
        "updraft/dev-1/ota/status",
        "updraft/dev-1/cmd/result",
        "updraft/dev-1/#",
        "updraft/+/attributes",
        "$share/updraft/updraft/+/telemetry",
        "AA:BB:CC:DD:EE:01/flashing/status",
        "aa-bb-cc-dd-ee-01/keepalive",
        "AABBCCDDEE01/firmware",
        "iotsupport/updates/configs",
        "/provision/request",
        "#",
        "+/firmware",
        "updraft/dev-10/ota",
        "$SYS/broker/uptime",
    ]
    .iter()
    .enumerate()
    {
        add("mqtt_topic", &format!("t{i}"), topic.as_bytes().to_vec());
    }

    for (i, payload) in [
        "online",
        "\"offline\"",
        r#"{"online":true}"#,
        r#"{"state":"online"}"#,
        r#"{"status":"offline"}"#,
        "flashing",
        "DONE",
        r#"{"release_id":"0190a8c4-0000-7000-8000-000000000001","version":"1.0.1","state":"installing","progress":50}"#,
        r#"{"state":"failed","message":"checksum mismatch"}"#,
        r#"{"temperature":21.5,"fw_state":"UPDATED","current_fw_version":"1.0.1"}"#,
        r#"{"id":"c1","result":{"ok":true}}"#,
        "4096",
        "0",
        // Found by the property: chunk 1 of this size overflowed `start + size`.
        "18446744073709551615",
    ]
    .iter()
    .enumerate()
    {
        add("mqtt_payload", &format!("p{i}"), payload.as_bytes().to_vec());
    }

    let hashed = "AABBCCDDEEFFsecret";
    add("compat", "firmware-token", format!("AA:BB:CC:DD:EE:FF\nsecret\n{:x}\n1.2.3", djb2(0, hashed)).into_bytes());
    add("compat", "readme-token", format!("aa:bb:cc:dd:ee:ff\nsecret\n{:08X}\n1.2", djb2(5381, hashed)).into_bytes());
    add("compat", "wrong-token", b"AA:BB:CC:DD:EE:FF\nsecret\ndeadbeef\n1.2.3-rc.1".to_vec());

    let rs = |docs: &[&str]| docs.join("\x1e").into_bytes();
    add(
        "config",
        "layers",
        rs(&[
            r#"{"wifi":{"ssid":"home","password":{"$secret":"hunter2"}},"interval":60,"tags":["a","b"]}"#,
            r#"{"wifi":{"ssid":"office"},"interval":null,"mqtt":{"$secret":{"user":"u","pass":"p"}}}"#,
            r#"{"wifi":{"password":{"$secret":"swordfish"}},"mqtt":{"host":"broker"}}"#,
        ]),
    );
    add("config", "seed003", rs(&[r#"{"deviceName":"Kitchen","deviceEntityId":"sensor.kitchen","enableOTA":true,"~/a":{"b/c":1}}"#]));
    add("config", "refused", rs(&[r#"{"a":{"$encrypted":"x"}}"#, r#"{"a":[{"$secret":1}]}"#, r#"{"a":{"$secret":null}}"#, r#"[1]"#]));

    let rgba = image::RgbaImage::from_fn(6, 4, |x, y| image::Rgba([(x * 40) as u8, (y * 60) as u8, 200, if x == 0 { 0 } else { 255 }]));
    let picture = image::DynamicImage::ImageRgba8(rgba);
    let rgb = image::DynamicImage::ImageRgb8(picture.to_rgb8());
    for (name, options, side, bytes) in [
        ("png-v9-argb", 0x0C, 0, encoded(&picture, image::ImageFormat::Png)),
        ("png-v8-rgb565-scaled", 0x00, 3, encoded(&picture, image::ImageFormat::Png)),
        ("jpeg-v9-l8", 0x0D, 0, encoded(&rgb, image::ImageFormat::Jpeg)),
        ("gif-v9-seed003", 0x18 | 0x01, 2, encoded(&picture, image::ImageFormat::Gif)),
        ("bmp-c-source", 0x28 | 0x02, 0, encoded(&picture, image::ImageFormat::Bmp)),
        ("tga-v8", 0x04, 0, encoded(&picture, image::ImageFormat::Tga)),
        ("qoi-v9-a8", 0x0E, 0, encoded(&picture, image::ImageFormat::Qoi)),
        ("pnm", 0x0B, 0, encoded(&rgb, image::ImageFormat::Pnm)),
        ("tiff", 0x0A, 0, encoded(&picture, image::ImageFormat::Tiff)),
        ("ico", 0x0C, 0, encoded(&picture, image::ImageFormat::Ico)),
        ("webp", 0x0C, 0, encoded(&picture, image::ImageFormat::WebP)),
    ] {
        let mut data = vec![options, side];
        data.extend(bytes);
        add("image_decode", name, data);
    }

    for (name, kind, body) in [
        ("closed-success", 0u8, r#"{"status":{"execution":"closed","result":{"finished":"success"},"details":["Installed 1.0.1"]}}"#),
        ("proceeding", 0, r#"{"status":{"execution":"proceeding","result":{"finished":"none","progress":{"cnt":2,"of":5}},"details":[]}}"#),
        (
            "closed-failure",
            0,
            r#"{"status":{"execution":"closed","result":{"finished":"failure"},"details":["bad signature","\u0007 rolled back"]}}"#,
        ),
        ("unknown-execution", 0, r#"{"status":{"execution":"paused"}}"#),
        ("config-data", 1, r#"{"mode":"merge","data":{"hwRevision":"2","VIN":"JH4TB2H26CC000000"}}"#),
        ("installed-base", 2, r#"{"name":"app","version":"1.2.3"}"#),
        // Found by the property: `cnt * 100` overflowed.
        (
            "crash-progress-overflow",
            0,
            r#"{"status":{"execution":"proceeding","result":{"progress":{"cnt":18446744073709551615,"of":18446744073709551615}}}}"#,
        ),
    ] {
        let mut data = vec![kind];
        data.extend(body.as_bytes());
        add("ddi", name, data);
    }

    for (name, kind, rest) in [
        ("telemetry", 0u8, r#"{"temperature":25,"humidity":40}"#),
        ("telemetry-ts", 0, r#"{"ts":1451649600512,"values":{"key1":"value1","key2":"value2"}}"#),
        ("telemetry-array", 0, r#"[{"ts":1451649600512,"values":{"a":1}},{"b":2},{"ts":1,"values":{"a":3}}]"#),
        ("fw-state", 0, r#"{"fw_state":"FAILED","fw_error":"checksum"}"#),
        ("attributes", 0, r#"{"firmwareVersion":"1.0.1","serial":"SN-1"}"#),
        ("attribute-keys", 1, "clientKeys=a,b&sharedKeys=fw_title&sharedKeys=fw_version"),
        ("firmware-chunk", 1, "title=blink&version=1.0.1&size=4096&chunk=2"),
        ("firmware-whole", 1, "title=blink&version=1.0.1"),
    ] {
        let mut data = vec![kind];
        data.extend(rest.as_bytes());
        add("thingsboard_http", name, data);
    }
    seeds
}

#[test]
fn the_committed_seed_corpus_is_current() {
    let bless = std::env::var_os("UPDRAFT_BLESS").is_some();
    for (target, name, data) in seeds() {
        assert!(TARGETS.iter().any(|(t, _)| *t == target), "no target `{target}`");
        let path = corpus_dir(target).join(&name);
        if bless {
            std::fs::create_dir_all(corpus_dir(target)).expect("corpus folder");
            std::fs::write(&path, &data).expect("write a seed");
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(committed == data, "{} is missing or out of date: run `UPDRAFT_BLESS=1 cargo nextest run --lib fuzzing`", path.display());
    }
}

#[test]
fn every_corpus_file_holds_its_target_s_properties() {
    for (target, check) in TARGETS {
        let files: Vec<_> = std::fs::read_dir(corpus_dir(target)).map(|dir| dir.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(!files.is_empty(), "fuzz/corpus/{target} has no seed");
        for path in files {
            let data = std::fs::read(&path).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its target's properties", path.display());
        }
    }
}
