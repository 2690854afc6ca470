//! The triplet ranking loss over the triplets of one batch, and the optional quantization
//! regulariser.
//!
//! For relaxed codes `F` (the tanh outputs) and a triplet of an anchor `a`, a positive `p` (same
//! label, `p != a`) and a negative `n` (another label), the loss is
//! `max(0, margin + |F(a)-F(p)|^2 - |F(a)-F(n)|^2)`. Two ways of picking triplets in a batch:
//!
//! - [`Strategy::BatchAll`] (the seed's choice): every valid `(a, p, n)`. The loss is the mean
//!   over the triplets whose loss is *positive*, not over all triplets: once most triplets are
//!   satisfied, averaging the zeros in would shrink the gradient of the few that still matter
//!   (Hermans et al., "In Defense of the Triplet Loss", 2017). A batch with no violated triplet
//!   has loss 0.
//! - [`Strategy::BatchHard`]: for each anchor, its farthest positive and closest negative; mean
//!   over the anchors that have both.
//!
//! The quantization regulariser `lambda * mean((|F| - 1)^2)` pulls the outputs towards ±1 so
//! that taking signs loses little.
//!
//! The optional hash-centre term (Yuan et al., "Central Similarity Quantization", CVPR 2020)
//! gives every class a fixed ±1 target code, far from the others ([`HashCentres`]), and adds
//! `weight * mean over the batch of sum over bits of BCE((F+1)/2, (c+1)/2)`. Triplets only order
//! items relative to one another; the centres give the classes a global layout, so a short run
//! already puts a whole class at a small Hamming distance from its centre, which is what mAP
//! over the whole database rewards.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How triplets are chosen within a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    BatchAll,
    BatchHard,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::BatchAll => "batch-all",
            Strategy::BatchHard => "batch-hard",
        })
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "batch-all" | "all" => Ok(Strategy::BatchAll),
            "batch-hard" | "hard" => Ok(Strategy::BatchHard),
            _ => Err(format!("unknown triplet strategy {s:?}: expected batch-all or batch-hard")),
        }
    }
}

/// The loss configuration.
#[derive(Debug)]
pub struct TripletLoss {
    pub strategy: Strategy,
    pub margin: f64,
    /// Weight of the quantization regulariser; 0 disables it.
    pub quantization: f64,
    /// The hash-centre term and its weight; `None` trains on triplets alone (the seed's loss).
    pub centres: Option<(HashCentres, f64)>,
}

/// One fixed ±1 target code per class.
///
/// When the classes fit, the centres are rows of the Sylvester Hadamard matrix `H` of size
/// `bits` and then of `-H` (`bits` a power of two, at most `2 x bits` classes): any two are
/// `bits / 2` or `bits` apart in Hamming distance, the farthest a set of that size can be from
/// each other on average. Otherwise (e.g. 200 classes at 16 bits) each bit of each centre is a
/// seeded fair coin, as CSQ does.
#[derive(Debug)]
pub struct HashCentres {
    /// [classes, bits], ±1 floats.
    codes: Tensor,
}

impl HashCentres {
    pub fn new(classes: usize, bits: u32, seed: u64) -> HashCentres {
        let n = bits as usize;
        let rows: Vec<Vec<f32>> = if n.is_power_of_two() && classes <= 2 * n {
            // Sylvester: H[i][j] = (-1)^popcount(i & j).
            let h = |i: usize, j: usize| if (i & j).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 };
            (0..classes).map(|c| (0..n).map(|j| if c < n { h(c, j) } else { -h(c - n, j) }).collect()).collect()
        } else {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..classes).map(|_| (0..n).map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect()).collect()
        };
        let flat: Vec<f32> = rows.concat();
        HashCentres { codes: Tensor::from_slice(&flat).view([classes as i64, n as i64]) }
    }

    /// The centres as ±1 floats, [classes, bits].
    pub fn codes(&self) -> &Tensor {
        &self.codes
    }

    /// `mean over the batch of sum over bits of BCE((F+1)/2, (c_label+1)/2)` for relaxed codes
    /// `features` [B,bits] in (-1,1) and `labels` [B] (int64).
    pub fn loss(&self, features: &Tensor, labels: &Tensor) -> Tensor {
        let targets = (self.codes.to_device(features.device()).index_select(0, labels) + 1.0) / 2.0;
        // Clamped so that saturated outputs give a large, finite loss rather than log(0).
        let p = ((features + 1.0) / 2.0).clamp(1e-6, 1.0 - 1e-6);
        let (not_p, not_targets): (Tensor, Tensor) = (1.0 - &p, 1.0 - &targets);
        let bce: Tensor = -(&targets * p.log() + not_targets * not_p.log());
        bce.sum_dim_intlist([-1i64].as_slice(), false, Kind::Float).mean(Kind::Float)
    }
}

