//! The metrics against a plain sort-based oracle written here, and the expected-AP tie mode
//! against exact enumeration of every order of small tie groups.

use hashsrv_index::code::{CodeMatrix, last_word_mask, words_for_bits};
use hashsrv_index::hamming::distance;
use hashsrv_index::metrics::{
    EvalConfig, EvalReport, MapAtK, MetricsError, TieMode, evaluate, mean_average_precision,
    mean_average_precision_at_k,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Codes and labels.
#[derive(Clone, Debug)]
struct Set {
    bits: u32,
    words: Vec<u64>,
    labels: Vec<u32>,
}

impl Set {
    fn matrix(&self) -> CodeMatrix<'_> {
        CodeMatrix::new(self.bits, &self.words)
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn code(&self, i: usize) -> &[u64] {
        let w = words_for_bits(self.bits);
        &self.words[i * w..(i + 1) * w]
    }
}

/// `n` codes around one random centre per class: each of the first `varying` bits is flipped
/// with probability `flip`, the other bits are the centre's. Few varying bits = many ties.
fn clustered(rng: &mut ChaCha8Rng, centres: &[Vec<u64>], n: usize, bits: u32, varying: u32, flip: f64) -> Set {
    let w = words_for_bits(bits);
    let mut words = Vec::with_capacity(n * w);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let label = rng.random_range(0..centres.len() as u32);
        let mut code = centres[label as usize].clone();
        for bit in 0..varying {
            if rng.random_bool(flip) {
                code[(bit / 64) as usize] ^= 1u64 << (63 - bit % 64);
            }
        }
        words.extend(code);
        labels.push(label);
    }
    Set { bits, words, labels }
}

fn centres(rng: &mut ChaCha8Rng, classes: usize, bits: u32) -> Vec<Vec<u64>> {
    let w = words_for_bits(bits);
    (0..classes)
        .map(|_| {
            let mut c: Vec<u64> = (0..w).map(|_| rng.random()).collect();
            c[w - 1] &= last_word_mask(bits);
            c
        })
        .collect()
}

fn pair(seed: u64, bits: u32, classes: usize, n_db: usize, n_q: usize, varying: u32, flip: f64) -> (Set, Set) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = centres(&mut rng, classes, bits);
    let db = clustered(&mut rng, &c, n_db, bits, varying, flip);
    let q = clustered(&mut rng, &c, n_q, bits, varying, flip);
    (db, q)
}

// ---------------------------------------------------------------- the oracle, written plainly

/// Relevance of the database in ranked order: sorted by distance, then by `tie_key`.
fn ranked(db: &Set, q: &Set, qi: usize, tie_key: impl Fn(usize, bool) -> (u32, usize)) -> Vec<bool> {
    let mut order: Vec<(u32, (u32, usize), bool)> = (0..db.len())
        .map(|j| {
            let rel = db.labels[j] == q.labels[qi];
            (distance(q.code(qi), db.code(j)), tie_key(j, rel), rel)
        })
        .collect();
    order.sort();
    order.into_iter().map(|(_, _, rel)| rel).collect()
}

fn by_position(j: usize, _: bool) -> (u32, usize) {
    (0, j)
}
fn relevant_first(j: usize, rel: bool) -> (u32, usize) {
    (u32::from(!rel), j)
}
fn relevant_last(j: usize, rel: bool) -> (u32, usize) {
    (u32::from(rel), j)
}

/// (sum of precision@i over relevant ranks i <= k, relevant found in the top k).
fn precision_sum(rel: &[bool], k: usize) -> (f64, usize) {
    let (mut found, mut sum) = (0usize, 0.0);
    for (i, &r) in rel.iter().enumerate().take(k) {
        if r {
            found += 1;
            sum += found as f64 / (i + 1) as f64;
        }
    }
    (sum, found)
}

fn ap(rel: &[bool]) -> Option<f64> {
    let total = rel.iter().filter(|&&r| r).count();
    (total > 0).then(|| precision_sum(rel, rel.len()).0 / total as f64)
}

