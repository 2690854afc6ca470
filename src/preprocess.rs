//! Image decoding and preprocessing: THE one implementation, shared by training (tch), index
//! building and serving (ONNX Runtime), so every part of the system sees the same pixels.
//!
//! Two steps:
//! - [`decode_image`] turns untrusted bytes into an RGB8 image: it sniffs the format, reads the
//!   dimensions and refuses images above a pixel budget *before* decoding (decompression bombs),
//!   applies the EXIF orientation and converts grey, alpha, CMYK and 16-bit images to RGB8.
//! - [`Preprocess`] turns an image into a normalised CHW `f32` tensor: resize (bilinear,
//!   antialiased convolution as in PIL/torchvision, done by `fast_image_resize`), square crop
//!   (centre for evaluation, random plus horizontal flip for training) and per-channel
//!   `(x / 255 - mean) / std`.
//!
//! ```
//! use hashsrv::preprocess::{DecodeError, DecodeLimits, Preprocess, decode_image};
//!
//! let p = Preprocess::imagenet();
//! let image = image::DynamicImage::new_rgb8(500, 375);
//! let mut tensor = vec![0f32; p.tensor_len()]; // 3 x 224 x 224, CHW
//! p.eval_into(&image, &mut tensor)?;
//! assert!((tensor[0] - (0.0 - 0.485) / 0.229).abs() < 1e-6); // black, normalised
//! assert_eq!(decode_image(b"", &DecodeLimits::default()).unwrap_err(), DecodeError::Empty);
//! # Ok::<(), hashsrv::preprocess::PreprocessError>(())
//! ```

use std::borrow::Cow;
use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

/// ImageNet channel means (what torchvision's pretrained ResNet-18 expects).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// CIFAR-10 statistics, used by the seed repository's transforms (kept for its preset).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 standard deviations used by the seed repository.
pub const CIFAR10_STD: [f32; 3] = [0.2023, 0.1994, 0.2010];
/// Fashion-MNIST pixel mean (single grey channel, replicated on RGB).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
/// Fashion-MNIST pixel standard deviation.
pub const FASHION_MNIST_STD: f32 = 0.3530;

/// How the image is resized before cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Scale so the shorter side has this length, keeping the aspect ratio (torchvision's
    /// `Resize(int)`).
    ShorterSide(u32),
    /// Scale to exactly this size, squashing the aspect ratio (torchvision's `Resize((h, w))`).
    Exact { width: u32, height: u32 },
}

/// The preprocessing contract of a model: it goes into the ONNX metadata so that the server
/// feeds the model exactly what it was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub resize: Resize,
    /// Side of the square crop: the network's input is `3 x crop x crop`.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Why an image could not be preprocessed (a bad configuration or output buffer, never bad pixels).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreprocessError {
    #[error("the output buffer holds {got} floats but the preprocessing writes {expected} (3 x {crop} x {crop})")]
    OutputLength { expected: usize, got: usize, crop: u32 },
    #[error("the image is empty ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
    #[error("invalid preprocessing: {0}")]
    InvalidConfig(String),
    #[error("resizing failed: {0}")]
    Resize(String),
}

