//! Non-learned hashing baselines on raw pixels, so learned figures have a reference computed on
//! the same split and code length: random-projection LSH (Charikar's sign random projections)
//! and ITQ (Gong & Lazebnik, "Iterative Quantization", CVPR 2011) on the PCA of the pixels.
//!
//! Both are linear hashers: bit `i` of the code of `x` is `(x - mean) . p_i > 0`, with the same
//! sign convention as the network's codes ([`HashCode::from_outputs`]).

use hashsrv_index::HashCode;
use nalgebra::{DMatrix, SymmetricEigen};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// Side of the grey thumbnail whose pixels are the baselines' features (Fashion-MNIST's own size).
pub const PIXEL_SIDE: u32 = 28;

/// Which baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineMethod {
    /// Sign of random Gaussian projections of the centred pixels.
    Lsh,
    /// Iterative quantization: PCA to `bits` dimensions, then the rotation that minimises the
    /// quantization loss `|B - VR|^2`.
    Itq,
}

/// Errors from fitting a baseline.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BaselineError {
    #[error("{method:?} needs at least 2 training vectors, got {found}")]
    TooFewVectors { method: BaselineMethod, found: usize },
    #[error("ITQ keeps {bits} principal components, but the features have only {dim} dimensions")]
    TooManyBits { bits: u32, dim: usize },
    #[error("feature matrix of {len} values is not a whole number of {dim}-dimensional rows")]
    RaggedFeatures { len: usize, dim: usize },
    #[error(transparent)]
    Code(#[from] hashsrv_index::CodeError),
}

/// A fitted linear hasher: `bits` projections of `dim`-dimensional centred features.
#[derive(Debug, Clone)]
pub struct LinearHasher {
    method: BaselineMethod,
    dim: usize,
    bits: u32,
    mean: Vec<f32>,
    /// Row-major `bits x dim`: row `i` is the projection of bit `i`.
    projections: Vec<f32>,
}

