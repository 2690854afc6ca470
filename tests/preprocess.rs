//! Decoding (formats, EXIF orientation, colour conversions, limits, bad bytes) and the
//! preprocessing transforms, against a straightforward reference built on the `image` crate.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use hashsrv::preprocess::{DecodeError, DecodeLimits, Preprocess, PreprocessError, Resize, decode_image};

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess").join(name)).unwrap()
}

fn decode(bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    decode_image(bytes, &DecodeLimits::default())
}

/// A deterministic photo-like image: smooth gradients plus a pattern, so resizing matters.
fn synthetic(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let r = (x * 255 / width.max(1)) as u8;
        let g = (y * 255 / height.max(1)) as u8;
        let b = (((x / 7 + y / 5) % 2) * 200 + (x * y) % 55) as u8;
        Rgb([r, g, b])
    })
}

fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// The reference evaluation transform: `image`'s own triangle (bilinear) resize, then a centre
/// crop and the per-channel normalisation written out by hand.
fn reference_eval(p: &Preprocess, image: &RgbImage) -> Vec<f32> {
    let (w, h) = p.resized_size(image.width(), image.height());
    let resized = image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle);
    let crop = p.crop;
    // torchvision's centre: int(round((size - crop) / 2.0)), halves to even.
    let centre = |size: u32| ((f64::from(size - crop) / 2.0).round_ties_even()) as u32;
    let (left, top) = (centre(w), centre(h));
    let mut out = vec![0f32; p.tensor_len()];
    for c in 0..3 {
        for y in 0..crop {
            for x in 0..crop {
                let v = f32::from(resized.get_pixel(left + x, top + y).0[c]) / 255.0;
                out[(c as u32 * crop * crop + y * crop + x) as usize] = (v - p.mean[c]) / p.std[c];
            }
        }
    }
    out
}

#[test]
fn eval_matches_the_image_crate_reference() {
    for (p, (w, h)) in [
        (Preprocess::imagenet(), (500, 375)),
        (Preprocess::imagenet(), (300, 600)),
        // No resize; the centre offset (399 - 224) / 2 = 87.5 rounds to 88 as in torchvision.
        (Preprocess::imagenet(), (399, 256)),
        (Preprocess::imagenet(), (1024, 683)),
        (Preprocess::seed_protocol(), (500, 375)),
        (Preprocess::small(32), (28, 28)),
    ] {
        let image = synthetic(w, h);
        let mut ours = vec![0f32; p.tensor_len()];
        p.eval_into(&DynamicImage::ImageRgb8(image.clone()), &mut ours).unwrap();
        let reference = reference_eval(&p, &image);
        let diffs: Vec<f32> = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().cloned().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        eprintln!("{:?} on {w}x{h}: max {max:.4}, mean {mean:.5}", p.resize);
        // One grey level is 1/255/std, at most 0.0195 here: the two bilinear resizers may round
        // a value differently by one level, rarely (the mean stays far below one level).
        assert!(max < 0.025 && mean < 0.003, "{p:?} on {w}x{h}: max {max}, mean {mean}");
    }
}

#[test]
fn eval_is_deterministic_and_checks_its_buffer() {
    let p = Preprocess::imagenet();
    let image = DynamicImage::ImageRgb8(synthetic(320, 240));
    let mut a = vec![0f32; p.tensor_len()];
    let mut b = vec![1f32; p.tensor_len()];
    p.eval_into(&image, &mut a).unwrap();
    p.eval_into(&image, &mut b).unwrap();
    assert_eq!(a, b);
    let mut short = vec![0f32; 10];
    assert!(matches!(p.eval_into(&image, &mut short), Err(PreprocessError::OutputLength { .. })));
    let bad = Preprocess { crop: 300, ..Preprocess::imagenet() };
    assert!(matches!(bad.eval_into(&image, &mut vec![0f32; bad.tensor_len()]), Err(PreprocessError::InvalidConfig(_))));
    let empty = DynamicImage::ImageRgb8(RgbImage::new(0, 5));
    assert!(matches!(p.eval_into(&empty, &mut a), Err(PreprocessError::EmptyImage { .. })));
}

#[test]
fn grey_input_gives_equal_channels() {
    let p = Preprocess::small(32);
    assert_eq!(p.tensor_len(), 3 * 32 * 32);
    let grey = image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 3) % 256) as u8]));
    let mut out = vec![0f32; p.tensor_len()];
    p.eval_into(&DynamicImage::ImageLuma8(grey), &mut out).unwrap();
    let plane = 32 * 32;
    assert_eq!(out[..plane], out[plane..2 * plane]);
    assert_eq!(out[..plane], out[2 * plane..]);
}