impl Preprocess {
    /// Our default: shorter side 256, centre crop 224, ImageNet mean/std.
    pub fn imagenet() -> Self {
        Preprocess { resize: Resize::ShorterSide(256), crop: 224, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// The seed repository's protocol: squash to 256x256, crop 224, CIFAR-10 mean/std.
    pub fn seed_protocol() -> Self {
        Preprocess {
            resize: Resize::Exact { width: 256, height: 256 },
            crop: 224,
            mean: CIFAR10_MEAN,
            std: CIFAR10_STD,
        }
    }

    /// Small grey images (Fashion-MNIST's 28x28): resize to `size` x `size` with no crop loss;
    /// training augments with a padded random crop instead. Fashion-MNIST's statistics are
    /// replicated on the three channels (the image is grey, so the channels are equal).
    pub fn small(size: u32) -> Self {
        Preprocess {
            resize: Resize::Exact { width: size, height: size },
            crop: size,
            mean: [FASHION_MNIST_MEAN; 3],
            std: [FASHION_MNIST_STD; 3],
        }
    }

    /// Number of floats one image occupies: `3 * crop * crop`.
    pub fn tensor_len(&self) -> usize {
        3 * self.crop as usize * self.crop as usize
    }

    /// Checks the configuration: sizes positive, crop fits the resized image, std non-zero.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        if self.crop == 0 {
            return Err(PreprocessError::InvalidConfig("crop must be positive".into()));
        }
        match self.resize {
            Resize::ShorterSide(side) if side < self.crop => {
                return Err(PreprocessError::InvalidConfig(format!(
                    "crop {} is larger than the shorter side {side}",
                    self.crop
                )));
            }
            Resize::Exact { width, height } if width < self.crop || height < self.crop => {
                return Err(PreprocessError::InvalidConfig(format!(
                    "crop {} does not fit the resized {width}x{height}",
                    self.crop
                )));
            }
            _ => {}
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(PreprocessError::InvalidConfig(format!(
                "mean {:?} and std {:?} must be finite with non-zero std",
                self.mean, self.std
            )));
        }
        Ok(())
    }

