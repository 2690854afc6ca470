//! mAP@all of hash codes stored as `.npy` (the benchmark of BENCHMARKS.md, "Evaluation (mAP)").
//!
//! `cargo run --release -p hashsrv-index --example map_npy -- db.npy db_labels.npy q.npy q_labels.npy [TIES...]`
//!
//! Codes are one column per bit (float ±1, 0/1 …); TIES are tie-mode names (default
//! `index-order`). Prints one line per mode with the mAP to 15 digits and the wall-clock and CPU
//! seconds spent in the metric alone (files are read first). CPU time (Linux only, from
//! `/proc/self/stat`, 10 ms ticks) is the fairer figure on a shared machine. Threads:
//! `RAYON_NUM_THREADS`.

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
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        let result = mean_average_precision(db.matrix(), &db_labels, queries.matrix(), &query_labels, mode)?;
        let seconds = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds().zip(cpu_start).map_or(f64::NAN, |(end, start)| end - start);
        println!(
            "map {mode} {:.15} queries {} excluded {} seconds {seconds:.4} cpu_seconds {cpu:.2}",
            result.map, result.queries, result.excluded
        );
    }
    Ok(())
}

/// User + system CPU time of the whole process (every thread), in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ is 100 on Linux
}
