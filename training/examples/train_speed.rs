//! Training-step throughput of the hash network per recipe (input size x stem): forward,
//! batch-all triplet loss and SGD step on a P x K batch of random images, on the CPU.
//!
//! `cargo run -p hashsrv-train --example train_speed -- [steps] [threads]` (the time is spent in
//! libtorch, so the debug build measures the same as a release one).
//!
//! Prints wall-clock images/s and images per CPU-second of this process (the latter is what the
//! machine would give with the cores to itself, when other work shares them).

use hashsrv_train::loss::{Strategy, TripletLoss, default_margin};
use hashsrv_train::model::{HashNet, HashNetConfig, Stem};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// User + system CPU seconds of this process, from /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let threads: i32 = args.next().map_or(Ok(2), |s| s.parse())?;
    tch::set_num_threads(threads);
    let (p, k, bits) = (10i64, 8i64, 64u32);
    let labels = Tensor::arange(p, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(k, 0, None);
    let loss = TripletLoss { strategy: Strategy::BatchAll, margin: default_margin(bits), quantization: 0.0 };
    println!("recipe               wall img/s   img/CPU-s   (batch {}, {steps} steps, {threads} threads)", p * k);
    for (input_size, stem) in [(32, Stem::ImageNet), (64, Stem::ImageNet), (28, Stem::Small), (32, Stem::Small)] {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = HashNet::new(&vs.root(), &HashNetConfig { bits, stem, input_size })?;
        let mut opt = nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 5e-4, nesterov: false }.build(&vs, 0.001)?;
        let side = i64::from(input_size);
        let xs = Tensor::randn([p * k, 3, side, side], (Kind::Float, Device::Cpu));
        let mut step = || opt.backward_step(&loss.forward(&net.forward_t(&xs, true), &labels).total);
        step(); // warm-up: allocations and kernel selection
        let (wall, cpu) = (std::time::Instant::now(), cpu_seconds());
        for _ in 0..steps {
            step();
        }
        let images = (steps as i64 * p * k) as f64;
        let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        println!("{input_size}px {stem:<10?}     {:>10.1}  {:>10.1}", images / wall, images / cpu.max(1e-9));
    }
    Ok(())
}