/// Mean over queries with a relevant item of `metric(ranked relevance in index order, query)`.
fn oracle_mean(db: &Set, q: &Set, metric: impl Fn(&[bool], usize) -> f64) -> Option<f64> {
    let mut values = Vec::new();
    for qi in 0..q.len() {
        let rel = ranked(db, q, qi, by_position);
        if rel.contains(&true) {
            values.push(metric(&rel, qi));
        }
    }
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn oracle_map(db: &Set, q: &Set, key: fn(usize, bool) -> (u32, usize)) -> Option<f64> {
    let aps: Vec<f64> = (0..q.len()).filter_map(|qi| ap(&ranked(db, q, qi, key))).collect();
    (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64)
}

/// Every permutation of `items` (Heap's algorithm).
fn permutations(items: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
    if k <= 1 {
        out.push(items.clone());
        return;
    }
    for i in 0..k {
        permutations(items, k - 1, out);
        let j = if k.is_multiple_of(2) { i } else { 0 };
        items.swap(j, k - 1);
    }
}

/// Expected AP by exact enumeration: the mean AP over every order of the database that sorts
/// it by distance (each order of each tie group, equally likely).
fn enumerated_expected_map(db: &Set, q: &Set) -> Option<f64> {
    let mut all = Vec::new();
    permutations(&mut (0..db.len()).collect(), db.len(), &mut all);
    let mut aps = Vec::new();
    for qi in 0..q.len() {
        let dist: Vec<u32> = (0..db.len()).map(|j| distance(q.code(qi), db.code(j))).collect();
        let rel: Vec<bool> = (0..db.len()).map(|j| db.labels[j] == q.labels[qi]).collect();
        if !rel.contains(&true) {
            continue;
        }
        let orders: Vec<&Vec<usize>> = all.iter().filter(|p| p.windows(2).all(|w| dist[w[0]] <= dist[w[1]])).collect();
        let sum: f64 = orders.iter().map(|p| ap(&p.iter().map(|&j| rel[j]).collect::<Vec<_>>()).unwrap()).sum();
        aps.push(sum / orders.len() as f64);
    }
    (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64)
}

// ---------------------------------------------------------------- helpers

fn map(db: &Set, q: &Set, ties: TieMode) -> f64 {
    mean_average_precision(db.matrix(), &db.labels, q.matrix(), &q.labels, ties).unwrap().map
}

fn close(a: Option<f64>, b: Option<f64>, what: &str) {
    match (a, b) {
        (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-12, "{what}: {a} vs oracle {b}"),
        (a, b) => assert_eq!(a, b, "{what}"),
    }
}

fn full_config(bits: u32) -> EvalConfig {
    EvalConfig {
        ties: TieMode::ALL.to_vec(),
        map_at_k: vec![1, 5, 17, 1000],
        precision_at_k: vec![1, 3, 10, 1000],
        radius: 2.min(bits),
        pr_curve: true,
    }
}

/// Every number of the report against the oracle.
fn check_report(db: &Set, q: &Set) -> EvalReport {
    let config = full_config(db.bits);
    let report = evaluate(db.matrix(), &db.labels, q.matrix(), &q.labels, &config).unwrap();
    let evaluated = (0..q.len()).filter(|&qi| db.labels.contains(&q.labels[qi])).count();
    assert_eq!(report.evaluated_queries, evaluated);
    assert_eq!(report.excluded_queries, q.len() - evaluated);
    assert_eq!(report.queries, q.len());
    assert_eq!(report.database_size, db.len());

    let expected_map = [
        (TieMode::IndexOrder, oracle_map(db, q, by_position)),
        (TieMode::Optimistic, oracle_map(db, q, relevant_first)),
        (TieMode::Pessimistic, oracle_map(db, q, relevant_last)),
    ];
    for (mode, want) in expected_map {
        let got = report.map.iter().find(|m| m.ties == mode).unwrap().map;
        close(got, want, mode.name());
    }
    let [index, expected, optimistic, pessimistic] = [0, 1, 2, 3].map(|i| report.map[i].map);
    if let (Some(i), Some(e), Some(o), Some(p)) = (index, expected, optimistic, pessimistic) {
        assert!(p <= i + 1e-12 && i <= o + 1e-12, "index-order {i} outside [{p}, {o}]");
        assert!(p <= e + 1e-12 && e <= o + 1e-12, "expected {e} outside [{p}, {o}]");
    }

    for entry in &report.map_at_k {
        let k = entry.k;
        let ir = oracle_mean(db, q, |rel, _| {
            let total = rel.iter().filter(|&&r| r).count();
            precision_sum(rel, k).0 / total.min(k) as f64
        });
        let found = oracle_mean(db, q, |rel, _| match precision_sum(rel, k) {
            (_, 0) => 0.0,
            (sum, found) => sum / found as f64,
        });
        close(entry.ir, ir, &format!("mAP@{k} ir"));
        close(entry.found_in_top_k, found, &format!("mAP@{k} found-in-top-k"));
    }
    for entry in &report.precision_at_k {
        let k = entry.k;
        let want = oracle_mean(db, q, |rel, _| precision_sum(rel, k).1 as f64 / k as f64);
        close(entry.precision, want, &format!("precision@{k}"));
    }

    assert_eq!(report.pr_curve.len(), db.bits as usize + 1);
    assert_eq!(report.radius, report.pr_curve[config.radius as usize]);
    for entry in &report.pr_curve {
        let r = entry.radius;
        let ball = |qi: usize| (0..db.len()).filter(move |&j| distance(q.code(qi), db.code(j)) <= r);
        let relevant = |qi: usize, j: usize| db.labels[j] == q.labels[qi];
        let precision = oracle_mean(db, q, |_, qi| {
            let inside = ball(qi).count();
            if inside == 0 { 0.0 } else { ball(qi).filter(|&j| relevant(qi, j)).count() as f64 / inside as f64 }
        });
        let recall = oracle_mean(db, q, |rel, qi| {
            ball(qi).filter(|&j| relevant(qi, j)).count() as f64 / rel.iter().filter(|&&x| x).count() as f64
        });
        let empty = (0..q.len()).filter(|&qi| db.labels.contains(&q.labels[qi]) && ball(qi).next().is_none()).count();
        close(entry.precision, precision, &format!("precision within {r}"));
        close(entry.recall, recall, &format!("recall within {r}"));
        assert_eq!(entry.empty_ball_queries, empty, "empty balls within {r}");
    }
    report
}

// ---------------------------------------------------------------- tests

#[test]
fn random_codes_match_the_oracle() {
    // 64 bits all varying: nearly no ties; 100 bits: two words per code.
    for (seed, bits) in [(1, 64), (2, 100), (3, 16)] {
        let (db, q) = pair(seed, bits, 5, 300, 40, bits, 0.3);
        let report = check_report(&db, &q);
        assert!(report.map[0].map.unwrap() > 0.2, "clustered codes should retrieve their class");
    }
}

#[test]
fn tie_heavy_codes_match_the_oracle() {
    // Class centres differ only in their first 4 bits and codes vary in 3 bits: few distinct
    // distances, so tie groups are large and mix classes.
    for seed in 10..14 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let c: Vec<Vec<u64>> = (0..4).map(|_| vec![rng.random::<u64>() & 0xf000_0000_0000_0000]).collect();
        let db = clustered(&mut rng, &c, 250, 32, 3, 0.5);
        let q = clustered(&mut rng, &c, 30, 32, 3, 0.5);
        let report = check_report(&db, &q);
        let optimistic = report.map[2].map.unwrap();
        let pessimistic = report.map[3].map.unwrap();
        assert!(optimistic > pessimistic + 1e-3, "tie groups must separate the bounds");
    }
}