/// Mean of the red plane over the left and the right half of a CHW tensor.
fn left_right_red(out: &[f32], crop: usize) -> (f32, f32) {
    let (mut left, mut right) = (0f32, 0f32);
    for y in 0..crop {
        for x in 0..crop {
            let v = out[y * crop + x];
            if x < crop / 2 { left += v } else { right += v }
        }
    }
    (left, right)
}

#[test]
fn train_transform_is_seeded_flips_and_pads() {
    // Red on the left half, black on the right: a flip moves the red to the right.
    let image =
        DynamicImage::ImageRgb8(RgbImage::from_fn(
            32,
            32,
            |x, _| if x < 16 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 0]) },
        ));
    let p = Preprocess::small(32);
    assert_eq!(p.train_padding(), 4);
    let run = |seed: u64| {
        let mut out = vec![0f32; p.tensor_len()];
        p.train_into(&image, &mut ChaCha8Rng::seed_from_u64(seed), &mut out).unwrap();
        out
    };
    assert_eq!(run(1), run(1), "same seed, same tensor");
    let (mut flipped, mut kept, mut padded) = (0, 0, 0);
    let black = (0.0 - p.mean[1]) / p.std[1];
    for seed in 0..64 {
        let out = run(seed);
        let (left, right) = left_right_red(&out, 32);
        if left > right {
            kept += 1
        } else {
            flipped += 1
        }
        // Padding shows as black rows or columns in the green plane... which is black anyway, so
        // look at the red plane's border instead: a padded border column is not red.
        let red_corner = out[0];
        let red_other_corner = out[31];
        if red_corner.min(red_other_corner) < 0.0 && (red_corner - red_other_corner).abs() < 1e-6 {
            padded += 1;
        }
        assert!(out[32 * 32..2 * 32 * 32].iter().all(|&g| (g - black).abs() < 1e-6), "green stays black");
    }
    assert!(kept > 10 && flipped > 10, "flip p=0.5: kept {kept}, flipped {flipped}");
    assert!(padded > 0, "the padded random crop sometimes shows padding");
}

