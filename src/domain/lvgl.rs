//! LVGL images: the `.bin` file formats of LVGL 8 and 9 and their C-array form, written
//! from RGBA pixels. Hand-written: no crate encodes both versions.
//!
//! LVGL 9 (`lv_image_dsc.h`, `scripts/LVGLImage.py`): a 12-byte little-endian header
//! (magic `0x19`, cf, flags u16, w u16, h u16, stride u16, reserved u16), then the rows.
//! The pixels are packed exactly as LVGL's own converter `LVGLImage.py` packs them with its
//! defaults (black background, no dithering, stride aligned to 1 byte, no premultiplication,
//! no compression):
//! - ARGB8888: B,G,R,A per pixel, as given;
//! - XRGB8888, RGB888, RGB565 and L8 have no alpha: each channel is first blended onto the
//!   black background with the converter's formula `c' = (c·a + (255−a)·bg) >> 8`;
//!   XRGB8888 is B,G,R,0xFF; RGB888 is B,G,R; RGB565 is the little-endian u16
//!   `(r>>3)<<11 | (g>>2)<<5 | b>>3`; L8 is the sRGB luma `0.2126R+0.7152G+0.0722B`
//!   computed in linear light;
//! - RGB565A8: the RGB565 plane (colours not blended), then an A8 plane of `w·h` bytes;
//! - A8: the alpha channel.
//!
//! LVGL 8 (`lv_img_buf.h`): a 4-byte header `cf | w<<10 | h<<21` (w, h at most 2047).
//! There the colour of TRUE_COLOR images follows the firmware's `LV_COLOR_DEPTH`, so each
//! format maps to the depth it implies: RGB565 → TRUE_COLOR (depth 16), RGB565A8 →
//! TRUE_COLOR_ALPHA (depth 16, three bytes per pixel: RGB565 little-endian then alpha),
//! XRGB8888 → TRUE_COLOR (depth 32), ARGB8888 → TRUE_COLOR_ALPHA (depth 32), L8 →
//! INDEXED_8BIT with a grey palette, A8 → ALPHA_8BIT. Colours are packed as for LVGL 9
//! (`LV_COLOR_16_SWAP` = 0). LVGL 8 has no 24-bit format, so RGB888 needs LVGL 9.

use std::fmt::Write as _;

use super::error::{Error, Result};

/// The colour formats Updraft writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorFormat {
    Rgb565,
    Rgb565A8,
    Rgb888,
    Xrgb8888,
    Argb8888,
    L8,
    A8,
}

pub const COLOR_FORMATS: &str = "RGB565, RGB565A8, RGB888, XRGB8888, ARGB8888, L8, A8";

impl ColorFormat {
    /// The names `parse` accepts (in any case).
    pub const NAMES: &[&str] = &["RGB565", "RGB565A8", "RGB888", "XRGB8888", "ARGB8888", "L8", "A8"];

    pub fn parse(text: &str) -> Result<ColorFormat> {
        match text.trim().to_ascii_uppercase().as_str() {
            "RGB565" => Ok(ColorFormat::Rgb565),
            "RGB565A8" => Ok(ColorFormat::Rgb565A8),
            "RGB888" => Ok(ColorFormat::Rgb888),
            "XRGB8888" => Ok(ColorFormat::Xrgb8888),
            "ARGB8888" => Ok(ColorFormat::Argb8888),
            "L8" => Ok(ColorFormat::L8),
            "A8" => Ok(ColorFormat::A8),
            _ => Err(Error::invalid(
                "invalid_color_format",
                format!("cf `{}` is not one of: {COLOR_FORMATS}", text.chars().take(20).collect::<String>()),
            )),
        }
    }

    /// The name LVGL 9 gives it (`LV_COLOR_FORMAT_<name>`).
    pub fn name(&self) -> &'static str {
        match self {
            ColorFormat::Rgb565 => "RGB565",
            ColorFormat::Rgb565A8 => "RGB565A8",
            ColorFormat::Rgb888 => "RGB888",
            ColorFormat::Xrgb8888 => "XRGB8888",
            ColorFormat::Argb8888 => "ARGB8888",
            ColorFormat::L8 => "L8",
            ColorFormat::A8 => "A8",
        }
    }

    /// `lv_color_format_t` of LVGL 9.
    pub fn v9_code(&self) -> u8 {
        match self {
            ColorFormat::L8 => 0x06,
            ColorFormat::A8 => 0x0E,
            ColorFormat::Rgb888 => 0x0F,
            ColorFormat::Argb8888 => 0x10,
            ColorFormat::Xrgb8888 => 0x11,
            ColorFormat::Rgb565 => 0x12,
            ColorFormat::Rgb565A8 => 0x14,
        }
    }

    /// Bytes per pixel of the main plane.
    fn bytes_per_pixel(&self) -> usize {
        match self {
            ColorFormat::L8 | ColorFormat::A8 => 1,
            ColorFormat::Rgb565 | ColorFormat::Rgb565A8 => 2,
            ColorFormat::Rgb888 => 3,
            ColorFormat::Argb8888 | ColorFormat::Xrgb8888 => 4,
        }
    }

    /// `lv_img_cf_t` of LVGL 8 and the C name of it.
    fn v8_code(&self) -> Result<(u8, &'static str)> {
        match self {
            ColorFormat::Rgb565 | ColorFormat::Xrgb8888 => Ok((4, "LV_IMG_CF_TRUE_COLOR")),
            ColorFormat::Rgb565A8 | ColorFormat::Argb8888 => Ok((5, "LV_IMG_CF_TRUE_COLOR_ALPHA")),
            ColorFormat::L8 => Ok((10, "LV_IMG_CF_INDEXED_8BIT")),
            ColorFormat::A8 => Ok((14, "LV_IMG_CF_ALPHA_8BIT")),
            ColorFormat::Rgb888 => Err(Error::invalid("unsupported_color_format", "LVGL 8 has no RGB888 format; use lvgl=9 or another cf")),
        }
    }

    /// The `LV_COLOR_DEPTH` an LVGL 8 image of this format assumes, if any.
    fn v8_color_depth(&self) -> Option<u8> {
        match self {
            ColorFormat::Rgb565 | ColorFormat::Rgb565A8 => Some(16),
            ColorFormat::Xrgb8888 | ColorFormat::Argb8888 => Some(32),
            _ => None,
        }
    }
}

