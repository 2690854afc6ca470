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

use std::fmt;
use std::str::FromStr;

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
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TripletLoss {
    pub strategy: Strategy,
    pub margin: f64,
    /// Weight of the quantization regulariser; 0 disables it.
    pub quantization: f64,
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
        let total = if self.quantization > 0.0 {
            &triplet + &quantization * self.quantization
        } else {
            triplet.shallow_clone()
        };
        LossOutput { total, triplet, quantization, active, valid }
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
