//! The subcommands: parse options into library calls and print what happened.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use faceage_device::{CropGeometry, ModelContract, QuantFormat};
use faceage_host::augment::{Augment, MEAN, STD};
use faceage_host::crops::{CropSettings, default_cache_dir};
use faceage_host::export::{self, FoldedNet, PlainF32};
use faceage_host::nn::loss::AgeLoss;
use faceage_host::nn::model::NetConfig;
use faceage_host::nn::optim::AdamWConfig;
use faceage_host::train::{self, Model, Outcome, RunDir, TrainConfig};
use faceage_host::{UTKFACE_LICENSE, compute_device, plots};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum NetSize {
    /// ~0.4 M parameters: the shipped design.
    Standard,
    /// A few thousand parameters: tests and smoke runs.
    Tiny,
    /// DESIGN.md's 4-conv 32/64/128/128 net, for speed comparisons.
    Reference,
}

impl NetSize {
    fn config(self, size: u32) -> NetConfig {
        match self {
            NetSize::Standard => NetConfig::standard(size),
            NetSize::Tiny => NetConfig::tiny(size),
            NetSize::Reference => NetConfig::reference(size),
        }
    }
}

/// Where the detector and the crop cache live.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// BlazeFace detector used to build training crops.
    #[arg(long, default_value = "models/face_detection_back_256x256_barracuda.onnx")]
    detector: PathBuf,
    /// Folder for cached crops (built once per dataset and crop geometry).
    #[arg(long, default_value_os_t = default_cache_dir())]
    cache_dir: PathBuf,
}

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// UTKFace folder (labels in file names) or CSV manifest `path,age,gender[,race]`.
    #[arg(long)]
    data: PathBuf,
    /// Run folder: checkpoints, metrics.jsonl, curves.png, gallery.png.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum, default_value_t = NetSize::Standard)]
    net: NetSize,
    /// Model input side in pixels (divisible by 16 for the standard net).
    #[arg(long, default_value_t = 64)]
    size: u32,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Warm-up length in epochs.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Early stopping: epochs without a better validation score.
    #[arg(long, default_value_t = 8)]
    patience: usize,
    #[arg(long, value_enum, default_value_t = AgeLoss::Ldl)]
    age_loss: AgeLoss,
    /// Width in years of the LDL target distribution.
    #[arg(long, default_value_t = 2.0)]
    sigma: f32,
    /// Train without augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Crop side as a multiple of the detector box.
    #[arg(long, default_value_t = CropGeometry::default().scale)]
    crop_scale: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use only this many images (a seeded choice): for smoke tests.
    #[arg(long)]
    limit: Option<usize>,
    /// cpu, or cuda with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    data_args: DataArgs,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let device = compute_device(&a.device)?;
    let config = TrainConfig {
        data: a.data.clone(),
        net: NetConfig { age_head: NetConfig::standard(a.size).age_head, ..a.net.config(a.size) },
        crop: CropSettings {
            input_size: a.size,
            margin: 1.25,
            geometry: CropGeometry { scale: a.crop_scale, ..CropGeometry::default() },
            chip_padding: 0.5,
        },
        epochs: a.epochs,
        batch_size: a.batch,
        lr: a.lr,
        lr_floor: 0.01,
        warmup_epochs: a.warmup,
        adamw: AdamWConfig { weight_decay: a.weight_decay, ..AdamWConfig::default() },
        patience: a.patience,
        seed: a.seed,
        augment: if a.no_augment { Augment::none() } else { Augment::default() },
        age_loss: a.age_loss,
        ldl_sigma: a.sigma,
        limit: a.limit,
    };
    let run = RunDir(a.out.clone());
    let config = if a.resume {
        // The saved configuration wins: a resumed run continues the same experiment.
        let saved = run.read_config()?;
        eprintln!("resuming {} with its saved settings", run.0.display());
        saved
    } else {
        if run.checkpoint().exists() {
            bail!(
                "{}: a run is already here; pass --resume to continue it or choose another --out",
                run.0.display()
            );
        }
        config
    };
    let data = train::prepare(&config, &a.data_args.detector, &a.data_args.cache_dir, threads())?;
    std::fs::create_dir_all(&run.0).with_context(|| format!("{}: cannot create", run.0.display()))?;
    train::report_rejected(&data.rejected, Some(&run.rejected()))?;
    if !a.resume {
        let command: Vec<String> = std::env::args().collect();
        std::fs::write(run.file("command.txt"), command.join(" ") + "\n")?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second Ctrl-C ends the process at once; the first asks for a clean stop.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let outcome = train::train(&config, &run, &data, &device, a.resume, &stop)?;
    if outcome == Outcome::Interrupted {
        return Ok(());
    }
    let records = run.read_metrics()?;
    plots::write_curves(&records, &run.file("curves.png"))?;

    let (_, model) = Model::load_best(&run, &device)?;
    let test = if data.test.is_empty() { &data.val } else { &data.test };
    let predictions = model.predict(test, &device)?;
    let evaluation = faceage_host::metrics::evaluate(&test.samples, &predictions);
    plots::write_gallery(test, &predictions, 24, &run.file("gallery.png"))?;
    std::fs::write(run.file("test-eval.json"), serde_json::to_string_pretty(&evaluation)?)?;
    std::fs::write(run.file("test-eval.md"), evaluation.markdown())?;
    println!("{}", evaluation.markdown());
    println!(
        "run {}: curves.png, gallery.png, test-eval.md; export with `faceage-host export --run {}`",
        run.0.display(),
        run.0.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Run folder written by `train`.
    #[arg(long, default_value = "runs/default")]
    run: PathBuf,
    #[arg(long, value_enum, default_value_t = faceage_host::data::Split::Test)]
    split: faceage_host::data::Split,
    /// Also write the evaluation as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    data_args: DataArgs,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let device = compute_device(&a.device)?;
    let run = RunDir(a.run.clone());
    let (config, model) = Model::load_best(&run, &device)?;
    let data = train::prepare(&config, &a.data_args.detector, &a.data_args.cache_dir, threads())?;
    train::report_rejected(&data.rejected, None)?;
    let set = match a.split {
        faceage_host::data::Split::Train => &*data.train,
        faceage_host::data::Split::Val => &data.val,
        faceage_host::data::Split::Test => &data.test,
    };
    let evaluation = model.evaluate(set, &device)?;
    println!("{}", evaluation.markdown());
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&evaluation)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Run folder written by `train`.
    #[arg(long, default_value = "runs/default")]
    run: PathBuf,
    /// The f32 model file to write.
    #[arg(long, default_value = "models/faceage-f32.onnx")]
    out: PathBuf,
    /// Largest tolerated difference between tract and candle (years and probability).
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f32,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    data_args: DataArgs,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let device = compute_device(&a.device)?;
    let run = RunDir(a.run.clone());
    let (config, model) = Model::load_best(&run, &device)?;
    let data = train::prepare(&config, &a.data_args.detector, &a.data_args.cache_dir, threads())?;
    let val = model.evaluate(&data.val, &device)?;
    let test_set = if data.test.is_empty() { &data.val } else { &data.test };
    let test = model.evaluate(test_set, &device)?;
    let command = std::fs::read_to_string(run.file("command.txt")).unwrap_or_default().trim().to_string();
    let contract = ModelContract {
        name: format!("faceage-cnn{}", config.net.input_size),
        input_name: export::INPUT_NAME.into(),
        input_size: config.net.input_size,
        mean: MEAN,
        std: STD,
        crop: config.crop.geometry.clone(),
        detector: "blazeface-back-256".into(),
        output_age: export::OUTPUT_AGE.into(),
        output_female: export::OUTPUT_FEMALE.into(),
        output_age_std: export::FoldedNet::from_net(&model.net)?
            .age_distribution
            .then(|| export::OUTPUT_AGE_STD.into()),
        quant_format: QuantFormat::None,
        quant_details: "f32 weights and activations".into(),
        train_data: format!(
            "{} ({} train / {} val / {} test faces, split seed {})",
            config.data.display(),
            data.train.len(),
            data.val.len(),
            data.test.len(),
            config.seed
        ),
        train_license: UTKFACE_LICENSE.into(),
        train_command: command,
        metrics: [
            ("val.age_mae", val.overall.age_mae),
            ("val.gender_accuracy", val.overall.gender_accuracy),
            ("test.age_mae", test.overall.age_mae),
            ("test.gender_accuracy", test.overall.gender_accuracy),
            ("test.faces", test.overall.count as f64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    let folded = FoldedNet::from_net(&model.net)?;
    let proto = export::build_model(&folded, &contract, &PlainF32)?;
    let bytes = export::write(&proto, &a.out)?;
    let label = a.out.display().to_string();
    let agreement = export::verify_against_candle(&bytes, &label, &model, test_set, &device, a.tolerance)?;
    println!(
        "{}: {} bytes, f32; test MAE {:.2}, gender accuracy {:.2}%; tract vs candle on {} crops: max |age diff| {:.2e}, max |p diff| {:.2e}",
        label,
        bytes.len(),
        test.overall.age_mae,
        test.overall.gender_accuracy,
        agreement.faces,
        agreement.max_age_diff,
        agreement.max_female_diff
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    #[arg(long, value_enum, default_value_t = NetSize::Standard)]
    net: NetSize,
    #[arg(long, default_value_t = 64)]
    size: u32,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn bench_train(a: BenchTrainArgs) -> Result<()> {
    let device = compute_device(&a.device)?;
    let net = a.net.config(a.size);
    let bench = train::bench_steps(net.clone(), a.batch, a.steps, &device)?;
    let median = bench.median();
    let images_per_second = bench.images_per_step as f64 / median;
    // forward + backward = 3 forward passes; 2 flops per multiply-accumulate
    let gflops = 3.0 * 2.0 * bench.macs_per_image as f64 * images_per_second / 1e9;
    println!(
        "bench-train: {:?} net at {}x{}, batch {}, {} threads, {}: median {:.3} s/step (min {:.3}, max {:.3}) = {:.0} images/s, {:.1} GFLOP/s",
        a.net,
        a.size,
        a.size,
        a.batch,
        threads(),
        a.device,
        median,
        bench.step_seconds.iter().copied().fold(f64::INFINITY, f64::min),
        bench.step_seconds.iter().copied().fold(0.0, f64::max),
        images_per_second,
        gflops
    );
    Ok(())
}