/// LVGL major version of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvglVersion {
    V8,
    V9,
}

impl LvglVersion {
    pub fn parse(text: &str) -> Result<LvglVersion> {
        match text.trim() {
            "8" => Ok(LvglVersion::V8),
            "9" => Ok(LvglVersion::V9),
            other => {
                Err(Error::invalid("invalid_lvgl_version", format!("lvgl `{}` is not 8 or 9", other.chars().take(10).collect::<String>())))
            }
        }
    }

    /// The largest width and height the header can hold.
    pub fn max_side(&self) -> u32 {
        match self {
            LvglVersion::V8 => 2047,
            LvglVersion::V9 => 65535,
        }
    }
}

/// An encoded image: the header and the pixel data that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvglImage {
    pub version: LvglVersion,
    pub cf: ColorFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per row of the main plane (LVGL 9's header field).
    pub stride: u32,
    pub header: Vec<u8>,
    pub data: Vec<u8>,
}

/// Encodes `rgba` (row-major R,G,B,A bytes, `width × height` pixels).
pub fn encode(rgba: &[u8], width: u32, height: u32, cf: ColorFormat, version: LvglVersion) -> Result<LvglImage> {
    let pixels = width as usize * height as usize;
    if rgba.len() != pixels * 4 {
        return Err(Error::Internal(anyhow::anyhow!("{} RGBA bytes for a {width}x{height} image", rgba.len())));
    }
    if width == 0 || height == 0 {
        return Err(Error::invalid("invalid_image", "the image has no pixels"));
    }
    let max = version.max_side();
    if width > max || height > max {
        return Err(Error::invalid(
            "image_too_large",
            format!(
                "a {width}x{height} image does not fit an LVGL {} header (at most {max}x{max}); pass width and height to scale it down",
                match version {
                    LvglVersion::V8 => 8,
                    LvglVersion::V9 => 9,
                }
            ),
        ));
    }
    let v9 = encode_v9_data(rgba, pixels, cf);
    let stride = width * cf.bytes_per_pixel() as u32;
    match version {
        LvglVersion::V9 => {
            let mut header = Vec::with_capacity(12);
            header.push(0x19);
            header.push(cf.v9_code());
            header.extend_from_slice(&0u16.to_le_bytes());
            header.extend_from_slice(&(width as u16).to_le_bytes());
            header.extend_from_slice(&(height as u16).to_le_bytes());
            header.extend_from_slice(&(stride as u16).to_le_bytes());
            header.extend_from_slice(&0u16.to_le_bytes());
            Ok(LvglImage { version, cf, width, height, stride, header, data: v9 })
        }
        LvglVersion::V8 => {
            let (code, _) = cf.v8_code()?;
            let header = (u32::from(code) | (width << 10) | (height << 21)).to_le_bytes().to_vec();
            let data = match cf {
                ColorFormat::Rgb565A8 => {
                    // One plane of three bytes per pixel: RGB565 little-endian, then alpha.
                    let (colors, alphas) = v9.split_at(pixels * 2);
                    let mut data = Vec::with_capacity(pixels * 3);
                    for (color, alpha) in colors.chunks_exact(2).zip(alphas) {
                        data.extend_from_slice(&[color[0], color[1], *alpha]);
                    }
                    data
                }
                ColorFormat::L8 => {
                    let mut data = Vec::with_capacity(1024 + pixels);
                    for level in 0..=255u8 {
                        data.extend_from_slice(&[level, level, level, 0xFF]);
                    }
                    data.extend_from_slice(&v9);
                    data
                }
                _ => v9,
            };
            Ok(LvglImage { version, cf, width, height, stride, header, data })
        }
    }
}

