//! Training-step throughput of the hash network: forward in training mode (fp32, or the trunk in
//! bf16 autocast), batch-all triplet loss and an SGD (momentum 0.9, weight decay 5e-4) or fused
//! AdamW step on one P x K batch (10 x 8) of random 3xSxS images, on the CPU. The step is
//! `hashsrv_train::train::train_step`, the one the training run takes.
//!
//! Two modes:
//! - `train_speed [steps] [threads]`: a table over the recipes (input size x stem).
//! - `train_speed serve <threads> <input_size> <imagenet|small> <sgd|adamw> <fp32|bf16>`: the
//!   worker that `scripts/bench_train.py` drives beside its PyTorch twin. It builds the
//!   network, then reads lines `<steps>` from stdin, runs that many steps and answers
//!   `<wall s> <cpu s> <loss>`, so the driver can alternate the two sides block by block without
//!   process start-up in the timings.
//!
//! Build it in release: the fused AdamW update is this crate's own loop.

use std::io::{BufRead, Write};

use hashsrv_train::loss::{Strategy, TripletLoss, default_margin};
use hashsrv_train::model::{HashNet, HashNetConfig, Stem};
use hashsrv_train::optim::{Optim, Optimizer};
use hashsrv_train::precision::Precision;
use hashsrv_train::train::train_step;
use tch::nn;
use tch::{Device, Kind, Tensor};

const P: i64 = 10;
const K: i64 = 8;
const BITS: u32 = 64;

/// User + system CPU seconds of this process, from /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A network, its optimiser and one fixed batch.
struct Bench {
    _vs: nn::VarStore,
    net: HashNet,
    optimizer: Optim,
    loss: TripletLoss,
    xs: Tensor,
    labels: Tensor,
}

impl Bench {
    fn new(input_size: u32, stem: Stem, optimizer: Optimizer, precision: Precision) -> anyhow::Result<Self> {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut net = HashNet::new(&vs.root(), &HashNetConfig { bits: BITS, stem, input_size })?;
        net.set_training_precision(&vs, precision);
        let optimizer = optimizer.build(&vs, 0.001, 0.9, 5e-4)?;
        let side = i64::from(input_size);
        let xs = Tensor::randn([P * K, 3, side, side], (Kind::Float, Device::Cpu));
        let labels = Tensor::arange(P, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(K, 0, None);
        let loss = TripletLoss {
            strategy: Strategy::BatchAll,
            margin: default_margin(BITS),
            quantization: 0.0,
            centres: None,
        };
        Ok(Self { _vs: vs, net, optimizer, loss, xs, labels })
    }

    /// Runs `steps` steps; returns wall seconds, CPU seconds and the last loss.
    fn run(&mut self, steps: usize) -> (f64, f64, f64) {
        let (wall, cpu) = (std::time::Instant::now(), cpu_seconds());
        let mut last = f64::NAN;
        for _ in 0..steps {
            last = train_step(&self.net, &mut self.optimizer, &self.loss, &self.xs, &self.labels).total;
        }
        (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu, last)
    }
}

fn parse_stem(s: &str) -> anyhow::Result<Stem> {
    match s {
        "imagenet" => Ok(Stem::ImageNet),
        "small" => Ok(Stem::Small),
        _ => anyhow::bail!("unknown stem {s:?}: expected imagenet or small"),
    }
}

fn serve(threads: i32, input_size: u32, stem: Stem, optimizer: Optimizer, precision: Precision) -> anyhow::Result<()> {
    tch::set_num_threads(threads);
    let mut bench = Bench::new(input_size, stem, optimizer, precision)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    for line in std::io::stdin().lock().lines() {
        let steps: usize = line?.trim().parse()?;
        let (wall, cpu, loss) = bench.run(steps);
        writeln!(stdout, "{wall} {cpu} {loss}")?;
        stdout.flush()?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let [threads, input_size, stem, optimizer, precision] = &args[1..] else {
            anyhow::bail!("usage: train_speed serve <threads> <input_size> <imagenet|small> <sgd|adamw> <fp32|bf16>");
        };
        let optimizer = <Optimizer as clap::ValueEnum>::from_str(optimizer, false).map_err(anyhow::Error::msg)?;
        let precision = <Precision as clap::ValueEnum>::from_str(precision, false).map_err(anyhow::Error::msg)?;
        return serve(threads.parse()?, input_size.parse()?, parse_stem(stem)?, optimizer, precision);
    }
    let steps: usize = args.first().map_or(Ok(3), |s| s.parse())?;
    let threads: i32 = args.get(1).map_or(Ok(2), |s| s.parse())?;
    tch::set_num_threads(threads);
    println!("recipe               wall img/s   img/CPU-s   (batch {}, {steps} steps, {threads} threads)", P * K);
    for (input_size, stem) in [(32, Stem::ImageNet), (64, Stem::ImageNet), (28, Stem::Small), (32, Stem::Small)] {
        let mut bench = Bench::new(input_size, stem, Optimizer::Sgd, Precision::Fp32)?;
        bench.run(1); // warm-up: allocations and kernel selection
        let (wall, cpu, _) = bench.run(steps);
        let images = (steps as i64 * P * K) as f64;
        println!("{input_size}px {stem:<10?}     {:>10.1}  {:>10.1}", images / wall, images / cpu.max(1e-9));
    }
    Ok(())
}