    /// Size of the image after the resize step, before cropping.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.resize {
            Resize::Exact { width, height } => (width, height),
            Resize::ShorterSide(side) => {
                // The long side as torchvision computes it: `int(side * long / short)`, truncated.
                let scale = |long: u32, short: u32| -> u32 {
                    (u64::from(long) * u64::from(side) / u64::from(short)).clamp(1, u64::from(u32::MAX)) as u32
                };
                if width <= height { (side, scale(height, width)) } else { (scale(width, height), side) }
            }
        }
    }

    /// Padding of the training-time random crop: when the resize leaves no room to crop (the
    /// small-image mode), training pads by `crop / 8` on each side with black, as CIFAR recipes do.
    pub fn train_padding(&self) -> u32 {
        match self.resize {
            Resize::Exact { width, height } if width == self.crop && height == self.crop => self.crop / 8,
            _ => 0,
        }
    }

    /// The evaluation transform: resize, centre crop, normalise, written as CHW into `out`.
    /// Deterministic: the same image always gives the same floats.
    pub fn eval_into(&self, image: &DynamicImage, out: &mut [f32]) -> Result<(), PreprocessError> {
        self.check_output(out)?;
        let rgb = as_rgb8(image)?;
        let (w, h) = self.resized_size(rgb.width(), rgb.height());
        let window = Window {
            left: centre_offset(w, self.crop),
            top: centre_offset(h, self.crop),
            width: self.crop,
            height: self.crop,
        };
        let pixels = resize_window(&rgb, (w, h), window)?;
        self.write_chw(&pixels, 0, 0, false, out);
        Ok(())
    }

    /// The training transform: resize, random crop (padded in small-image mode), horizontal flip
    /// with probability 0.5, normalise, written as CHW into `out`. Every random choice comes
    /// from `rng`, so a seeded generator reproduces the batch.
    pub fn train_into(
        &self,
        image: &DynamicImage,
        rng: &mut impl rand::Rng,
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        self.check_output(out)?;
        let rgb = as_rgb8(image)?;
        let (w, h) = self.resized_size(rgb.width(), rgb.height());
        let pad = i64::from(self.train_padding());
        let max_left = i64::from(w - self.crop) + pad;
        let max_top = i64::from(h - self.crop) + pad;
        let left = rng.random_range(-pad..=max_left);
        let top = rng.random_range(-pad..=max_top);
        let flip = rng.random_bool(0.5);
        if pad == 0 {
            // Without padding the crop lies inside the resized image: resize only that window.
            let window = Window { left: left as u32, top: top as u32, width: self.crop, height: self.crop };
            let pixels = resize_window(&rgb, (w, h), window)?;
            self.write_chw(&pixels, 0, 0, flip, out);
        } else {
            let pixels = resize_window(&rgb, (w, h), Window { left: 0, top: 0, width: w, height: h })?;
            self.write_chw(&pixels, left, top, flip, out);
        }
        Ok(())
    }

    fn check_output(&self, out: &[f32]) -> Result<(), PreprocessError> {
        self.validate()?;
        if out.len() != self.tensor_len() {
            return Err(PreprocessError::OutputLength { expected: self.tensor_len(), got: out.len(), crop: self.crop });
        }
        Ok(())
    }

    /// Writes the `crop x crop` window at (`left`, `top`) of `resized` as normalised CHW floats;
    /// pixels outside the image (padding) are black. Normalisation goes through a 256-entry
    /// table per channel: one lookup per value instead of a divide.
    fn write_chw(&self, resized: &RgbImage, left: i64, top: i64, flip: bool, out: &mut [f32]) {
        let mut table = [[0f32; 256]; 3];
        for (c, channel) in table.iter_mut().enumerate() {
            for (v, slot) in channel.iter_mut().enumerate() {
                *slot = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        let crop = self.crop as usize;
        let plane = crop * crop;
        let (w, h) = (i64::from(resized.width()), i64::from(resized.height()));
        let raw = resized.as_raw();
        let (out_r, rest) = out.split_at_mut(plane);
        let (out_g, out_b) = rest.split_at_mut(plane);
        for y in 0..crop {
            let sy = top + y as i64;
            let row = y * crop;
            for x in 0..crop {
                let dx = if flip { crop - 1 - x } else { x };
                let sx = left + x as i64;
                let [r, g, b] = if (0..w).contains(&sx) && (0..h).contains(&sy) {
                    let i = ((sy * w + sx) * 3) as usize;
                    [raw[i], raw[i + 1], raw[i + 2]]
                } else {
                    [0, 0, 0]
                };
                out_r[row + dx] = table[0][r as usize];
                out_g[row + dx] = table[1][g as usize];
                out_b[row + dx] = table[2][b as usize];
            }
        }
    }
}

/// Offset of a centred crop as torchvision's `center_crop` computes it:
/// `int(round((size - crop) / 2.0))`, where Python rounds halves to even.
fn centre_offset(size: u32, crop: u32) -> u32 {
    let diff = size - crop;
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
}

/// A rectangle of the resized image, in resized-image pixels.
#[derive(Clone, Copy, Debug)]
struct Window {
    left: u32,
    top: u32,
    width: u32,
    height: u32,
}

/// The image as RGB8, borrowed when it already is.
fn as_rgb8(image: &DynamicImage) -> Result<Cow<'_, RgbImage>, PreprocessError> {
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(PreprocessError::EmptyImage { width, height });
    }
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => Cow::Borrowed(rgb),
        other => Cow::Owned(other.to_rgb8()),
    })
}

/// The `window` of `rgb` resized to `resized`, computed without the rest of the resized image.
///
/// `fast_image_resize`'s bilinear convolution (antialiased when downscaling, like PIL's
/// `BILINEAR` and torchvision's default) on a fractional source crop box gives the same pixels
/// as resizing the whole image and cropping afterwards: each output pixel's filter is centred
/// at the same source position and reads source pixels outside the box too (the kernel is
/// clamped to the image, not to the box). The centre crop of a 500x375 photo thus resizes
/// 224x224 pixels instead of 341x256.
fn resize_window(rgb: &RgbImage, resized: (u32, u32), window: Window) -> Result<RgbImage, PreprocessError> {
    let (width, height) = rgb.dimensions();
    if resized == (width, height) {
        if (window.left, window.top, window.width, window.height) == (0, 0, width, height) {
            return Ok(rgb.clone());
        }
        return Ok(image::imageops::crop_imm(rgb, window.left, window.top, window.width, window.height).to_image());
    }
    let resize_error = |e: &dyn std::fmt::Display| PreprocessError::Resize(e.to_string());
    let src =
        fr::images::ImageRef::new(width, height, rgb.as_raw(), fr::PixelType::U8x3).map_err(|e| resize_error(&e))?;
    let mut dst = fr::images::Image::new(window.width, window.height, fr::PixelType::U8x3);
    let scale_x = f64::from(width) / f64::from(resized.0);
    let scale_y = f64::from(height) / f64::from(resized.1);
    let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear)).crop(
        f64::from(window.left) * scale_x,
        f64::from(window.top) * scale_y,
        f64::from(window.width) * scale_x,
        f64::from(window.height) * scale_y,
    );
    fr::Resizer::new().resize(&src, &mut dst, &options).map_err(|e| resize_error(&e))?;
    RgbImage::from_raw(window.width, window.height, dst.into_vec())
        .ok_or_else(|| PreprocessError::Resize("resized buffer has the wrong length".into()))
}