/// The pixel data in LVGL 9's layout.
fn encode_v9_data(rgba: &[u8], pixels: usize, cf: ColorFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(pixels * cf.bytes_per_pixel() + if cf == ColorFormat::Rgb565A8 { pixels } else { 0 });
    let px = rgba.chunks_exact(4);
    match cf {
        ColorFormat::Argb8888 => px.for_each(|p| out.extend_from_slice(&[p[2], p[1], p[0], p[3]])),
        ColorFormat::Xrgb8888 => px.for_each(|p| {
            let (r, g, b) = on_black(p);
            out.extend_from_slice(&[b, g, r, 0xFF]);
        }),
        ColorFormat::Rgb888 => px.for_each(|p| {
            let (r, g, b) = on_black(p);
            out.extend_from_slice(&[b, g, r]);
        }),
        ColorFormat::Rgb565 => px.for_each(|p| {
            let (r, g, b) = on_black(p);
            out.extend_from_slice(&rgb565(r, g, b).to_le_bytes());
        }),
        ColorFormat::Rgb565A8 => {
            px.for_each(|p| out.extend_from_slice(&rgb565(p[0], p[1], p[2]).to_le_bytes()));
            rgba.chunks_exact(4).for_each(|p| out.push(p[3]));
        }
        ColorFormat::L8 => px.for_each(|p| {
            let (r, g, b) = on_black(p);
            out.push(luma(r, g, b));
        }),
        ColorFormat::A8 => px.for_each(|p| out.push(p[3])),
    }
    out
}

/// `color_pre_multiply` of LVGLImage.py with its default black background.
fn on_black(p: &[u8]) -> (u8, u8, u8) {
    let a = u32::from(p[3]);
    let blend = |c: u8| ((u32::from(c) * a) >> 8) as u8;
    (blend(p[0]), blend(p[1]), blend(p[2]))
}

fn rgb565(r: u8, g: u8, b: u8) -> u16 {
    (u16::from(r >> 3) << 11) | (u16::from(g >> 2) << 5) | u16::from(b >> 3)
}

/// The sRGB luma of LVGLImage.py: Rec. 709 weights in linear light, truncated.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    fn to_linear(x: f64) -> f64 {
        if x < 0.04045 { x / 12.92 } else { ((x + 0.055) / 1.055).powf(2.4) }
    }
    fn to_srgb(y: f64) -> f64 {
        if y <= 0.003_130_8 { 12.92 * y } else { 1.055 * y.powf(1.0 / 2.4) - 0.055 }
    }
    let linear =
        0.2126 * to_linear(f64::from(r) / 255.0) + 0.7152 * to_linear(f64::from(g) / 255.0) + 0.0722 * to_linear(f64::from(b) / 255.0);
    (to_srgb(linear) * 255.0) as u8
}

impl LvglImage {
    /// The `.bin` file: header then data.
    pub fn to_bin(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + self.data.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.data);
        out
    }

    /// The `.bin` file, reusing the data's buffer (no second copy of a large image).
    pub fn into_bin(self) -> Vec<u8> {
        let mut out = self.data;
        out.splice(0..0, self.header);
        out
    }

    /// A C source file defining `<name>_map` and the image descriptor `<name>`, laid out as
    /// LVGL's converters write them (LVGLImage.py for 9, lv_img_conv for 8).
    pub fn to_c_array(&self, name: &str) -> Result<String> {
        let name = check_c_name(name)?;
        match self.version {
            LvglVersion::V9 => Ok(self.c_array_v9(&name)),
            LvglVersion::V8 => self.c_array_v8(&name),
        }
    }

    fn c_array_v9(&self, name: &str) -> String {
        let macro_name = format!("LV_ATTRIBUTE_{}", name.to_ascii_uppercase());
        let mut out = String::with_capacity(self.data.len() * 6 + 1024);
        out.push_str("\n#if defined(LV_LVGL_H_INCLUDE_SIMPLE)\n#include \"lvgl.h\"\n#elif defined(LV_BUILD_TEST)\n#include \"../lvgl.h\"\n#else\n#include \"lvgl/lvgl.h\"\n#endif\n\n\n#ifndef LV_ATTRIBUTE_MEM_ALIGN\n#define LV_ATTRIBUTE_MEM_ALIGN\n#endif\n\n");
        let _ = write!(
            out,
            "#ifndef {macro_name}\n#define {macro_name}\n#endif\n\nstatic const\nLV_ATTRIBUTE_MEM_ALIGN LV_ATTRIBUTE_LARGE_CONST {macro_name}\nuint8_t {name}_map[] = {{\n"
        );
        write_bytes(&mut out, &self.data, self.stride as usize);
        let _ = write!(
            out,
            "\n}};\n\nconst lv_image_dsc_t {name} = {{\n  .header.magic = LV_IMAGE_HEADER_MAGIC,\n  .header.cf = LV_COLOR_FORMAT_{},\n  .header.flags = 0,\n  .header.w = {},\n  .header.h = {},\n  .header.stride = {},\n  .data_size = sizeof({name}_map),\n  .data = {name}_map,\n}};\n\n",
            self.cf.name(),
            self.width,
            self.height,
            self.stride
        );
        out
    }

    fn c_array_v8(&self, name: &str) -> Result<String> {
        let (_, cf_name) = self.cf.v8_code()?;
        let attribute = format!("LV_ATTRIBUTE_IMG_{}", name.to_ascii_uppercase());
        let mut out = String::with_capacity(self.data.len() * 6 + 1024);
        out.push_str("#ifdef __has_include\n    #if __has_include(\"lvgl.h\")\n        #ifndef LV_LVGL_H_INCLUDE_SIMPLE\n            #define LV_LVGL_H_INCLUDE_SIMPLE\n        #endif\n    #endif\n#endif\n\n#if defined(LV_LVGL_H_INCLUDE_SIMPLE)\n    #include \"lvgl.h\"\n#else\n    #include \"lvgl/lvgl.h\"\n#endif\n\n");
        if let Some(depth) = self.cf.v8_color_depth() {
            let _ = write!(out, "#if LV_COLOR_DEPTH != {depth}\n#error \"this image was converted for LV_COLOR_DEPTH {depth}\"\n#endif\n");
            if depth == 16 {
                out.push_str("#if LV_COLOR_16_SWAP != 0\n#error \"this image was converted for LV_COLOR_16_SWAP 0\"\n#endif\n");
            }
            out.push('\n');
        }
        let _ = write!(
            out,
            "#ifndef LV_ATTRIBUTE_MEM_ALIGN\n#define LV_ATTRIBUTE_MEM_ALIGN\n#endif\n\n#ifndef {attribute}\n#define {attribute}\n#endif\n\nconst LV_ATTRIBUTE_MEM_ALIGN LV_ATTRIBUTE_LARGE_CONST {attribute} uint8_t {name}_map[] = {{"
        );
        let row = match self.cf {
            ColorFormat::Rgb565A8 => self.width as usize * 3,
            _ => self.stride as usize,
        };
        if self.cf == ColorFormat::L8 {
            write_bytes(&mut out, &self.data[..1024], 16);
            write_bytes(&mut out, &self.data[1024..], row);
        } else {
            write_bytes(&mut out, &self.data, row);
        }
        let _ = write!(
            out,
            "}};\n\nconst lv_img_dsc_t {name} = {{\n  .header.cf = {cf_name},\n  .header.always_zero = 0,\n  .header.reserved = 0,\n  .header.w = {},\n  .header.h = {},\n  .data_size = {},\n  .data = {name}_map,\n}};\n",
            self.width,
            self.height,
            self.data.len()
        );
        Ok(out)
    }
}

