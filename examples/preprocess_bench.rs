//! Preprocessing speed, side by side in one run: our `Preprocess` (fast_image_resize bilinear,
//! resizing only the crop window) against the `image` crate's own resize with the same filter
//! (`imageops::resize`, `FilterType::Triangle` = bilinear) followed by the same crop and
//! normalisation written plainly. Single-threaded, fixed synthetic images, median of repeats.
//!
//! `cargo run --release -p hashsrv --example preprocess_bench` prints a Markdown table (the one in
//! BENCHMARKS.md, section "Preprocessing").

use std::hint::black_box;
use std::io::Cursor;
use std::time::Instant;

use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};

use hashsrv::preprocess::{DecodeLimits, Preprocess, decode_image};

/// Median time per call, in microseconds, of `f` over `repeats` batches of `iterations` calls.
fn median_micros(iterations: u32, repeats: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations {
        f();
    }
    let mut samples: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[repeats / 2]
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

    // 1. The resize alone, 500x375 -> 341x256 (shorter side 256), both bilinear.
    let ours = median_micros(50, 15, || {
        let src =
            fast_image_resize::images::ImageRef::new(500, 375, photo_rgb.as_raw(), fast_image_resize::PixelType::U8x3)
                .unwrap();
        let mut dst = fast_image_resize::images::Image::new(341, 256, fast_image_resize::PixelType::U8x3);
        let options = fast_image_resize::ResizeOptions::new()
            .resize_alg(fast_image_resize::ResizeAlg::Convolution(fast_image_resize::FilterType::Bilinear));
        fast_image_resize::Resizer::new().resize(&src, &mut dst, &options).unwrap();
        black_box(dst);
    });
    let peer = median_micros(20, 15, || {
        black_box(image::imageops::resize(&photo_rgb, 341, 256, image::imageops::FilterType::Triangle));
    });
    lines.push(row("resize 500x375 -> 341x256 (bilinear)", ours, peer));

    // 2. The whole evaluation transform on a decoded photo (resize, centre crop 224, normalise).
    let ours = median_micros(50, 15, || {
        imagenet.eval_into(black_box(&photo_image), &mut out).unwrap();
    });
    let peer = median_micros(20, 15, || {
        reference_eval(&imagenet, black_box(&photo_rgb), &mut out);
    });
    lines.push(row("eval transform 500x375 -> 3x224x224 (imagenet)", ours, peer));

    // 3. Decode + evaluation transform, the server's per-upload work before the model.
    let limits = DecodeLimits::default();
    let ours = median_micros(20, 15, || {
        let image = decode_image(black_box(&jpeg), &limits).unwrap();
        imagenet.eval_into(&image, &mut out).unwrap();
    });
    let peer = median_micros(20, 15, || {
        let image = image::load_from_memory(black_box(&jpeg)).unwrap().to_rgb8();
        reference_eval(&imagenet, &image, &mut out);
    });
    lines.push(row("JPEG decode + eval transform (500x375)", ours, peer));

    // 4. Fashion-MNIST's small mode: 28x28 grey -> 3x32x32.
    let small = Preprocess::small(32);
    let mut small_out = vec![0f32; small.tensor_len()];
    let grey = GrayImage::from_fn(28, 28, |x, y| Luma([((x * 9 + y * 5) % 256) as u8]));
    let grey_image = DynamicImage::ImageLuma8(grey.clone());
    let ours = median_micros(2000, 15, || {
        small.eval_into(black_box(&grey_image), &mut small_out).unwrap();
    });
    let grey_rgb = DynamicImage::ImageLuma8(grey).to_rgb8();
    let peer = median_micros(2000, 15, || {
        reference_eval(&small, black_box(&grey_rgb), &mut small_out);
    });
    lines.push(row("small mode 28x28 grey -> 3x32x32", ours, peer));

    println!("{}", lines.join("\n"));
    println!();
    println!(
        "({} logical CPUs available; single-threaded measurement; median of 15 repeats; fast_image_resize CPU \
         extensions: {:?})",
        threads,
        fast_image_resize::Resizer::new().cpu_extensions()
    );
}