#[test]
fn expected_mode_equals_exact_enumeration_of_tie_orders() {
    for seed in 20..30 {
        // 7 items, 2 varying bits, 3 classes: tie groups of several items, mixed relevance.
        let (db, q) = pair(seed, 8, 3, 7, 6, 2, 0.5);
        let got = mean_average_precision(db.matrix(), &db.labels, q.matrix(), &q.labels, TieMode::Expected).unwrap();
        let want = enumerated_expected_map(&db, &q);
        close(Some(got.map).filter(|m| !m.is_nan()), want, &format!("expected mAP, seed {seed}"));
    }
}

#[test]
fn expected_mode_on_one_tie_group_is_exact() {
    // Everything tied, 2 of 3 relevant: orders RRN, RNR, NRR with probabilities 1/3 each.
    let db = Set { bits: 8, words: vec![0; 3], labels: vec![1, 1, 0] };
    let q = Set { bits: 8, words: vec![0xff00_0000_0000_0000], labels: vec![1] };
    let want = ((1.0 + 1.0) / 2.0 + (1.0 + 2.0 / 3.0) / 2.0 + (1.0 / 2.0 + 2.0 / 3.0) / 2.0) / 3.0;
    assert!((map(&db, &q, TieMode::Expected) - want).abs() < 1e-15);
    assert_eq!(map(&db, &q, TieMode::Optimistic), 1.0);
    assert!((map(&db, &q, TieMode::Pessimistic) - (1.0 / 2.0 + 2.0 / 3.0) / 2.0).abs() < 1e-15);
    assert_eq!(map(&db, &q, TieMode::IndexOrder), 1.0);
}