impl LinearHasher {
    /// Random-projection LSH: projections drawn from N(0, 1) with `seed`, features centred on the
    /// training mean so that the bits are balanced.
    pub fn lsh(train: &[f32], dim: usize, bits: u32, seed: u64) -> Result<Self, BaselineError> {
        hashsrv_index::code::check_bits(bits)?;
        let n = rows(train, dim)?;
        if n < 2 {
            return Err(BaselineError::TooFewVectors { method: BaselineMethod::Lsh, found: n });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let projections = (0..bits as usize * dim).map(|_| StandardNormal.sample(&mut rng)).collect();
        Ok(Self { method: BaselineMethod::Lsh, dim, bits, mean: column_mean(train, dim), projections })
    }

    /// ITQ with `iterations` alternations (50 in the paper), starting from a random rotation
    /// drawn with `seed`.
    pub fn itq(train: &[f32], dim: usize, bits: u32, iterations: usize, seed: u64) -> Result<Self, BaselineError> {
        hashsrv_index::code::check_bits(bits)?;
        let n = rows(train, dim)?;
        if n < 2 {
            return Err(BaselineError::TooFewVectors { method: BaselineMethod::Itq, found: n });
        }
        if bits as usize > dim {
            return Err(BaselineError::TooManyBits { bits, dim });
        }
        let c = bits as usize;
        let mean = column_mean(train, dim);
        let centred = DMatrix::from_fn(n, dim, |r, k| f64::from(train[r * dim + k] - mean[k]));
        // PCA: the top-`bits` eigenvectors of the covariance.
        let covariance = centred.tr_mul(&centred) / n as f64;
        let eigen = SymmetricEigen::new(covariance);
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let pca = DMatrix::from_fn(dim, c, |k, j| eigen.eigenvectors[(k, order[j])]);
        let v = &centred * &pca;
        let mut rotation = random_rotation(c, seed);
        for _ in 0..iterations {
            rotation = itq_step(&v, &rotation);
        }
        let projection = pca * rotation; // dim x bits
        let projections = (0..c).flat_map(|j| (0..dim).map(move |k| (j, k))).map(|(j, k)| projection[(k, j)] as f32);
        Ok(Self { method: BaselineMethod::Itq, dim, bits, mean, projections: projections.collect() })
    }

    /// Which baseline this is.
    pub fn method(&self) -> BaselineMethod {
        self.method
    }

    /// Code length in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The projections of one feature vector (the "network outputs" whose signs are the code).
    pub fn project(&self, features: &[f32]) -> Vec<f32> {
        assert_eq!(features.len(), self.dim, "feature vector of the wrong dimension");
        self.projections
            .chunks_exact(self.dim)
            .map(|p| p.iter().zip(features).zip(&self.mean).map(|((w, x), m)| w * (x - m)).sum())
            .collect()
    }

    /// The code of one feature vector.
    pub fn encode(&self, features: &[f32]) -> HashCode {
        HashCode::from_outputs(&self.project(features)).expect("bits checked when fitted")
    }

    /// The codes of a row-major matrix of feature vectors, in parallel.
    pub fn encode_all(&self, features: &[f32]) -> Result<Vec<HashCode>, BaselineError> {
        rows(features, self.dim)?;
        Ok(features.par_chunks_exact(self.dim).map(|x| self.encode(x)).collect())
    }
}

/// The baselines' features of an image: its grey levels at 28x28, scaled to [0, 1].
pub fn pixel_features(image: &image::DynamicImage) -> Vec<f32> {
    let grey = image.to_luma8();
    let grey = if grey.dimensions() == (PIXEL_SIDE, PIXEL_SIDE) {
        grey
    } else {
        image::imageops::resize(&grey, PIXEL_SIDE, PIXEL_SIDE, image::imageops::FilterType::Triangle)
    };
    grey.as_raw().iter().map(|&p| f32::from(p) / 255.0).collect()
}

/// One ITQ alternation: fix the rotation and take `B = sign(VR)`, then fix `B` and take the
/// orthogonal `R` minimising `|B - VR|^2` (orthogonal Procrustes: `svd(B^T V) = U S W^T`, `R = W U^T`).
fn itq_step(v: &DMatrix<f64>, rotation: &DMatrix<f64>) -> DMatrix<f64> {
    let b = (v * rotation).map(|z| if z > 0.0 { 1.0 } else { -1.0 });
    let svd = b.tr_mul(v).svd(true, true);
    let (u, w_t) = (svd.u.expect("requested U"), svd.v_t.expect("requested V^T"));
    w_t.transpose() * u.transpose()
}

/// The ITQ quantization loss `|sign(VR) - VR|^2`, which every alternation must not raise.
#[cfg(test)]
fn quantization_loss(v: &DMatrix<f64>, rotation: &DMatrix<f64>) -> f64 {
    let projected = v * rotation;
    projected.map(|z| if z > 0.0 { 1.0 - z } else { -1.0 - z }).norm_squared()
}

fn random_rotation(c: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gaussian = DMatrix::from_fn(c, c, |_, _| StandardNormal.sample(&mut rng));
    gaussian.qr().q()
}

fn rows(features: &[f32], dim: usize) -> Result<usize, BaselineError> {
    if dim == 0 || !features.len().is_multiple_of(dim) {
        return Err(BaselineError::RaggedFeatures { len: features.len(), dim });
    }
    Ok(features.len() / dim)
}

fn column_mean(features: &[f32], dim: usize) -> Vec<f32> {
    let n = features.len() / dim;
    let mut sum = vec![0f64; dim];
    for row in features.chunks_exact(dim) {
        for (s, &x) in sum.iter_mut().zip(row) {
            *s += f64::from(x);
        }
    }
    sum.into_iter().map(|s| (s / n as f64) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `classes` Gaussian clusters in `dim` dimensions, `per_class` points each, labels returned.
    fn clusters(classes: usize, per_class: usize, dim: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<f32> = (0..classes * dim).map(|_| StandardNormal.sample(&mut rng)).collect();
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for c in 0..classes {
            for _ in 0..per_class {
                for k in 0..dim {
                    let noise: f32 = StandardNormal.sample(&mut rng);
                    data.push(centres[c * dim + k] + spread * noise);
                }
                labels.push(c);
            }
        }
        (data, labels)
    }

    /// Mean Hamming distance within classes divided by the mean across classes.
    fn within_over_across(codes: &[HashCode], labels: &[usize]) -> f64 {
        let (mut within, mut nw, mut across, mut na) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..codes.len() {
            for j in i + 1..codes.len() {
                let d = u64::from(codes[i].distance(&codes[j]));
                if labels[i] == labels[j] {
                    within += d;
                    nw += 1;
                } else {
                    across += d;
                    na += 1;
                }
            }
        }
        (within as f64 / nw as f64) / (across as f64 / na as f64)
    }

    #[test]
    fn itq_rotation_stays_orthogonal_and_the_loss_never_rises() {
        let (data, _) = clusters(6, 40, 20, 0.5, 7);
        let n = data.len() / 20;
        let mean = column_mean(&data, 20);
        let centred = DMatrix::from_fn(n, 20, |r, k| f64::from(data[r * 20 + k] - mean[k]));
        let v = centred.columns(0, 8).into_owned();
        let mut rotation = random_rotation(8, 3);
        let mut loss = quantization_loss(&v, &rotation);
        for _ in 0..20 {
            rotation = itq_step(&v, &rotation);
            let identity = rotation.transpose() * &rotation;
            assert!((identity - DMatrix::<f64>::identity(8, 8)).norm() < 1e-9);
            let next = quantization_loss(&v, &rotation);
            assert!(next <= loss + 1e-9, "loss rose from {loss} to {next}");
            loss = next;
        }
    }

    #[test]
    fn both_baselines_put_clusters_closer_than_strangers_and_itq_beats_lsh() {
        let (data, labels) = clusters(8, 50, 64, 0.6, 11);
        let lsh = LinearHasher::lsh(&data, 64, 16, 1).unwrap();
        let itq = LinearHasher::itq(&data, 64, 16, 50, 1).unwrap();
        let lsh_ratio = within_over_across(&lsh.encode_all(&data).unwrap(), &labels);
        let itq_ratio = within_over_across(&itq.encode_all(&data).unwrap(), &labels);
        assert!(lsh_ratio < 0.8, "LSH within/across = {lsh_ratio}");
        assert!(itq_ratio < lsh_ratio, "ITQ {itq_ratio} not better than LSH {lsh_ratio}");
    }

    #[test]
    fn codes_follow_the_sign_of_the_projections_and_are_seeded() {
        let (data, _) = clusters(3, 10, 12, 1.0, 5);
        let a = LinearHasher::lsh(&data, 12, 8, 9).unwrap();
        let b = LinearHasher::lsh(&data, 12, 8, 9).unwrap();
        let x = &data[..12];
        assert_eq!(a.encode(x), b.encode(x));
        let outputs = a.project(x);
        let code = a.encode(x);
        for (i, o) in outputs.iter().enumerate() {
            assert_eq!(code.bit(i as u32), *o > 0.0);
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert_eq!(
            LinearHasher::itq(&[0.0; 30], 10, 16, 5, 0).unwrap_err(),
            BaselineError::TooManyBits { bits: 16, dim: 10 }
        );
        assert_eq!(
            LinearHasher::lsh(&[0.0; 7], 3, 8, 0).unwrap_err(),
            BaselineError::RaggedFeatures { len: 7, dim: 3 }
        );
        assert!(matches!(LinearHasher::lsh(&[0.0; 3], 3, 8, 0), Err(BaselineError::TooFewVectors { .. })));
    }

    #[test]
    fn pixel_features_are_28x28_grey_in_unit_range() {
        let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(56, 40, image::Rgb([255, 255, 255])));
        let features = pixel_features(&image);
        assert_eq!(features.len(), 784);
        assert!(features.iter().all(|&x| (x - 1.0).abs() < 1e-6));
    }
}