#[test]
fn train_crop_stays_inside_for_large_images() {
    let p = Preprocess::imagenet();
    assert_eq!(p.train_padding(), 0);
    let image = DynamicImage::ImageRgb8(synthetic(400, 300));
    let mut out = vec![0f32; p.tensor_len()];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..5 {
        p.train_into(&image, &mut rng, &mut out).unwrap();
        assert!(out.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn preprocess_serialises_for_the_model_metadata() {
    for p in [Preprocess::imagenet(), Preprocess::seed_protocol(), Preprocess::small(32)] {
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Preprocess>(&json).unwrap(), p);
    }
    let json = serde_json::to_value(Preprocess::imagenet()).unwrap();
    assert_eq!(json["resize"]["shorter_side"], 256);
    assert_eq!(Preprocess::seed_protocol().resize, Resize::Exact { width: 256, height: 256 });
}

#[test]
fn shorter_side_resize_keeps_the_aspect_ratio() {
    let p = Preprocess::imagenet();
    assert_eq!(p.resized_size(500, 375), (341, 256));
    assert_eq!(p.resized_size(375, 500), (256, 341));
    assert_eq!(p.resized_size(256, 256), (256, 256));
    assert_eq!(p.resized_size(10_000, 1), (2_560_000, 256));
}

// ---------------------------------------------------------------- decoding

#[test]
fn exif_orientation_is_applied() {
    let red_top_left = |image: &RgbImage| image.get_pixel(1, 1).0[0] > 200 && image.get_pixel(1, 1).0[2] < 60;
    let cases = [
        ("orientation1.jpg", (40, 20), true),
        ("orientation3.jpg", (40, 20), false),
        ("orientation6.jpg", (20, 40), true),
        ("orientation8.jpg", (20, 40), false),
    ];
    for (name, size, red_first) in cases {
        let image = decode(&fixture_bytes(name)).unwrap();
        assert!(matches!(image, DynamicImage::ImageRgb8(_)));
        let rgb = image.to_rgb8();
        assert_eq!(rgb.dimensions(), size, "{name}");
        assert_eq!(red_top_left(&rgb), red_first, "{name}");
        let (w, h) = rgb.dimensions();
        let far = rgb.get_pixel(w - 2, h - 2).0;
        assert_eq!(far[2] > 200, red_first, "{name}: the opposite corner is blue exactly when the first is red");
    }
}

#[test]
fn colour_models_become_rgb8() {
    let cmyk = decode(&fixture_bytes("cmyk.jpg")).unwrap();
    let p = cmyk.as_rgb8().unwrap().get_pixel(5, 5).0;
    assert!(p[0] > 240 && (110..=145).contains(&p[1]) && p[2] < 20, "CMYK (0,128,255,0) is orange, got {p:?}");

    let grey16 = decode(&fixture_bytes("grey16.png")).unwrap();
    let rgb = grey16.as_rgb8().unwrap();
    assert_eq!(rgb.dimensions(), (24, 10));
    assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(rgb.get_pixel(23, 0).0, [255, 255, 255]);

    let rgba = decode(&fixture_bytes("rgba.png")).unwrap();
    assert_eq!(rgba.as_rgb8().unwrap().get_pixel(3, 3).0, [0, 180, 0]);

    for format in
        [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::Tiff]
    {
        let bytes = encode(&synthetic(33, 17), format);
        let image = decode(&bytes).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!((image.width(), image.height()), (33, 17), "{format:?}");
    }
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A decompression bomb: a valid PNG header claiming `width` x `height` 8-bit RGB pixels with
/// only a few rows of zlib data behind it (a real bomb's data would compress just as well).
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    use std::io::Write;
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(&vec![0u8; 4 * (1 + 3 * width.min(100_000) as usize)]).unwrap();
    let idat = zlib.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &idat);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn pixel_limit_refuses_before_decoding() {
    let bomb = png_bomb(100_000, 100_000);
    let start = std::time::Instant::now();
    let err = decode(&bomb).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooManyPixels { width: 100_000, height: 100_000, pixels: 10_000_000_000, max_pixels: 40_000_000 }
    );
    assert!(start.elapsed().as_millis() < 500, "refused without decoding");
    // The same file within the limit gets past the check and fails on the missing rows instead.
    let small = decode(&png_bomb(10, 10)).unwrap_err();
    assert!(matches!(small, DecodeError::Truncated { .. } | DecodeError::Corrupt { .. }), "{small:?}");
    // The limit is the caller's.
    let tight = DecodeLimits { max_pixels: 100, ..DecodeLimits::default() };
    let bytes = encode(&synthetic(11, 10), ImageFormat::Png);
    assert!(matches!(decode_image(&bytes, &tight), Err(DecodeError::TooManyPixels { pixels: 110, .. })));
}

#[test]
fn bad_bytes_get_distinct_errors() {
    assert_eq!(decode(b"").unwrap_err(), DecodeError::Empty);
    assert!(matches!(decode(b"hello, this is text").unwrap_err(), DecodeError::UnsupportedFormat { .. }));
    // ICO is an image format we do not accept.
    assert!(matches!(decode(&[0, 0, 1, 0, 1, 0, 16, 16, 0, 0]).unwrap_err(), DecodeError::UnsupportedFormat { .. }));
    let big = DecodeLimits { max_bytes: 16, ..DecodeLimits::default() };
    assert!(matches!(decode_image(&[0u8; 17], &big).unwrap_err(), DecodeError::TooManyBytes { len: 17, max: 16 }));

    let png = encode(&synthetic(64, 48), ImageFormat::Png);
    let err = decode(&png[..png.len() / 2]).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }), "half a PNG: {err:?}");
    // The JPEG decoder would fill a cut-off scan with grey; every cut must still be refused.
    for name in ["orientation6.jpg", "cmyk.jpg", "progressive.jpg"] {
        let jpeg = fixture_bytes(name);
        decode(&jpeg).unwrap();
        for cut in 4..jpeg.len() {
            let err = decode(&jpeg[..cut]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. } | DecodeError::Corrupt { .. }),
                "{name} cut at {cut}: {err:?}"
            );
        }
        // Bytes after the end-of-image marker (cameras append some) are fine.
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(&[0u8; 100]);
        decode(&trailing).unwrap();
    }
    let progressive_like = encode(&synthetic(300, 200), ImageFormat::Jpeg);
    assert!(matches!(decode(&progressive_like[..progressive_like.len() - 2]), Err(DecodeError::Truncated { .. })));
}

#[test]
fn every_prefix_and_corruption_is_an_error_or_an_image_never_a_panic() {
    for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp] {
        let bytes = encode(&synthetic(24, 16), format);
        for len in (0..bytes.len()).step_by(7) {
            let _ = decode(&bytes[..len]);
        }
        for at in (0..bytes.len()).step_by(5) {
            let mut corrupt = bytes.clone();
            corrupt[at] ^= 0xa5;
            if let Ok(image) = decode(&corrupt) {
                assert!(matches!(image, DynamicImage::ImageRgb8(_)));
            }
        }
    }
}