/// `write_binary` of LVGLImage.py: `row` bytes per line, each `0x..,`.
fn write_bytes(out: &mut String, data: &[u8], row: usize) {
    let row = if row == 0 { 16 } else { row };
    for (i, byte) in data.iter().enumerate() {
        if i % row == 0 {
            out.push_str("\n    ");
        }
        let _ = write!(out, "0x{byte:02x},");
    }
    out.push('\n');
}

/// A C identifier: letters, digits and `_`, not starting with a digit, at most 64 long.
pub fn check_c_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(name.to_string())
    } else {
        Err(Error::invalid(
            "invalid_name",
            "name must be a C identifier: letters, digits and _, not starting with a digit, at most 64 characters",
        ))
    }
}

/// How the size of a scaled image is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// Updraft's own (`fit_within`): the limiting side is the box's, the other side the
    /// nearest whole number.
    Nearest,
    /// Seed 003's (`fit_within_seed003`): the other side truncated, as its `int()` does.
    Seed003,
}

impl SizeRule {
    /// The size to scale `width × height` to, or `None` when it is left as it is.
    pub fn fit(&self, width: u32, height: u32, max_width: Option<u32>, max_height: Option<u32>) -> Option<(u32, u32)> {
        // An image without pixels has no size to keep the ratio of (the caller refuses it).
        if width == 0 || height == 0 {
            return None;
        }
        match self {
            SizeRule::Nearest => fit_within(width, height, max_width, max_height),
            SizeRule::Seed003 => fit_within_seed003(width, height, max_width, max_height),
        }
    }
}

/// The size to scale an image of `width × height` to so that it fits the requested box,
/// keeping its aspect ratio and never enlarging it. A missing side is unconstrained.
/// Returns `None` when no scaling is needed.
pub fn fit_within(width: u32, height: u32, max_width: Option<u32>, max_height: Option<u32>) -> Option<(u32, u32)> {
    let scale_w = max_width.map(|m| f64::from(m) / f64::from(width)).unwrap_or(f64::INFINITY);
    let scale_h = max_height.map(|m| f64::from(m) / f64::from(height)).unwrap_or(f64::INFINITY);
    let scale = scale_w.min(scale_h);
    if scale >= 1.0 {
        return None;
    }
    let target = |side: u32, limit: Option<u32>| -> u32 {
        let scaled = (f64::from(side) * scale).round() as u32;
        scaled.clamp(1, limit.unwrap_or(u32::MAX).min(side))
    };
    let target = (target(width, max_width), target(height, max_height));
    (target != (width, height)).then_some(target)
}