#[test]
fn large_tie_groups_use_the_closed_form_accurately() {
    // Groups of hundreds of items take the harmonic-number closed form; enumeration is out of
    // reach, so check it against the per-position expectation written out term by term.
    let (db, q) = pair(40, 64, 3, 3000, 5, 2, 0.5);
    let got = map(&db, &q, TieMode::Expected);
    let mut aps = Vec::new();
    for qi in 0..q.len() {
        let mut groups = vec![(0u32, 0u32); 65];
        for j in 0..db.len() {
            let g = &mut groups[distance(q.code(qi), db.code(j)) as usize];
            g.0 += 1;
            g.1 += u32::from(db.labels[j] == q.labels[qi]);
        }
        let total: u32 = groups.iter().map(|g| g.1).sum();
        if total == 0 {
            continue;
        }
        let (mut before, mut rel_before, mut sum) = (0.0, 0.0, 0.0);
        for &(n, r) in &groups {
            let (n, r) = (f64::from(n), f64::from(r));
            for p in 1..=n as usize {
                let p = p as f64;
                let others = if n > 1.0 { (p - 1.0) * (r - 1.0) / (n - 1.0) } else { 0.0 };
                sum += r / n * (rel_before + 1.0 + others) / (before + p);
            }
            before += n;
            rel_before += r;
        }
        aps.push(sum / f64::from(total));
    }
    let want = aps.iter().sum::<f64>() / aps.len() as f64;
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn single_item_classes_and_missing_classes() {
    // Labels 0..50 once each in the database; queries use labels 0..100, so half have exactly
    // one relevant item and half have none (excluded).
    let mut rng = ChaCha8Rng::seed_from_u64(50);
    let bits = 16;
    let db = Set {
        bits,
        words: (0..50).map(|_| rng.random::<u64>() & last_word_mask(bits)).collect(),
        labels: (0..50).collect(),
    };
    let q = Set {
        bits,
        words: (0..100).map(|_| rng.random::<u64>() & last_word_mask(bits)).collect(),
        labels: (0..100).collect(),
    };
    let report = check_report(&db, &q);
    assert_eq!(report.excluded_queries, 50);
    assert_eq!(report.evaluated_queries, 50);
    let result = mean_average_precision(db.matrix(), &db.labels, q.matrix(), &q.labels, TieMode::IndexOrder).unwrap();
    assert_eq!((result.queries, result.excluded), (50, 50));
}

#[test]
fn empty_database_excludes_every_query() {
    let db = Set { bits: 64, words: vec![], labels: vec![] };
    let (_, q) = pair(60, 64, 3, 1, 10, 64, 0.2);
    let result = mean_average_precision(db.matrix(), &db.labels, q.matrix(), &q.labels, TieMode::Expected).unwrap();
    assert!(result.map.is_nan());
    assert_eq!((result.queries, result.excluded), (0, 10));
    let report = check_report(&db, &q);
    assert!(report.map.iter().all(|m| m.map.is_none()));
    assert_eq!(report.radius.precision, None);
    // The report survives JSON (no NaN in it).
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<EvalReport>(&json).unwrap(), report);
}

#[test]
fn all_equal_codes_are_one_tie_group() {
    let mut rng = ChaCha8Rng::seed_from_u64(70);
    let labels: Vec<u32> = (0..200).map(|_| rng.random_range(0..4)).collect();
    let db = Set { bits: 64, words: vec![0x0123_4567_89ab_cdef; 200], labels };
    let q = Set { bits: 64, words: vec![0x0123_4567_89ab_cdef; 8], labels: (0..8).collect() };
    let report = check_report(&db, &q);
    assert_eq!(report.map[2].map, Some(1.0), "optimistic: relevant items first");
    // Everything sits at distance 0: the ball of radius 0 is the whole database.
    assert_eq!(report.pr_curve[0].recall, Some(1.0));
    assert_eq!(report.pr_curve[0].empty_ball_queries, 0);
}

