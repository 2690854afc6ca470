//! Preprocessing speed, side by side in one run: our `Preprocess` (fast_image_resize bilinear,
//! resizing only the crop window) against the `image` crate's own resize with the same filter
//! (`imageops::resize`, `FilterType::Triangle` = bilinear) followed by the same crop and
//! normalisation written plainly. Single-threaded, fixed synthetic images, median of repeats that
//! alternate between the two sides so both see the same machine load.
//!
//! `cargo run --release -p hashsrv --example preprocess_bench` prints a Markdown table (the one in
//! BENCHMARKS.md, section "Preprocessing").

use std::hint::black_box;
use std::io::Cursor;
use std::time::Instant;

use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};

use hashsrv::preprocess::{DecodeLimits, Preprocess, decode_image};

/// Median time per call, in microseconds, of `ours` and `peer`, each over `repeats` batches of
/// `iterations` calls; the batches alternate so both sides see the same machine load.
fn paired_median_micros(iterations: u32, repeats: usize, mut ours: impl FnMut(), mut peer: impl FnMut()) -> (f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
    };
    time(&mut ours);
    time(&mut peer);
    let (mut a, mut b) = (Vec::with_capacity(repeats), Vec::with_capacity(repeats));
    for _ in 0..repeats {
        a.push(time(&mut ours));
        b.push(time(&mut peer));
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    (a[repeats / 2], b[repeats / 2])
}

fn photo(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let r = (x * 255 / width) as u8;
        let g = (y * 255 / height) as u8;
        let b = (((x / 7 + y / 5) % 2) * 200 + (x * y) % 55) as u8;
        Rgb([r, g, b])
    })
}

/// The plain reference: `image`'s resize of the whole image, centre crop, per-value normalisation.
fn reference_eval(p: &Preprocess, image: &RgbImage, out: &mut [f32]) {
    let (w, h) = p.resized_size(image.width(), image.height());
    let resized = image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle);
    let crop = p.crop;
    // torchvision's centre: int(round((size - crop) / 2.0)), halves to even.
    let centre = |size: u32| ((f64::from(size - crop) / 2.0).round_ties_even()) as u32;
    let (left, top) = (centre(w), centre(h));
    for c in 0..3 {
        for y in 0..crop {
            for x in 0..crop {
                let v = f32::from(resized.get_pixel(left + x, top + y).0[c]) / 255.0;
                out[(c as u32 * crop * crop + y * crop + x) as usize] = (v - p.mean[c]) / p.std[c];
            }
        }
    }
}

fn row(name: &str, ours: f64, peer: f64) -> String {
    format!("| {name} | {ours:.1} | {peer:.1} | {:.2}x |", peer / ours)
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let photo_rgb = photo(500, 375);
    let mut jpeg = Cursor::new(Vec::new());
    photo_rgb.write_to(&mut jpeg, ImageFormat::Jpeg).expect("encode the test JPEG");
    let jpeg = jpeg.into_inner();
    let photo_image = DynamicImage::ImageRgb8(photo_rgb.clone());
    let imagenet = Preprocess::imagenet();
    let mut out = vec![0f32; imagenet.tensor_len()];

    let mut lines = vec![
        "| step (one image, one thread) | hashsrv (µs) | image crate (µs) | speed-up |".to_string(),
        "|---|---:|---:|---:|".to_string(),
    ];

    let mut peer_out = vec![0f32; imagenet.tensor_len()];
    const REPEATS: usize = 21;

    // 1. The resize alone, 500x375 -> 341x256 (shorter side 256), both bilinear.
    let (ours, peer) = paired_median_micros(
        20,
        REPEATS,
        || {
            let src = fast_image_resize::images::ImageRef::new(
                500,
                375,
                photo_rgb.as_raw(),
                fast_image_resize::PixelType::U8x3,
            )
            .unwrap();
            let mut dst = fast_image_resize::images::Image::new(341, 256, fast_image_resize::PixelType::U8x3);
            let options = fast_image_resize::ResizeOptions::new()
                .resize_alg(fast_image_resize::ResizeAlg::Convolution(fast_image_resize::FilterType::Bilinear));
            fast_image_resize::Resizer::new().resize(&src, &mut dst, &options).unwrap();
            black_box(dst);
        },
        || {
            black_box(image::imageops::resize(&photo_rgb, 341, 256, image::imageops::FilterType::Triangle));
        },
    );
    lines.push(row("resize 500x375 -> 341x256 (bilinear)", ours, peer));

    // 2. The whole evaluation transform on a decoded photo (resize, centre crop 224, normalise).
    let (ours, peer) = paired_median_micros(
        20,
        REPEATS,
        || imagenet.eval_into(black_box(&photo_image), &mut out).unwrap(),
        || reference_eval(&imagenet, black_box(&photo_rgb), &mut peer_out),
    );
    lines.push(row("eval transform 500x375 -> 3x224x224 (imagenet)", ours, peer));

    // 3. Decode + evaluation transform, the server's per-upload work before the model.
    let limits = DecodeLimits::default();
    let (ours, peer) = paired_median_micros(
        20,
        REPEATS,
        || {
            let image = decode_image(black_box(&jpeg), &limits).unwrap();
            imagenet.eval_into(&image, &mut out).unwrap();
        },
        || {
            let image = image::load_from_memory(black_box(&jpeg)).unwrap().to_rgb8();
            reference_eval(&imagenet, &image, &mut peer_out);
        },
    );
    lines.push(row("JPEG decode + eval transform (500x375)", ours, peer));

    // 4. Fashion-MNIST's small mode: 28x28 grey -> 3x32x32.
    let small = Preprocess::small(32);
    let (mut small_out, mut small_peer_out) = (vec![0f32; small.tensor_len()], vec![0f32; small.tensor_len()]);
    let grey = GrayImage::from_fn(28, 28, |x, y| Luma([((x * 9 + y * 5) % 256) as u8]));
    let grey_image = DynamicImage::ImageLuma8(grey.clone());
    let grey_rgb = DynamicImage::ImageLuma8(grey).to_rgb8();
    let (ours, peer) = paired_median_micros(
        1000,
        REPEATS,
        || small.eval_into(black_box(&grey_image), &mut small_out).unwrap(),
        || reference_eval(&small, black_box(&grey_rgb), &mut small_peer_out),
    );
    lines.push(row("small mode 28x28 grey -> 3x32x32", ours, peer));

    println!("{}", lines.join("\n"));
    println!();
    println!(
        "({} logical CPUs available; single-threaded; median of 21 alternating repeats; fast_image_resize CPU \
         extensions: {:?})",
        threads,
        fast_image_resize::Resizer::new().cpu_extensions()
    );
}