/// The loss of one batch: the tensor to back-propagate and what to report.
#[derive(Debug)]
pub struct LossOutput {
    /// Triplet loss plus the weighted regulariser (a scalar with gradient).
    pub total: Tensor,
    /// The triplet part (scalar).
    pub triplet: Tensor,
    /// The unweighted regulariser `mean((|F| - 1)^2)` (scalar, always computed for reporting).
    pub quantization: Tensor,
    /// The unweighted hash-centre term (scalar; zero without centres).
    pub centre: Tensor,
    /// Triplets (batch-all) or anchors (batch-hard) with a positive loss.
    pub active: i64,
    /// Valid triplets (batch-all) or anchors with a positive and a negative (batch-hard).
    pub valid: i64,
}

/// Default margin for a code length: `bits / 4 + 4` (8 for 16 bits, 20 for 64 bits, 36 for 128).
///
/// Squared distances between ±1 codes are `4 x` the Hamming distance, so the margin asks for
/// roughly `bits / 16 + 1` more differing bits to a negative than to a positive: it grows with
/// the code length like the distances themselves do, and matches the seed's 8 at 16 bits and 20
/// at 64 bits.
pub fn default_margin(bits: u32) -> f64 {
    f64::from(bits) / 4.0 + 4.0
}

/// Squared Euclidean distances between the rows of `features` [B,D] -> [B,B], exactly zero on
/// the diagonal.
///
/// Computed from differences rather than `|x|^2 + |y|^2 - 2xy`: the expansion cancels badly for
/// near-equal rows and gives small negative distances.
pub fn pairwise_squared_distances(features: &Tensor) -> Tensor {
    let diff = features.unsqueeze(1) - features.unsqueeze(0);
    diff.square().sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
}

impl TripletLoss {
    /// The loss of a batch of relaxed codes `features` [B,bits] with `labels` [B] (int64, on the
    /// same device).
    pub fn forward(&self, features: &Tensor, labels: &Tensor) -> LossOutput {
        let distances = pairwise_squared_distances(features);
        let n = features.size()[0];
        let same = labels.unsqueeze(1).eq_tensor(&labels.unsqueeze(0));
        let not_self = Tensor::eye(n, (Kind::Bool, features.device())).logical_not();
        let positive = same.logical_and(&not_self);
        let negative = same.logical_not();
        let (triplet, active, valid) = match self.strategy {
            Strategy::BatchAll => self.batch_all(&distances, &positive, &negative),
            Strategy::BatchHard => self.batch_hard(&distances, &positive, &negative),
        };
        let quantization = (features.abs() - 1.0).square().mean(Kind::Float);
        let centre = match &self.centres {
            Some((centres, _)) => centres.loss(features, labels),
            None => Tensor::zeros([], (Kind::Float, features.device())),
        };
        let centre_weight = self.centres.as_ref().map_or(0.0, |(_, weight)| *weight);
        // Out-of-place sums: `triplet` is reported on its own and must not be changed in place.
        let total = &triplet + &quantization * self.quantization + &centre * centre_weight;
        LossOutput { total, triplet, quantization, centre, active, valid }
    }

    fn batch_all(&self, distances: &Tensor, positive: &Tensor, negative: &Tensor) -> (Tensor, i64, i64) {
        // [a, p, n]: margin + d(a,p) - d(a,n), kept where p is a positive and n a negative of a.
        let raw = distances.unsqueeze(2) - distances.unsqueeze(1) + self.margin;
        let mask = positive.unsqueeze(2).logical_and(&negative.unsqueeze(1));
        let losses = raw.relu() * mask.to_kind(Kind::Float);
        let active_mask = losses.gt(0.0);
        let active = active_mask.sum(Kind::Int64).int64_value(&[]);
        let valid = mask.sum(Kind::Int64).int64_value(&[]);
        // Dividing by max(active, 1) keeps the graph (and a zero gradient) when nothing is violated.
        let loss = losses.sum(Kind::Float) / (active.max(1) as f64);
        (loss, active, valid)
    }

    fn batch_hard(&self, distances: &Tensor, positive: &Tensor, negative: &Tensor) -> (Tensor, i64, i64) {
        let positive_f = positive.to_kind(Kind::Float);
        // Farthest positive: distances are >= 0, so zeroing the non-positives does not change the max.
        let hardest_positive = (distances * &positive_f).amax([1i64].as_slice(), false);
        // Closest negative: push the non-negatives out of the min with a large offset.
        let big = distances.max().detach() + 1.0;
        let not_negative = negative.logical_not().to_kind(Kind::Float);
        let hardest_negative = (distances + not_negative * big).amin([1i64].as_slice(), false);
        let has_both = positive.any_dim(1, false).logical_and(&negative.any_dim(1, false)).to_kind(Kind::Float);
        let losses = (hardest_positive - hardest_negative + self.margin).relu() * &has_both;
        let valid = has_both.sum(Kind::Int64).int64_value(&[]);
        let active = losses.gt(0.0).sum(Kind::Int64).int64_value(&[]);
        let loss = losses.sum(Kind::Float) / (valid.max(1) as f64);
        (loss, active, valid)
    }
}
