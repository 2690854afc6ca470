//! Any bytes: `CodeIndex::from_bytes`, and on success every accessor, `verify` and each search
//! method must return without panicking, with hits inside the index and the radius.
//! `cd index/fuzz && cargo +nightly fuzz run open_search -- -max_total_time=120`
#![no_main]

use hashsrv_index::{CodeIndex, CodeMatrix, SearchMethod, SearchOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(index) = CodeIndex::from_bytes(data) else { return };
    let _ = index.verify();
    for i in 0..index.len().min(64) {
        let _ = (index.path(i), index.id(i), index.labels()[i]);
    }
    let _ = (index.class_counts(), index.bit_balance());
    let wpc = index.codes().words_per_code();
    let queries: Vec<u64> = (0..2 * wpc as u64).map(|w| w.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    for method in [SearchMethod::Linear, SearchMethod::MultiIndex, SearchMethod::Auto] {
        let opts = SearchOptions { k: 5, radius: Some(7), method };
        let hits = index.search(&queries[..wpc], &opts).hits;
        assert!(hits.iter().all(|h| h.position < index.len() && h.distance <= 7));
        let _ = index.search_batch(CodeMatrix::new(index.bits(), &queries), &opts);
    }
});
