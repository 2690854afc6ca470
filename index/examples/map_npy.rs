//! mAP@all of hash codes stored as `.npy` (the benchmark of BENCHMARKS.md, "Evaluation (mAP)").
//!
//! `cargo run --release -p hashsrv-index --example map_npy -- db.npy db_labels.npy q.npy q_labels.npy [TIES...]`
//!
//! Codes are one column per bit (float ±1, 0/1 …); TIES are tie-mode names (default
//! `index-order`). Prints one line per mode with the mAP to 15 digits and the seconds spent in
//! the metric alone (files are read first). Threads: `RAYON_NUM_THREADS`.

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use hashsrv_index::metrics::{TieMode, mean_average_precision};
use hashsrv_index::npy::{read_codes, read_labels};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, db_labels, queries, query_labels, ties @ ..] = args.as_slice() else {
        return Err("usage: map_npy db.npy db_labels.npy queries.npy query_labels.npy [tie modes...]".into());
    };
    let db = read_codes(Path::new(db), None)?;
    let db_labels = read_labels(Path::new(db_labels))?;
    let queries = read_codes(Path::new(queries), None)?;
    let query_labels = read_labels(Path::new(query_labels))?;
    let ties: Vec<TieMode> = if ties.is_empty() {
        vec![TieMode::IndexOrder]
    } else {
        ties.iter().map(|t| t.parse()).collect::<Result<_, _>>()?
    };
    println!(
        "database {} x {} bits, queries {}, threads {}",
        db.len(),
        db.bits(),
        queries.len(),
        rayon::current_num_threads()
    );
    for mode in ties {
        let start = Instant::now();
        let result = mean_average_precision(db.matrix(), &db_labels, queries.matrix(), &query_labels, mode)?;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "map {mode} {:.15} queries {} excluded {} seconds {seconds:.4}",
            result.map, result.queries, result.excluded
        );
    }
    Ok(())
}
