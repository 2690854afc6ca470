//! The triplet loss against a plain loop over every triplet, on small tensors.

use hashsrv_train::loss::{HashCentres, Strategy, TripletLoss, default_margin, pairwise_squared_distances};
use tch::{Kind, Tensor};

fn sq(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

/// The seed's definition, one triplet at a time.
fn oracle(features: &[Vec<f32>], labels: &[i64], margin: f64, strategy: Strategy) -> (f64, i64) {
    let n = features.len();
    match strategy {
        Strategy::BatchAll => {
            let (mut sum, mut active) = (0.0, 0);
            for a in 0..n {
                for p in 0..n {
                    for q in 0..n {
                        if a == p || labels[a] != labels[p] || labels[a] == labels[q] {
                            continue;
                        }
                        let l = margin + sq(&features[a], &features[p]) - sq(&features[a], &features[q]);
                        if l > 0.0 {
                            sum += l;
                            active += 1;
                        }
                    }
                }
            }
            (if active > 0 { sum / active as f64 } else { 0.0 }, active)
        }
        Strategy::BatchHard => {
            let (mut sum, mut anchors) = (0.0, 0);
            for a in 0..n {
                let pos = (0..n).filter(|&p| p != a && labels[p] == labels[a]).map(|p| sq(&features[a], &features[p]));
                let neg = (0..n).filter(|&q| labels[q] != labels[a]).map(|q| sq(&features[a], &features[q]));
                let (Some(hp), Some(hn)) = (pos.reduce(f64::max), neg.reduce(f64::min)) else { continue };
                sum += (margin + hp - hn).max(0.0);
                anchors += 1;
            }
            (if anchors > 0 { sum / anchors as f64 } else { 0.0 }, anchors)
        }
    }
}

fn batch(seed: i64, n: i64, bits: i64) -> (Tensor, Vec<Vec<f32>>) {
    tch::manual_seed(seed);
    let t = Tensor::randn([n, bits], (Kind::Float, tch::Device::Cpu)).tanh();
    let rows: Vec<Vec<f32>> = (0..n).map(|i| Vec::<f32>::try_from(t.get(i)).unwrap()).collect();
    (t, rows)
}

#[test]
fn pairwise_distances_match_the_loop() {
    let (t, rows) = batch(1, 7, 5);
    let d = pairwise_squared_distances(&t);
    for i in 0..7 {
        for j in 0..7 {
            let got = d.double_value(&[i as i64, j as i64]);
            assert!((got - sq(&rows[i], &rows[j])).abs() < 1e-5, "({i},{j}): {got}");
        }
        assert_eq!(d.double_value(&[i as i64, i as i64]), 0.0);
    }
}

#[test]
fn both_strategies_match_the_oracle() {
    let labels = [0i64, 1, 0, 2, 1, 1, 0, 2, 3];
    let label_tensor = Tensor::from_slice(&labels);
    for (seed, bits, margin) in [(3, 4, 1.0), (4, 8, 3.0), (5, 16, 8.0), (6, 16, 0.5)] {
        let (t, rows) = batch(seed, labels.len() as i64, bits);
        for strategy in [Strategy::BatchAll, Strategy::BatchHard] {
            let loss = TripletLoss { strategy, margin, quantization: 0.0, centres: None };
            let out = loss.forward(&t, &label_tensor);
            let (expected, active) = oracle(&rows, &labels, margin, strategy);
            let got = out.total.double_value(&[]);
            assert!((got - expected).abs() < 1e-4 * expected.max(1.0), "{strategy} seed {seed}: {got} vs {expected}");
            if strategy == Strategy::BatchAll {
                assert_eq!(out.active, active, "{strategy} seed {seed}");
                // Valid triplets: sum over anchors of (positives) x (negatives).
                let valid: i64 = labels
                    .iter()
                    .map(|&l| {
                        let same = labels.iter().filter(|&&m| m == l).count() as i64;
                        (same - 1) * (labels.len() as i64 - same)
                    })
                    .sum();
                assert_eq!(out.valid, valid);
            } else {
                assert_eq!(out.valid, active, "anchors with a positive and a negative (label 3 has none)");
                assert_eq!(out.valid, 8);
            }
        }
    }
}

#[test]
fn satisfied_batch_has_zero_loss_and_zero_gradient() {
    // Two well separated classes: every triplet satisfied with margin 1.
    let mut t =
        Tensor::from_slice(&[1.0f32, 1.0, 0.9, 1.0, -1.0, -1.0, -1.0, -0.9]).view([4, 2]).set_requires_grad(true);
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
    for strategy in [Strategy::BatchAll, Strategy::BatchHard] {
        let out = TripletLoss { strategy, margin: 1.0, quantization: 0.0, centres: None }.forward(&t, &labels);
        assert_eq!(out.total.double_value(&[]), 0.0);
        assert_eq!(out.active, 0);
        t.zero_grad();
        out.total.backward();
        assert_eq!(t.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}

#[test]
fn gradient_flows_and_is_finite() {
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2, 0, 1]);
    tch::manual_seed(11);
    let mut w = Tensor::randn([8, 16], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    for strategy in [Strategy::BatchAll, Strategy::BatchHard] {
        let out = TripletLoss { strategy, margin: default_margin(16), quantization: 0.1, centres: None }
            .forward(&w.tanh(), &labels);
        w.zero_grad();
        out.total.backward();
        let grad = w.grad();
        assert!(bool::try_from(grad.isfinite().all()).unwrap(), "{strategy}");
        assert!(grad.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{strategy}: no gradient");
        // A plain gradient step on the loss lowers it.
        let before = out.total.double_value(&[]);
        let stepped = tch::no_grad(|| &w - grad * 0.01);
        let after = TripletLoss { strategy, margin: default_margin(16), quantization: 0.1, centres: None }
            .forward(&stepped.tanh(), &labels)
            .total
            .double_value(&[]);
        assert!(after < before, "{strategy}: {after} >= {before}");
    }
}

#[test]
fn quantization_regulariser_is_weighted_mean_of_squared_gap() {
    let t = Tensor::from_slice(&[0.5f32, -1.0, 0.0, 1.0]).view([2, 2]);
    let labels = Tensor::from_slice(&[0i64, 0]); // no negatives: the triplet part is 0
    let out = TripletLoss { strategy: Strategy::BatchAll, margin: 8.0, quantization: 2.0, centres: None }
        .forward(&t, &labels);
    let expected = (0.25 + 0.0 + 1.0 + 0.0) / 4.0;
    assert!((out.quantization.double_value(&[]) - expected).abs() < 1e-6);
    assert!((out.total.double_value(&[]) - 2.0 * expected).abs() < 1e-6);
    assert_eq!(out.valid, 0);
}

#[test]
fn default_margin_follows_the_seed() {
    assert_eq!(default_margin(16), 8.0);
    assert_eq!(default_margin(64), 20.0);
    assert_eq!("batch-hard".parse::<Strategy>().unwrap(), Strategy::BatchHard);
    assert_eq!("batch_all".parse::<Strategy>().unwrap(), Strategy::BatchAll);
    assert!("semi-hard".parse::<Strategy>().is_err());
}

fn hamming(a: &[f32], b: &[f32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    (0..t.size()[0]).map(|i| Vec::<f32>::try_from(t.get(i)).unwrap()).collect()
}

#[test]
fn hadamard_centres_are_half_the_bits_or_all_bits_apart() {
    for (classes, bits) in [(10usize, 16u32), (10, 64), (32, 16), (200, 128)] {
        let centres = rows(HashCentres::new(classes, bits, 0).codes());
        assert_eq!(centres.len(), classes);
        for (i, a) in centres.iter().enumerate() {
            assert!(a.iter().all(|&x| x == 1.0 || x == -1.0));
            for b in &centres[i + 1..] {
                let d = hamming(a, b);
                assert!(d == bits as usize / 2 || d == bits as usize, "{classes} classes at {bits} bits: {d}");
            }
        }
    }
}

#[test]
fn centres_that_do_not_fit_hadamard_are_seeded_coins() {
    // 200 classes at 16 bits: more than 2 x 16 rows, so random; the same seed gives the same codes.
    let a = rows(HashCentres::new(200, 16, 7).codes());
    assert_eq!(a, rows(HashCentres::new(200, 16, 7).codes()));
    assert_ne!(a, rows(HashCentres::new(200, 16, 8).codes()));
    let ones = a.iter().flatten().filter(|&&x| x == 1.0).count() as f64 / (200.0 * 16.0);
    assert!((ones - 0.5).abs() < 0.05, "{ones}");
    // 48 bits is not a power of two.
    assert_eq!(HashCentres::new(10, 48, 0).codes().size(), [10, 48]);
}

#[test]
fn centre_term_is_the_bit_summed_cross_entropy_to_the_class_centre() {
    let centres = HashCentres::new(2, 4, 0);
    let c = rows(centres.codes());
    let features = [0.5f32, -0.2, 0.9, 0.0, -0.7, 0.3, 0.1, -0.99];
    let labels = [1i64, 0];
    let t = Tensor::from_slice(&features).view([2, 4]);
    let got = centres.loss(&t, &Tensor::from_slice(&labels)).double_value(&[]);
    let mut want = 0.0;
    for (row, &label) in labels.iter().enumerate() {
        for bit in 0..4 {
            let p = f64::from((features[row * 4 + bit] + 1.0) / 2.0);
            let target = f64::from((c[label as usize][bit] + 1.0) / 2.0);
            want -= target * p.ln() + (1.0 - target) * (1.0 - p).ln();
        }
    }
    want /= 2.0;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");

    // In the loss: added with its weight, and smallest when every output sits on its centre.
    let on_centres = centres.codes().index_select(0, &Tensor::from_slice(&labels)) * 0.999;
    let loss = |x: &Tensor| {
        TripletLoss {
            strategy: Strategy::BatchAll,
            margin: 1.0,
            quantization: 0.0,
            centres: Some((HashCentres::new(2, 4, 0), 3.0)),
        }
        .forward(x, &Tensor::from_slice(&labels))
    };
    let out = loss(&t);
    assert!((out.centre.double_value(&[]) - want).abs() < 1e-5);
    assert!((out.total.double_value(&[]) - out.triplet.double_value(&[]) - 3.0 * want).abs() < 1e-4);
    assert!(loss(&on_centres).centre.double_value(&[]) < 0.01);
}