#[test]
fn map_at_k_denominators_differ_as_documented() {
    // Query relevant to items ranked 2 and 4 of 4 (distances 0..3, positions in order).
    let db = Set { bits: 8, words: vec![0, 1 << 56, 3 << 56, 7 << 56], labels: vec![0, 1, 0, 1] };
    let q = Set { bits: 8, words: vec![0], labels: vec![1] };
    let at = |k, d| mean_average_precision_at_k(db.matrix(), &db.labels, q.matrix(), &q.labels, k, d).unwrap().map;
    assert_eq!(at(1, MapAtK::Ir), 0.0);
    assert_eq!(at(1, MapAtK::FoundInTopK), 0.0);
    assert_eq!(at(2, MapAtK::Ir), 0.5 / 2.0);
    assert_eq!(at(2, MapAtK::FoundInTopK), 0.5);
    assert_eq!(at(4, MapAtK::Ir), (0.5 + 0.5) / 2.0);
    assert_eq!(at(4, MapAtK::FoundInTopK), (0.5 + 0.5) / 2.0);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (db, q) = pair(80, 64, 10, 2000, 300, 64, 0.2);
    let config = EvalConfig::default();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| evaluate(db.matrix(), &db.labels, q.matrix(), &q.labels, &config).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn mismatched_inputs_are_errors_not_panics() {
    let (db, q) = pair(90, 64, 3, 10, 4, 64, 0.2);
    let (_, q32) = pair(90, 32, 3, 10, 4, 32, 0.2);
    let err = |r: Result<_, MetricsError>| r.unwrap_err();
    assert_eq!(
        err(mean_average_precision(db.matrix(), &db.labels, q32.matrix(), &q32.labels, TieMode::IndexOrder)),
        MetricsError::BitsMismatch { database: 64, queries: 32 }
    );
    assert!(matches!(
        err(mean_average_precision(db.matrix(), &db.labels[1..], q.matrix(), &q.labels, TieMode::IndexOrder)),
        MetricsError::LabelCount { what: "database", codes: 10, labels: 9 }
    ));
    assert!(matches!(
        err(mean_average_precision(db.matrix(), &db.labels, q.matrix(), &q.labels[..3], TieMode::IndexOrder)),
        MetricsError::LabelCount { what: "queries", .. }
    ));
    let padded = Set { bits: 12, words: vec![0, 1], labels: vec![0, 0] };
    assert_eq!(
        err(mean_average_precision(
            padded.matrix(),
            &padded.labels,
            padded.matrix(),
            &padded.labels,
            TieMode::Expected
        )),
        MetricsError::NonZeroPadding { what: "database", index: 1, bits: 12 }
    );
    let zero_k = EvalConfig { map_at_k: vec![0], ..EvalConfig::default() };
    assert!(matches!(
        evaluate(db.matrix(), &db.labels, q.matrix(), &q.labels, &zero_k),
        Err(MetricsError::ZeroK("map_at_k"))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: RngSeed::Fixed(0x6a5f_2026), ..ProptestConfig::default() })]

    #[test]
    fn any_small_instance_matches_the_oracle(
        seed in any::<u64>(),
        bits in prop::sample::select(vec![8u32, 16, 64, 72]),
        classes in 1usize..6,
        n_db in 0usize..60,
        n_q in 1usize..12,
        varying_share in 0.0f64..=1.0,
        flip in 0.0f64..=0.5,
    ) {
        let varying = ((f64::from(bits) * varying_share) as u32).min(bits);
        let (db, q) = pair(seed, bits, classes, n_db, n_q, varying, flip);
        check_report(&db, &q);
    }

    #[test]
    fn expected_mode_matches_enumeration_on_tiny_instances(
        seed in any::<u64>(),
        classes in 1usize..4,
        n_db in 1usize..7,
        varying in 0u32..4,
    ) {
        let (db, q) = pair(seed, 8, classes, n_db, 4, varying, 0.5);
        let got = mean_average_precision(db.matrix(), &db.labels, q.matrix(), &q.labels, TieMode::Expected).unwrap();
        let want = enumerated_expected_map(&db, &q);
        close(Some(got.map).filter(|m| !m.is_nan()), want, "expected mAP");
    }
}