/// Seed 003's size rule (`ImageProxyService._resize_image` of pvginkel/IoTSupport), step
/// by step in the same floating-point operations: the box side that limits is taken (but
/// never more than the image's), the other side is `int()` of the scaled one. A side that
/// would be 0 is 1 here (seed 003 failed with a 500). `None` when no scaling is needed.
pub fn fit_within_seed003(width: u32, height: u32, max_width: Option<u32>, max_height: Option<u32>) -> Option<(u32, u32)> {
    let aspect_ratio = f64::from(width) / f64::from(height);
    // `as u32` truncates towards zero like Python's int() (and saturates).
    let from_width = |w: u32| (f64::from(w) / aspect_ratio) as u32;
    let from_height = |h: u32| (f64::from(h) * aspect_ratio) as u32;
    let (target_width, target_height) = match (max_width, max_height) {
        (Some(max_width), Some(max_height)) if aspect_ratio > 1.0 => {
            let target_width = max_width.min(width);
            let target_height = from_width(target_width);
            if target_height > max_height {
                let target_height = max_height.min(height);
                (from_height(target_height), target_height)
            } else {
                (target_width, target_height)
            }
        }
        (Some(max_width), Some(max_height)) => {
            let target_height = max_height.min(height);
            let target_width = from_height(target_height);
            if target_width > max_width {
                let target_width = max_width.min(width);
                (target_width, from_width(target_width))
            } else {
                (target_width, target_height)
            }
        }
        (Some(max_width), None) => {
            let target_width = max_width.min(width);
            (target_width, from_width(target_width))
        }
        (None, Some(max_height)) => {
            let target_height = max_height.min(height);
            (from_height(target_height), target_height)
        }
        (None, None) => return None,
    };
    if target_width >= width && target_height >= height {
        return None;
    }
    Some((target_width.max(1), target_height.max(1)))
}

// ---- resampling as Pillow does it ----
//
// Seed 003 scaled with Pillow (`Image.resize(size, LANCZOS)` of an RGBA image), and a
// display layout made for it expects its pixels. This is Pillow's own algorithm
// (`libImaging/Resample.c`, `Convert.c`), step for step and in the same arithmetic, so the
// results are the same bytes: colours multiplied by alpha (`RGBa`, rounded to 8 bits), a
// horizontal then a vertical pass with Lanczos-3 weights in 22-bit fixed point, each pass
// rounded and clipped to 8 bits, then colours divided by alpha again (truncated). Resampling
// in premultiplied alpha is what keeps transparent pixels from darkening the edges of an
// icon. Hand-written: `image` resamples in straight alpha, and `fast_image_resize` (after
// Pillow-SIMD) passes vertically first with 16-bit weights, a few levels away from Pillow.

/// Fixed-point bits of the weights: 8 bits of result, 2 of headroom (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn lanczos3(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
}

/// The weights of one pass: for each output pixel, the first input pixel, how many, and
/// `ksize` weights (Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`).
struct Weights {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    values: Vec<i32>,
}