/// Limits applied to untrusted image bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `width * height` decoded; checked from the header before any pixel is decoded.
    pub max_pixels: u64,
    /// Largest encoded size accepted.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_pixels: 40_000_000, max_bytes: 20 * 1024 * 1024 }
    }
}

/// Why bytes could not be decoded into an image. Each variant maps to one HTTP status:
/// `Empty`, `Corrupt` and `Truncated` to 400, `UnsupportedFormat` to 415, `TooManyPixels`,
/// `MemoryLimit` and `TooManyBytes` to 413.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the image is empty (zero bytes)")]
    Empty,
    #[error("the image is {len} bytes, more than the limit of {max} bytes")]
    TooManyBytes { len: usize, max: usize },
    #[error("unsupported image format: {detail} (accepted: JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnsupportedFormat { detail: String },
    #[error("the image is {width}x{height} = {pixels} pixels, more than the limit of {max_pixels}")]
    TooManyPixels { width: u32, height: u32, pixels: u64, max_pixels: u64 },
    #[error("decoding the image would exceed the memory limit: {detail}")]
    MemoryLimit { detail: String },
    #[error("the {format} image is truncated: {detail}")]
    Truncated { format: String, detail: String },
    #[error("the {format} image is corrupt: {detail}")]
    Corrupt { format: String, detail: String },
}

/// The formats we decode (the `image` features the workspace enables).
fn accepted_format(format: ImageFormat) -> bool {
    matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    )
}

/// Decodes untrusted bytes into an RGB8 image (see the module docs for the steps and checks).
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooManyBytes { len: bytes.len(), max: limits.max_bytes });
    }
    let format = image::guess_format(bytes)
        .map_err(|_| DecodeError::UnsupportedFormat { detail: "unrecognised file signature".into() })?;
    if !accepted_format(format) {
        return Err(DecodeError::UnsupportedFormat { detail: format!("{format:?}") });
    }
    let name = format!("{format:?}").to_uppercase();
    // The JPEG decoder fills a cut-off scan with grey instead of failing: check the structure.
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(DecodeError::Truncated {
            format: name,
            detail: "the data ends before the end-of-image marker".into(),
        });
    }
    // A decoder is third-party code fed hostile bytes: a panic inside it becomes an error.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_checked(bytes, format, limits)));
    let image = match decoded {
        Ok(result) => result.map_err(|e| classify(e, &name, limits.max_pixels))?,
        Err(_) => return Err(DecodeError::Corrupt { format: name, detail: "the decoder failed".into() }),
    };
    Ok(match image {
        DynamicImage::ImageRgb8(_) => image,
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    })
}

/// The decoding failures, before they are classified for the caller.
enum DecodeFailure {
    TooManyPixels { width: u32, height: u32 },
    Image(image::ImageError),
}

fn decode_checked(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<DynamicImage, DecodeFailure> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = image::Limits::default();
    // Room for the decoded image at up to 16 bytes per pixel (RGBA32F) plus the decoder's own
    // buffers: a bound on memory even when a decoder's header check is lax.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(DecodeFailure::Image)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeFailure::TooManyPixels { width, height });
    }
    // A missing or unreadable EXIF block means "as stored", never a failed upload.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(DecodeFailure::Image)?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn classify(failure: DecodeFailure, format: &str, max_pixels: u64) -> DecodeError {
    let format = format.to_string();
    let image_error = match failure {
        DecodeFailure::TooManyPixels { width, height } => {
            let pixels = u64::from(width) * u64::from(height);
            return DecodeError::TooManyPixels { width, height, pixels, max_pixels };
        }
        DecodeFailure::Image(e) => e,
    };
    let detail = image_error.to_string();
    match image_error {
        image::ImageError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated { format, detail }
        }
        image::ImageError::Unsupported(_) => DecodeError::UnsupportedFormat { detail: format!("{format}: {detail}") },
        image::ImageError::Limits(_) => DecodeError::MemoryLimit { detail },
        _ if looks_truncated(&detail) => DecodeError::Truncated { format, detail },
        _ => DecodeError::Corrupt { format, detail },
    }
}

/// Whether a JPEG's segments and entropy-coded scans run through to the end-of-image marker.
///
/// Walks the marker segments by their lengths (so thumbnails inside APP1 are skipped) and each
/// scan up to the next marker (inside a scan 0xFF is followed by a stuffed 0x00 or a restart
/// marker). Any structure this walk does not understand counts as complete: the decoder judges.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let len = bytes.len();
    let mut i = 2; // after SOI
    loop {
        if i >= len {
            return false;
        }
        if bytes[i] != 0xFF {
            return true;
        }
        while i < len && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {
                let Some(segment) = bytes.get(i..i + 2) else { return false };
                i += usize::from(u16::from_be_bytes([segment[0], segment[1]]));
                if marker == 0xDA {
                    // Entropy-coded data: find the next real marker.
                    loop {
                        let Some(offset) = bytes.get(i..).and_then(|rest| rest.iter().position(|&b| b == 0xFF)) else {
                            return false;
                        };
                        i += offset;
                        match bytes.get(i + 1) {
                            None => return false,
                            Some(0x00 | 0xD0..=0xD7) => i += 2,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// Decoders report a premature end of data in their own words; recognise the usual ones so a
/// cut-off upload is reported as truncated rather than corrupt.
fn looks_truncated(detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    ["eof", "end of file", "unexpected end", "truncated", "not enough data", "no more bytes", "exhausted"]
        .iter()
        .any(|needle| lower.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y % 251) as u8, ((x / 3) ^ (y / 2)) as u8])
        })
    }

    #[test]
    fn centre_offset_rounds_halves_to_even_like_python() {
        // Python: round(58.5) = 58, round(86.5) = 86, round(87.5) = 88, round(3.0) = 3.
        assert_eq!(centre_offset(341, 224), 58);
        assert_eq!(centre_offset(397, 224), 86);
        assert_eq!(centre_offset(399, 224), 88);
        assert_eq!(centre_offset(230, 224), 3);
        assert_eq!(centre_offset(224, 224), 0);
    }

    /// Resizing only a window equals resizing everything and cropping afterwards.
    #[test]
    fn window_resize_equals_full_resize_then_crop() {
        for ((w, h), resized) in [((500, 375), (341, 256)), ((333, 517), (256, 397)), ((64, 48), (256, 256))] {
            let rgb = pattern(w, h);
            let full =
                resize_window(&rgb, resized, Window { left: 0, top: 0, width: resized.0, height: resized.1 }).unwrap();
            for (left, top) in [(0, 0), (resized.0 - 224, resized.1 - 224), ((resized.0 - 224) / 2, 13)] {
                let window = resize_window(&rgb, resized, Window { left, top, width: 224, height: 224 }).unwrap();
                let cropped = image::imageops::crop_imm(&full, left, top, 224, 224).to_image();
                let worst = window.as_raw().iter().zip(cropped.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
                assert!(worst <= 1, "{w}x{h} -> {resized:?} at ({left}, {top}): differs by {worst}");
            }
        }
    }
}