fn weights(in_size: u32, out_size: u32) -> Weights {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = 3.0 * filter_scale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut values = vec![0i32; out_size as usize * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filter_scale;
        // C's (int) truncates towards zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) - xmin;
        let n = xmax.max(0) as usize;
        let mut sum = 0.0;
        for (x, weight) in k.iter_mut().enumerate().take(n) {
            *weight = lanczos3(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            sum += *weight;
        }
        for (x, weight) in k.iter().enumerate().take(n) {
            let weight = if sum != 0.0 { weight / sum } else { *weight };
            let fixed = weight * f64::from(1u32 << PRECISION_BITS);
            values[xx * ksize + x] = if weight < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        bounds.push((xmin as usize, n));
    }
    Weights { ksize, bounds, values }
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass over RGBA rows: `rows` of `in_width` pixels into `rows` of `weights.bounds.len()`.
fn resample_horizontal(input: &[u8], in_width: usize, first_row: usize, rows: usize, weights: &Weights) -> Vec<u8> {
    let out_width = weights.bounds.len();
    let mut out = Vec::with_capacity(out_width * rows * 4);
    for y in first_row..first_row + rows {
        let row = &input[y * in_width * 4..(y + 1) * in_width * 4];
        for (xx, &(xmin, n)) in weights.bounds.iter().enumerate() {
            let k = &weights.values[xx * weights.ksize..xx * weights.ksize + n];
            let mut sums = [1i32 << (PRECISION_BITS - 1); 4];
            for (x, weight) in k.iter().enumerate() {
                let pixel = &row[(xmin + x) * 4..(xmin + x) * 4 + 4];
                for (sum, &value) in sums.iter_mut().zip(pixel) {
                    *sum += i32::from(value) * weight;
                }
            }
            out.extend(sums.map(clip8));
        }
    }
    out
}

fn resample_vertical(input: &[u8], width: usize, row_offset: usize, weights: &Weights) -> Vec<u8> {
    let mut out = Vec::with_capacity(width * weights.bounds.len() * 4);
    for (yy, &(ymin, n)) in weights.bounds.iter().enumerate() {
        let k = &weights.values[yy * weights.ksize..yy * weights.ksize + n];
        for x in 0..width {
            let mut sums = [1i32 << (PRECISION_BITS - 1); 4];
            for (y, weight) in k.iter().enumerate() {
                let at = ((ymin - row_offset + y) * width + x) * 4;
                for (sum, &value) in sums.iter_mut().zip(&input[at..at + 4]) {
                    *sum += i32::from(value) * weight;
                }
            }
            out.extend(sums.map(clip8));
        }
    }
    out
}

/// Scales RGBA pixels (`width × height`, row-major R, G, B, A) to `new_width × new_height`
/// with Lanczos-3 in premultiplied alpha, byte for byte as Pillow's `Image.resize(size,
/// Image.LANCZOS)` of an `RGBA` image. `rgba` is premultiplied in place.
pub fn resize_like_pillow(mut rgba: Vec<u8>, (width, height): (u32, u32), (new_width, new_height): (u32, u32)) -> Vec<u8> {
    if (width, height) == (new_width, new_height) {
        return rgba;
    }
    // RGBA → RGBa: MULDIV255, rounded.
    for pixel in rgba.chunks_exact_mut(4) {
        let alpha = u32::from(pixel[3]);
        for channel in &mut pixel[..3] {
            let tmp = u32::from(*channel) * alpha + 128;
            *channel = (((tmp >> 8) + tmp) >> 8) as u8;
        }
    }
    let horizontal = weights(width, new_width);
    let vertical = weights(height, new_height);
    let mut out = if new_width != width {
        // Only the rows the vertical pass reads.
        let first_row = vertical.bounds[0].0;
        let last = vertical.bounds[vertical.bounds.len() - 1];
        let rows = last.0 + last.1 - first_row;
        let temp = resample_horizontal(&rgba, width as usize, first_row, rows, &horizontal);
        drop(rgba);
        if new_height != height { resample_vertical(&temp, new_width as usize, first_row, &vertical) } else { temp }
    } else {
        resample_vertical(&rgba, width as usize, 0, &vertical)
    };
    // RGBa → RGBA: alpha 0 and 255 unchanged, else 255·c / alpha, truncated and clipped.
    for pixel in out.chunks_exact_mut(4) {
        let alpha = u32::from(pixel[3]);
        if alpha != 0 && alpha != 255 {
            for channel in &mut pixel[..3] {
                *channel = (255 * u32::from(*channel) / alpha).min(255) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3×2 reference image: opaque red, green, blue; white at alpha 128, transparent
    /// black, and an opaque mid-grey (0x80).
    const REFERENCE: [u8; 24] = [
        0xFF, 0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0x00, 0xFF, 0xFF, //
        0xFF, 0xFF, 0xFF, 0x80, 0x00, 0x00, 0x00, 0x00, 0x80, 0x80, 0x80, 0xFF,
    ];

    fn bin(cf: ColorFormat, version: LvglVersion) -> Vec<u8> {
        encode(&REFERENCE, 3, 2, cf, version).unwrap().to_bin()
    }

    fn hex(bytes: &[u8]) -> String {
        hex::encode(bytes)
    }

    // Expected bytes were produced by LVGL's scripts/LVGLImage.py (`--ofmt BIN --cf <cf>`,
    // its defaults otherwise) from a PNG of REFERENCE, and agree with the format
    // described in the module documentation.

    #[test]
    fn argb8888_v9_is_bgra_with_a_12_byte_header() {
        assert_eq!(
            hex(&bin(ColorFormat::Argb8888, LvglVersion::V9)),
            "1910000003000200 0c000000 0000ffff 00ff00ff ff0000ff ffffff80 00000000 808080ff".replace(' ', "")
        );
    }

    #[test]
    fn xrgb8888_v9_blends_onto_black_and_sets_x_to_ff() {
        assert_eq!(
            hex(&bin(ColorFormat::Xrgb8888, LvglVersion::V9)),
            "1911000003000200 0c000000 0000feff 00fe00ff fe0000ff 7f7f7fff 000000ff 7f7f7fff".replace(' ', "")
        );
    }

    #[test]
    fn rgb888_v9_is_bgr() {
        assert_eq!(
            hex(&bin(ColorFormat::Rgb888, LvglVersion::V9)),
            "190f000003000200 09000000 0000fe 00fe00 fe0000 7f7f7f 000000 7f7f7f".replace(' ', "")
        );
    }

    #[test]
    fn rgb565_v9_is_little_endian() {
        assert_eq!(
            hex(&bin(ColorFormat::Rgb565, LvglVersion::V9)),
            "1912000003000200 06000000 00f8 e007 1f00 ef7b 0000 ef7b".replace(' ', "")
        );
    }

    #[test]
    fn rgb565a8_v9_has_an_alpha_plane_after_the_colours() {
        assert_eq!(
            hex(&bin(ColorFormat::Rgb565A8, LvglVersion::V9)),
            "1914000003000200 06000000 00f8 e007 1f00 ffff 0000 1084 ff ff ff 80 00 ff".replace(' ', "")
        );
    }

    #[test]
    fn l8_and_a8_v9_have_one_byte_per_pixel() {
        assert_eq!(hex(&bin(ColorFormat::L8, LvglVersion::V9)), "1906000003000200 03000000 7e db 4b 7f 00 7f".replace(' ', ""));
        assert_eq!(hex(&bin(ColorFormat::A8, LvglVersion::V9)), "190e000003000200 03000000 ff ff ff 80 00 ff".replace(' ', ""));
    }

    /// A 16×8 gradient with every kind of alpha, as (R, G, B, A) of pixel (x, y).
    fn gradient() -> Vec<u8> {
        let mut rgba = Vec::new();
        for y in 0..8u32 {
            for x in 0..16u32 {
                rgba.extend([(x * 16 + y) % 256, (255 - x * 15) % 256, (y * 31) % 256, (x * 37 + y * 91) % 256].map(|c| c as u8));
            }
        }
        rgba
    }

    #[test]
    fn a_gradient_encodes_exactly_as_lvglimage_py_does_in_every_format() {
        use sha2::{Digest, Sha256};
        let expected = [
            (ColorFormat::Argb8888, 524, "c510ba5b8194e8be6598893b135026e22f859993522e46150404cb1e9a446f20"),
            (ColorFormat::Xrgb8888, 524, "98534dcbeeb765dcce047a028442657b6a6589e19221cf3c1874c84206ab2df0"),
            (ColorFormat::Rgb888, 396, "3894428bed5cd6f04c3d8df267fbaf3c603234ce4f423c653a8d1f42dd303ca6"),
            (ColorFormat::Rgb565, 268, "c40df87af6d565b7df0b67bdeb420aa87f414c98cb7207896bf799d41f75a4e9"),
            (ColorFormat::Rgb565A8, 396, "5b65405f720bd41b2b9323cc7338003103e484fde87036a0f23ece81ce7b5514"),
            (ColorFormat::L8, 140, "37b364fe3a807b4e728c74259b7f8e710179476793a7f23420d242ee9f7dc008"),
            (ColorFormat::A8, 140, "7daa8c7741a13e13ac716c40f7d09cbaebac590076b1f75c5bcc8117622e87ef"),
        ];
        let rgba = gradient();
        for (cf, len, sha256) in expected {
            let bytes = encode(&rgba, 16, 8, cf, LvglVersion::V9).unwrap().to_bin();
            assert_eq!(bytes.len(), len, "{cf:?}");
            assert_eq!(hex::encode(Sha256::digest(&bytes)), sha256, "{cf:?}");
        }
    }

    #[test]
    fn v8_headers_pack_cf_width_and_height_into_one_word() {
        // cf | w << 10 | h << 21: 5 | 3 << 10 | 2 << 21 = 0x00400c05.
        let argb = bin(ColorFormat::Argb8888, LvglVersion::V8);
        assert_eq!(hex(&argb[..4]), "050c4000");
        assert_eq!(&argb[4..], &bin(ColorFormat::Argb8888, LvglVersion::V9)[12..]);
        let rgb565 = bin(ColorFormat::Rgb565, LvglVersion::V8);
        assert_eq!(hex(&rgb565[..4]), "040c4000");
        assert_eq!(&rgb565[4..], &bin(ColorFormat::Rgb565, LvglVersion::V9)[12..]);
    }

    #[test]
    fn v8_true_color_alpha_at_depth_16_interleaves_the_alpha_byte() {
        assert_eq!(
            hex(&bin(ColorFormat::Rgb565A8, LvglVersion::V8)),
            "050c4000 00f8ff e007ff 1f00ff ffff80 000000 1084ff".replace(' ', "")
        );
    }

    #[test]
    fn v8_l8_is_indexed_with_a_grey_palette_and_a8_is_alpha_8bit() {
        let l8 = bin(ColorFormat::L8, LvglVersion::V8);
        assert_eq!(hex(&l8[..4]), "0a0c4000");
        assert_eq!(l8.len(), 4 + 1024 + 6);
        assert_eq!(hex(&l8[4 + 4 * 0x7e..4 + 4 * 0x7f]), "7e7e7eff");
        assert_eq!(&l8[1028..], &bin(ColorFormat::L8, LvglVersion::V9)[12..]);
        assert_eq!(hex(&bin(ColorFormat::A8, LvglVersion::V8)), "0e0c4000ffffff8000ff");
    }

    #[test]
    fn v8_has_no_rgb888_and_limits_sides_to_2047() {
        assert_eq!(encode(&REFERENCE, 3, 2, ColorFormat::Rgb888, LvglVersion::V8).unwrap_err().code(), "unsupported_color_format");
        let wide = vec![0u8; 2048 * 4];
        assert_eq!(encode(&wide, 2048, 1, ColorFormat::A8, LvglVersion::V8).unwrap_err().code(), "image_too_large");
        assert!(encode(&wide, 2048, 1, ColorFormat::A8, LvglVersion::V9).is_ok());
    }

    #[test]
    fn the_v9_c_array_matches_lvglimage_py() {
        let image = encode(&REFERENCE[..8], 2, 1, ColorFormat::Rgb565, LvglVersion::V9).unwrap();
        let expected = "\n#if defined(LV_LVGL_H_INCLUDE_SIMPLE)\n#include \"lvgl.h\"\n#elif defined(LV_BUILD_TEST)\n#include \"../lvgl.h\"\n#else\n#include \"lvgl/lvgl.h\"\n#endif\n\n\n#ifndef LV_ATTRIBUTE_MEM_ALIGN\n#define LV_ATTRIBUTE_MEM_ALIGN\n#endif\n\n#ifndef LV_ATTRIBUTE_LOGO\n#define LV_ATTRIBUTE_LOGO\n#endif\n\nstatic const\nLV_ATTRIBUTE_MEM_ALIGN LV_ATTRIBUTE_LARGE_CONST LV_ATTRIBUTE_LOGO\nuint8_t logo_map[] = {\n\n    0x00,0xf8,0xe0,0x07,\n\n};\n\nconst lv_image_dsc_t logo = {\n  .header.magic = LV_IMAGE_HEADER_MAGIC,\n  .header.cf = LV_COLOR_FORMAT_RGB565,\n  .header.flags = 0,\n  .header.w = 2,\n  .header.h = 1,\n  .header.stride = 4,\n  .data_size = sizeof(logo_map),\n  .data = logo_map,\n};\n\n";
        assert_eq!(image.to_c_array("logo").unwrap(), expected);
    }

    #[test]
    fn the_v8_c_array_declares_an_lv_img_dsc_t() {
        let image = encode(&REFERENCE[..8], 2, 1, ColorFormat::Argb8888, LvglVersion::V8).unwrap();
        let source = image.to_c_array("logo").unwrap();
        assert!(source.contains("uint8_t logo_map[] = {\n    0x00,0x00,0xff,0xff,0x00,0xff,0x00,0xff,\n};"), "{source}");
        assert!(source.contains(".header.cf = LV_IMG_CF_TRUE_COLOR_ALPHA,"));
        assert!(source.contains("#if LV_COLOR_DEPTH != 32"));
        assert!(source.contains(".data_size = 8,"));
        assert!(image.to_c_array("1bad").is_err());
        assert!(image.to_c_array("a-b").is_err());
    }

    #[test]
    fn scaling_only_shrinks_and_keeps_the_aspect_ratio() {
        assert_eq!(fit_within(400, 200, Some(100), None), Some((100, 50)));
        assert_eq!(fit_within(400, 200, None, Some(100)), Some((200, 100)));
        assert_eq!(fit_within(400, 200, Some(100), Some(100)), Some((100, 50)));
        assert_eq!(fit_within(200, 400, Some(100), Some(100)), Some((50, 100)));
        assert_eq!(fit_within(400, 200, Some(800), Some(800)), None);
        assert_eq!(fit_within(400, 200, Some(400), None), None);
        assert_eq!(fit_within(1000, 1, Some(10), None), Some((10, 1)));
        assert_eq!(fit_within(16, 8, None, None), None);
    }

    /// Found by the `image_decode` fuzz target: a GIF that decodes to 0 pixels wide made
    /// `fit_within` clamp to an empty range (a panic, a 500 from the conversion routes).
    #[test]
    fn an_image_without_pixels_is_never_scaled() {
        for rule in [SizeRule::Nearest, SizeRule::Seed003] {
            assert_eq!(rule.fit(0, 58623, Some(7), Some(7)), None);
            assert_eq!(rule.fit(40, 0, Some(7), None), None);
            assert_eq!(rule.fit(0, 0, None, Some(1)), None);
        }
    }

    #[test]
    fn seed_003_truncates_the_side_it_computes() {
        // The example: 300×200 into 100×100 is 100×66 in seed 003, 100×67 natively.
        assert_eq!(fit_within_seed003(300, 200, Some(100), Some(100)), Some((100, 66)));
        assert_eq!(fit_within(300, 200, Some(100), Some(100)), Some((100, 67)));
        assert_eq!(fit_within_seed003(200, 300, Some(100), Some(100)), Some((66, 100)));
        assert_eq!(fit_within_seed003(300, 200, Some(100), None), Some((100, 66)));
        assert_eq!(fit_within_seed003(300, 200, None, Some(50)), Some((75, 50)));
        // The height limits although the image is wider than tall.
        assert_eq!(fit_within_seed003(400, 300, Some(200), Some(100)), Some((133, 100)));
        // Never enlarged; a box as large as the image leaves it alone.
        assert_eq!(fit_within_seed003(300, 200, Some(300), Some(200)), None);
        assert_eq!(fit_within_seed003(300, 200, Some(1000), None), None);
        assert_eq!(fit_within_seed003(16, 8, None, None), None);
        // Seed 003 asked Pillow for a 0-pixel side here and failed; 1 pixel instead.
        assert_eq!(fit_within_seed003(1000, 1, Some(10), None), Some((10, 1)));
        assert_eq!(SizeRule::Seed003.fit(300, 200, Some(100), Some(100)), Some((100, 66)));
        assert_eq!(SizeRule::Nearest.fit(300, 200, Some(100), Some(100)), Some((100, 67)));
    }

    #[test]
    fn into_bin_is_to_bin() {
        let image = encode(&REFERENCE, 3, 2, ColorFormat::Rgb565A8, LvglVersion::V9).unwrap();
        assert_eq!(image.to_bin(), image.clone().into_bin());
    }

    #[test]
    fn color_format_names_parse_case_insensitively() {
        assert_eq!(ColorFormat::parse("argb8888").unwrap(), ColorFormat::Argb8888);
        assert_eq!(ColorFormat::parse("I4").unwrap_err().code(), "invalid_color_format");
        assert_eq!(LvglVersion::parse("7").unwrap_err().code(), "invalid_lvgl_version");
    }
}
