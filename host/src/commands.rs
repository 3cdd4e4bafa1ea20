//! The subcommands: parse options into library calls and print what happened.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::Device;
use faceage_device::{AgeGenderModel, CropGeometry, QuantFormat};
use faceage_host::age_map::AgeMap;
use faceage_host::augment::{Augment, Camera};
use faceage_host::bench;
use faceage_host::config::{BnStats, DataSource, Distil, TrainConfig};
use faceage_host::crops::{CropSettings, default_cache_dir};
use faceage_host::distil::TeacherTargets;
use faceage_host::export::from_run::{self, ExportOptions, QuantOptions};
use faceage_host::export::quantize::Calibration;
use faceage_host::export::verify::{self, Bars};
use faceage_host::export::{self, RecordedSplit};
use faceage_host::nn::loss::AgeLoss;
use faceage_host::nn::model::{NetConfig, Pooling};
use faceage_host::nn::optim::AdamWConfig;
use faceage_host::prepare::{self, Prepared};
use faceage_host::run_dir::RunDir;
use faceage_host::train::{self, Outcome};
use faceage_host::trained::{self, Model};
use faceage_host::{compute_device, plots};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum NetSize {
    /// Six plain 3x3 convolutions (32-48-64-96-128-160), 0.41 M parameters, 100 M
    /// multiply-adds at 64x64: the shipped design.
    Standard,
    /// MobileNet-style depthwise-separable blocks, 0.21 M parameters, 20 M multiply-adds at
    /// 96x96: fewer operations, but slower in tract and less accurate (see the model card).
    Separable,
    /// The standard design at twice the channels, 1.6 M parameters, 400 M multiply-adds at
    /// 64x64: a teacher for `--teacher` (too large for the board's 500 KB int8 bar).
    Wide,
    /// A few thousand parameters: tests and smoke runs.
    Tiny,
    /// DESIGN.md's 4-conv 32/64/128/128 net, for speed comparisons.
    Reference,
}

impl NetSize {
    fn config(self, size: u32) -> NetConfig {
        match self {
            NetSize::Standard => NetConfig::standard(size),
            NetSize::Separable => NetConfig::separable(size),
            NetSize::Wide => NetConfig::wide(size),
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

/// Where candle computes: `cpu`, or `cuda` with the `cuda` feature.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArg {
    /// cpu, or cuda with the `cuda` feature.
    #[arg(long = "device", value_name = "DEVICE", default_value = "cpu")]
    name: String,
}

impl DeviceArg {
    fn open(&self) -> Result<Device> {
        compute_device(&self.name)
    }
}

/// A trained run opened for reading: its best weights (with its age map when asked for) and
/// its crops, split as in training.
struct OpenRun {
    device: Device,
    run: RunDir,
    config: TrainConfig,
    model: Model,
    data: Prepared,
}

/// How a run's kept model is read.
#[derive(clap::Args)]
pub struct ReadingArgs {
    /// Correct the age reading with the run's age map (age-map.json; see `fit-age-map`): a
    /// lower age MAE per face, but counts per age band drift toward the crowded bands (model
    /// card).
    #[arg(long)]
    age_map: bool,
    /// Re-estimate the batch-norm statistics on plain training crops first, as `train
    /// --bn-stats precise` (the default) does before every validation; for runs trained
    /// before that, whose kept statistics are training's momentum average.
    #[arg(long)]
    recalibrate_bn: bool,
}

fn open_run(
    run: &std::path::Path,
    device: &DeviceArg,
    reading: &ReadingArgs,
    data_args: &DataArgs,
) -> Result<OpenRun> {
    let device = device.open()?;
    let run = RunDir(run.to_path_buf());
    let (config, mut model) = Model::load_best(&run, &device)?;
    if reading.age_map {
        model.use_age_map(&run)?;
    }
    let data = prepare::prepare(&config, &data_args.detector, &data_args.cache_dir, threads())?;
    if reading.recalibrate_bn {
        let images =
            model.recalibrate_batch_norm(&prepare::bn_stats_crops(&data.train, config.seed), &device)?;
        eprintln!("batch-norm statistics re-estimated on {images} training images (crops and mirror images)");
    }
    Ok(OpenRun { device, run, config, model, data })
}

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// UTKFace folder (labels in file names) or CSV manifest `path,age,gender[,race]` (age in
    /// years or a group such as 20-29 or 70+). Repeat it to train on several data sets, each
    /// with its own labels and split; `PATH:W` reads that set's training faces W times an
    /// epoch (0.5: a fresh half of them each epoch) [default weight: 1].
    #[arg(long, required = true, value_name = "PATH[:WEIGHT]")]
    data: Vec<DataSource>,
    /// Run folder: checkpoints, metrics.jsonl, curves.png, gallery.png.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum, default_value_t = NetSize::Standard)]
    net: NetSize,
    /// Model input side in pixels (divisible by 8 for the standard net, 16 for separable).
    #[arg(long, default_value_t = TrainConfig::default().net.input_size)]
    size: u32,
    /// Epochs (the cosine schedule spans them all; the shipped model's recipe is the default).
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = TrainConfig::default().adamw.weight_decay)]
    weight_decay: f64,
    /// Warm-up length in epochs.
    #[arg(long, default_value_t = TrainConfig::default().warmup_epochs)]
    warmup: f64,
    /// Early stopping: epochs without a better validation score [default: 8]. With --resume,
    /// a new patience lets a run that stopped early go on to the end of its schedule.
    #[arg(long)]
    patience: Option<usize>,
    /// How the last feature map is pooled for the heads.
    #[arg(long, value_enum, default_value_t = Pooling::Average)]
    pooling: Pooling,
    /// Age loss; the default is the shipped model's recipe.
    #[arg(long, value_enum, default_value_t = TrainConfig::default().age_loss)]
    age_loss: AgeLoss,
    /// Where the kept model's batch-norm statistics come from.
    #[arg(long, value_enum, default_value_t = TrainConfig::default().bn_stats)]
    bn_stats: BnStats,
    /// Evaluate, keep and export an exponential moving average of the weights with this decay
    /// per step (e.g. 0.999: about the last 1,000 steps) instead of the last weights.
    #[arg(long)]
    ema: Option<f64>,
    /// Width in years of the LDL target distribution.
    #[arg(long, default_value_t = TrainConfig::default().ldl_sigma)]
    sigma: f32,
    /// Softness in years of an age group's edges (a manifest's `20-29`): the loss asks for the
    /// age distribution's mass inside the group, its edges logistic ramps of this scale; 0
    /// makes them hard.
    #[arg(long, default_value_t = TrainConfig::default().group_edge, value_name = "YEARS")]
    group_edge: f32,
    /// Strength of augmentation: 1 the default ranges (rotation 12 degrees, zoom 10%,
    /// shift 6%, colour 25%, mirror), 0 none.
    #[arg(long, default_value_t = 1.0)]
    augment: f32,
    /// Strength of the camera degradations within that (small faces upscaled, blur, low light
    /// and noise, colour casts, low-quality JPEG, occlusion): their probabilities times this.
    #[arg(long, default_value_t = 1.0)]
    camera: f32,
    /// Crop side as a multiple of the detector box.
    #[arg(long, default_value_t = CropGeometry::default().scale)]
    crop_scale: f32,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Use only this many images (a seeded choice): for smoke tests.
    #[arg(long)]
    limit: Option<usize>,
    /// Learn also from this trained run's readings, or a model file's (knowledge
    /// distillation); repeat it for an ensemble of teachers, whose readings are averaged. Each
    /// must have been trained with this run's --seed (a file records it).
    #[arg(long = "teacher", value_name = "RUN|FILE.onnx")]
    teachers: Vec<PathBuf>,
    /// With --teacher: the teachers' share of each target (0 to 1), the labels' the rest.
    #[arg(long, default_value_t = 0.5)]
    distil_weight: f64,
    /// Start from this f32 model file's weights instead of random ones (fine-tuning: pair it
    /// with a lower --lr and fewer --epochs). It must have been trained with this run's --seed
    /// and be a file of this net (--net, --pooling, --size).
    #[arg(long, value_name = "FILE.onnx")]
    init: Option<PathBuf>,
    /// Share of training faces read, at each step, from the same photo placed small on a
    /// 640x480 frame (as `faceage eval --scene` places it) and found there by the board's
    /// detector: the crops a kiosk camera gives. Those crops are made once and cached.
    #[arg(long, default_value_t = 0.0)]
    scene_views: f64,
    /// Even out the age bands in each epoch: faces drawn with weight (their band's share of
    /// the training faces)^-B, with replacement; 0 reads every face once, 1 every band as
    /// often, 0.5 between.
    #[arg(long, default_value_t = 0.0, value_name = "B")]
    band_balance: f64,
    /// Give every race group the same age mix in each epoch: faces drawn with weight (their
    /// band's share of all faces / its share within their race group)^R, with replacement;
    /// 0 as the data is, 1 fully. For a net that may read a group as young because the data
    /// holds few of its older people (UTKFace: 8% of Asian faces are 40-59, 24% of White).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    race_age_balance: f64,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    data_args: DataArgs,
}

/// The run `a` asks for: the shipped recipe with the given settings.
fn config_from_args(a: &TrainArgs) -> TrainConfig {
    let recipe = TrainConfig::default();
    TrainConfig {
        data: a.data.clone(),
        net: NetConfig { pooling: a.pooling, ..a.net.config(a.size) },
        crop: CropSettings::for_model(
            a.size,
            CropGeometry { scale: a.crop_scale, ..CropGeometry::default() },
        ),
        epochs: a.epochs,
        batch_size: a.batch,
        lr: a.lr,
        warmup_epochs: a.warmup,
        adamw: AdamWConfig { weight_decay: a.weight_decay, ..recipe.adamw },
        patience: a.patience.unwrap_or(recipe.patience),
        seed: a.seed,
        augment: Augment { camera: Camera::scaled(a.augment * a.camera), ..Augment::scaled(a.augment) },
        age_loss: a.age_loss,
        ldl_sigma: a.sigma,
        group_edge: a.group_edge,
        limit: a.limit,
        ema_decay: a.ema,
        bn_stats: a.bn_stats,
        distil: (!a.teachers.is_empty())
            .then(|| Distil { teachers: a.teachers.clone(), weight: a.distil_weight }),
        init: a.init.clone(),
        scene_views: a.scene_views,
        band_balance: a.band_balance,
        race_age_balance: a.race_age_balance,
        ..recipe
    }
}

pub fn train(a: TrainArgs) -> Result<()> {
    if let Some(decay) = a.ema {
        ensure!(decay > 0.0 && decay < 1.0, "--ema {decay}: the decay must lie between 0 and 1");
    }
    ensure!(
        (0.0..=1.0).contains(&a.scene_views),
        "--scene-views {}: a share, between 0 and 1",
        a.scene_views
    );
    ensure!(
        (0.0..=1.0).contains(&a.band_balance),
        "--band-balance {}: between 0 (as the data is) and 1 (every age band as often)",
        a.band_balance
    );
    ensure!(
        (0.0..=1.0).contains(&a.race_age_balance),
        "--race-age-balance {}: between 0 (as the data is) and 1 (every race group the same age mix)",
        a.race_age_balance
    );
    ensure!(
        a.group_edge >= 0.0 && a.group_edge.is_finite(),
        "--group-edge {}: a softness in years, 0 or more",
        a.group_edge
    );
    let device = a.device.open()?;
    let config = config_from_args(&a);
    let run = RunDir(a.out.clone());
    let config = if a.resume {
        // The saved configuration wins: a resumed run continues the same experiment.
        let saved = run.read_config()?;
        eprintln!("resuming {} with its saved settings", run.0.display());
        TrainConfig { patience: a.patience.unwrap_or(saved.patience), ..saved }
    } else {
        if run.checkpoint().exists() {
            bail!(
                "{}: a run is already here; pass --resume to continue it or choose another --out",
                run.0.display()
            );
        }
        config
    };
    let mut data = prepare::prepare(&config, &a.data_args.detector, &a.data_args.cache_dir, threads())?;
    prepare::add_scene_views(&mut data, &config, &a.data_args.detector, &a.data_args.cache_dir, threads())?;
    std::fs::create_dir_all(&run.0).with_context(|| format!("{}: cannot create", run.0.display()))?;
    prepare::report_rejected(&data.rejected, Some(&run.rejected()))?;
    if !a.resume {
        let command: Vec<String> = std::env::args().collect();
        std::fs::write(run.file("command.txt"), command.join(" ") + "\n")?;
    }

    let stop = faceage_device::signals::stop_flag()?;
    let teacher = config
        .distil
        .as_ref()
        .map(|d| {
            let (detector, cache_dir) = (&a.data_args.detector, &a.data_args.cache_dir);
            let prepare_teacher = |c: &TrainConfig| prepare::prepare(c, detector, cache_dir, threads());
            TeacherTargets::load_or_compute(
                &run.file("teacher-targets.safetensors"),
                d,
                &config,
                &data.train,
                &prepare_teacher,
                &device,
            )
        })
        .transpose()?;
    let outcome = train::train(&config, &run, &data, &device, a.resume, &stop, teacher.as_ref())?;
    if outcome == Outcome::Interrupted {
        return Ok(());
    }
    let records = run.read_metrics()?;
    plots::write_curves(&records, &run.file("curves.png"))?;

    report_run(&run, &data, &device)
}

/// After training: the age map fitted on validation, the kept model's validation figures and
/// its gallery. The test split is left to `export`, `verify` and `faceage eval --split test`:
/// a figure printed after every run would be read for every choice, and stop being a test.
fn report_run(run: &RunDir, data: &Prepared, device: &Device) -> Result<()> {
    let (_, model) = Model::load_best(run, device)?;
    let (_, before, after) = trained::fit_age_map(run, &model, &data.val, device)?;
    eprintln!(
        "age map fitted on {} validation faces (mirrored reading; MAE there {before:.2} -> {after:.2}) into {}: applied only by `eval --age-map` and `export --age-map`",
        data.val.len(),
        run.file(AgeMap::FILE).display()
    );
    let predictions = model.predict(&data.val, device)?;
    let evaluation = faceage_host::metrics::evaluate(&data.val.samples, &predictions);
    plots::write_gallery(&data.val, &predictions, 24, &run.file("gallery.png"))?;
    std::fs::write(run.file("val-eval.json"), serde_json::to_string_pretty(&evaluation)?)?;
    std::fs::write(run.file("val-eval.md"), evaluation.markdown())?;
    println!("Validation split (the kept epoch was chosen on it):\n{}", evaluation.markdown());
    println!(
        "run {}: curves.png, gallery.png, val-eval.md; export with `faceage-host export --run {}`",
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
    /// Read each face and its mirror image and average them, as exported files do.
    #[arg(long)]
    mirror: bool,
    #[command(flatten)]
    reading: ReadingArgs,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    data_args: DataArgs,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let OpenRun { device, model, data, .. } = open_run(&a.run, &a.device, &a.reading, &a.data_args)?;
    prepare::report_rejected(&data.rejected, None)?;
    let set = data.split(a.split);
    let predictions = model.predict_mirrored(set, &device, a.mirror)?;
    let evaluation = faceage_host::metrics::evaluate(&set.samples, &predictions);
    println!("{}", evaluation.markdown());
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&evaluation)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct FitAgeMapArgs {
    /// Run folder written by `train` (its age map is written there as age-map.json).
    #[arg(long, default_value = "runs/default")]
    run: PathBuf,
    /// Fit it on the net with re-estimated batch-norm statistics (see `eval --recalibrate-bn`).
    #[arg(long)]
    recalibrate_bn: bool,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    data_args: DataArgs,
}

/// Fits (again) the age map of a run on its validation split; `train` does it at its end.
pub fn fit_age_map(a: FitAgeMapArgs) -> Result<()> {
    let reading = ReadingArgs { age_map: false, recalibrate_bn: a.recalibrate_bn };
    let OpenRun { device, run, model, data, .. } = open_run(&a.run, &a.device, &reading, &a.data_args)?;
    let (map, before, after) = trained::fit_age_map(&run, &model, &data.val, &device)?;
    println!(
        "{}: age map fitted on {} validation faces, MAE there {before:.2} -> {after:.2} (in-sample; measure with eval on the test split)",
        run.file(AgeMap::FILE).display(),
        data.val.len()
    );
    for (k, v) in map.knots.iter().zip(&map.values) {
        println!("  read {k:>5.1} -> {v:>5.1} years");
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    Int8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantFormatArg {
    /// QuantizeLinear/DequantizeLinear around f32 ops, weights per channel.
    Qdq,
    /// QLinearConv/QLinearMatMul (conv weights per channel): integer kernels.
    Qoperator,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Run folder written by `train`.
    #[arg(long, default_value = "runs/default")]
    run: PathBuf,
    /// The f32 model file to write.
    #[arg(long, default_value = "models/faceage-f32.onnx")]
    out: PathBuf,
    /// Also write a quantized file.
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
    #[arg(long, value_enum, default_value_t = QuantFormatArg::Qdq)]
    quant_format: QuantFormatArg,
    #[arg(long, value_enum, default_value_t = Calibration::Percentile)]
    calibration: Calibration,
    /// Training crops the activation ranges are measured on.
    #[arg(long, default_value_t = 512)]
    calibration_crops: usize,
    /// The quantized file [default: --out with "f32" replaced by "int8" (or "int8-qop")].
    #[arg(long)]
    int8_out: Option<PathBuf>,
    /// Also write the quantized file that `faceage run` reads by default
    /// (models/faceage-run-int8.onnx): each face read once, not also mirrored, since `run`
    /// fuses a person's readings over the frames of their track.
    #[arg(long, requires = "quantize", value_name = "FILE")]
    run_out: Option<PathBuf>,
    /// Largest tolerated difference between tract and candle (years and probability).
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f32,
    /// Read each face once instead of also mirrored (half the classifier cost, a little less
    /// accurate).
    #[arg(long)]
    no_mirror: bool,
    #[command(flatten)]
    reading: ReadingArgs,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    data_args: DataArgs,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let OpenRun { device, run, config, model, data } = open_run(&a.run, &a.device, &a.reading, &a.data_args)?;
    let command = std::fs::read_to_string(run.file("command.txt")).unwrap_or_default().trim().to_string();
    // The file says how it differs from the run's kept model.
    let mut notes = Vec::new();
    if a.reading.recalibrate_bn {
        notes.push("batch-norm statistics re-estimated on training crops: export --recalibrate-bn");
    }
    if model.age_map.is_some() {
        notes.push("age corrected by the run's age-map.json: export --age-map");
    }
    let f32_options = ExportOptions {
        out: a.out.clone(),
        mirror: !a.no_mirror,
        tolerance: a.tolerance,
        train_command: if notes.is_empty() { command } else { format!("{command} ({})", notes.join("; ")) },
    };
    let exported = from_run::export_f32(&model, &config, &data, &device, &f32_options)?;
    println!("{exported}");

    let Some(Quantize::Int8) = a.quantize else { return Ok(()) };
    let format = match a.quant_format {
        QuantFormatArg::Qdq => QuantFormat::Int8Qdq,
        QuantFormatArg::Qoperator => QuantFormat::Int8Qoperator,
    };
    let quant_options = QuantOptions {
        format,
        calibration: a.calibration,
        calibration_crops: a.calibration_crops,
        out: a.int8_out.clone().unwrap_or_else(|| from_run::int8_path(&a.out, format)),
    };
    println!("{}", from_run::export_quantized(&model, &exported, &data, &device, &quant_options)?);

    let Some(run_out) = &a.run_out else { return Ok(()) };
    // The one-reading f32 file is a step on the way: the int8 file is made from it and
    // measured against it.
    let folder = run_out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let scratch = tempfile::tempdir_in(folder)
        .with_context(|| format!("{}: cannot create a scratch folder", folder.display()))?;
    let once_options =
        ExportOptions { out: scratch.path().join("run-f32.onnx"), mirror: false, ..f32_options.clone() };
    let once = from_run::export_f32(&model, &config, &data, &device, &once_options)?;
    let run_options = QuantOptions { out: run_out.clone(), ..quant_options };
    println!(
        "{} (read once: `faceage run`'s file)",
        from_run::export_quantized(&model, &once, &data, &device, &run_options)?
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Model files to measure (ONNX with faceage metadata).
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// Run folder whose data and split to use.
    #[arg(long, conflicts_with = "data")]
    run: Option<PathBuf>,
    /// Without a run folder: the UTKFace folder or CSV manifest to read, cropped as the
    /// reference file's metadata says and split by the seed it records (a fresh checkout can
    /// check the shipped files this way). Repeat it for a file trained on several data sets.
    #[arg(long, value_name = "PATH")]
    data: Vec<DataSource>,
    /// With --data: the split seed [default: the one the reference file records].
    #[arg(long, requires = "data")]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value_t = faceage_host::data::Split::Test)]
    split: faceage_host::data::Split,
    /// The file the others are compared with [default: the first model].
    #[arg(long)]
    reference: Option<PathBuf>,
    #[command(flatten)]
    data_args: DataArgs,
}

#[derive(clap::Args)]
pub struct UpgradeArgs {
    /// The model file to upgrade.
    model: PathBuf,
    /// Where to write the upgraded file [default: over MODEL].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also fit an age map on the validation split of this UTKFace folder or CSV manifest,
    /// cropped as the board crops it and split by the seed the file records, and write it
    /// into the graph.
    #[arg(long)]
    age_map_data: Option<PathBuf>,
    /// With --age-map-data: the split seed [default: the one the file records].
    #[arg(long, requires = "age_map_data")]
    seed: Option<u64>,
    /// With --age-map-data: read only this many images (a quick try; not for a shipped file).
    #[arg(long, requires = "age_map_data")]
    limit: Option<usize>,
    /// Put this temperature on the band shares, on top of the file's own: the value
    /// `faceage eval MODEL --split val` prints ("at T x ...") to bring the count intervals'
    /// coverage to 95%.
    #[arg(long)]
    band_temperature: Option<f32>,
    /// Put these weights on the band shares, after the temperature and on top of the file's
    /// own: six numbers `w0,...,w5` in band order, the values `faceage eval MODEL --split val`
    /// prints beside its temperature ("band weights") to bring each band's mean share to its
    /// frequency. Given once per data set (each fitted on its own validation split), the file
    /// gets their geometric mean, band by band: every data set weighs the same.
    #[arg(long, value_parser = parse_band_weights)]
    band_weights: Vec<[f32; 6]>,
    #[command(flatten)]
    data_args: DataArgs,
}

fn parse_band_weights(text: &str) -> Result<[f32; 6]> {
    faceage_device::model_file::parse_band_weights(text)
}

/// Band by band, the geometric mean of weight sets (each data set's fit): weights act as
/// factors, so their logarithms are averaged. `None` for no set.
fn geometric_mean(sets: &[[f32; 6]]) -> Option<[f32; 6]> {
    if sets.is_empty() {
        return None;
    }
    let n = sets.len() as f64;
    Some(std::array::from_fn(|k| (sets.iter().map(|w| f64::from(w[k]).ln()).sum::<f64>() / n).exp() as f32))
}

pub fn upgrade(a: UpgradeArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.model.clone());
    // Weights alone leave the temperature as it is.
    let calibration = match (a.band_temperature, geometric_mean(&a.band_weights)) {
        (None, None) => None,
        (t, w) => Some((t.unwrap_or(1.0), w)),
    };
    if let Some((factor, weights)) = calibration {
        // Checked before anything is written.
        ensure!(factor.is_finite() && factor > 0.0, "--band-temperature {factor}: give a positive number");
        let has_bands = AgeGenderModel::load(&a.model)?.contract().output_age_bands.is_some();
        if has_bands && a.age_map_data.is_none() {
            return temper(&a.model, &out, factor, weights);
        }
    }
    let val = match &a.age_map_data {
        Some(data) => {
            let contract = AgeGenderModel::load(&a.model)?.contract().clone();
            let seed = a.seed.or(contract.split_seed).with_context(|| {
                format!("{}: its metadata does not record the split seed; give --seed", a.model.display())
            })?;
            let crop = CropSettings::for_model(contract.input_size, contract.crop.clone());
            let sources = [DataSource::new(data)];
            let spec = faceage_host::config::DataSpec { data: &sources, crop: &crop, seed, limit: a.limit };
            let prepared =
                prepare::prepare_data(&spec, &a.data_args.detector, &a.data_args.cache_dir, threads())?;
            prepare::report_rejected(&prepared.rejected, None)?;
            Some(prepared.val)
        }
        None => None,
    };
    let done = export::upgrade::upgrade_file(&a.model, &out, val.as_ref())?;
    if let Some(bands) = &done.bands {
        println!(
            "{}: age_bands output added (summed from {}, {} ages)",
            out.display(),
            bands.distribution,
            bands.bins
        );
    }
    if let Some(fit) = &done.age_map {
        let values: Vec<String> = fit.map.values.iter().map(|v| format!("{v:.1}")).collect();
        println!(
            "{}: age map fitted on {} validation faces (readings {:?} -> {}): validation MAE {:.3} -> {:.3} years",
            out.display(),
            fit.faces,
            fit.map.knots,
            values.join(", "),
            fit.mae_before,
            fit.mae_after
        );
    }
    println!(
        "checked with the device library: gender and band shares as before, ages through the map if any"
    );
    match calibration {
        Some((factor, weights)) => temper(&out, &out, factor, weights),
        None => Ok(()),
    }
}

fn temper(model: &Path, out: &Path, factor: f32, weights: Option<[f32; 6]>) -> Result<()> {
    let done = export::upgrade::temper_file(model, out, factor, weights)?;
    let before = done.before.map_or("none".to_string(), |t| format!("{t:.3}"));
    let text = |w: Option<[f32; 6]>| w.map_or("none".to_string(), |w| w.map(|x| format!("{x:.3}")).join(","));
    println!(
        "{}: band temperature {before} -> {:.3}, band weights {} -> {}; checked with the device library: ages \
         and gender as before, band shares tempered and weighted",
        out.display(),
        done.after,
        text(done.weights_before),
        text(done.weights_after)
    );
    Ok(())
}

/// Runs model files through the device library on a held-out split and compares them.
pub fn verify(a: VerifyArgs) -> Result<()> {
    let reference_path = a.reference.clone().unwrap_or_else(|| a.models[0].clone());
    let mut paths = vec![reference_path.clone()];
    paths.extend(a.models.iter().filter(|p| **p != reference_path).cloned());
    let models = paths.iter().map(|p| AgeGenderModel::load(p)).collect::<Result<Vec<_>>>()?;
    let reference_contract = models[0].contract();
    let recorded = RecordedSplit::parse(&reference_contract.train_data);
    let (crop, data) = if let Some(run) = &a.run {
        let config = RunDir(run.clone()).read_config()?;
        let data = prepare::prepare(&config, &a.data_args.detector, &a.data_args.cache_dir, threads())?;
        (config.crop, data)
    } else {
        ensure!(!a.data.is_empty(), "give the split to measure on: --run RUN or --data FOLDER");
        let data = a.data.as_slice();
        let seed = match (a.seed, reference_contract.split_seed) {
            (Some(seed), _) => seed,
            (None, Some(recorded)) => recorded,
            (None, None) => bail!(
                "{}: its metadata does not record the split seed (faceage.train.split_seed); give --seed",
                reference_path.display()
            ),
        };
        let crop = CropSettings::for_model(reference_contract.input_size, reference_contract.crop.clone());
        let spec = faceage_host::config::DataSpec { data, crop: &crop, seed, limit: None };
        let prepared =
            prepare::prepare_data(&spec, &a.data_args.detector, &a.data_args.cache_dir, threads())?;
        prepare::report_rejected(&prepared.rejected, None)?;
        (crop, prepared)
    };
    // A file that reads other crops than the split's would be measured on faces it was not
    // made for: refuse it rather than print figures that mean nothing.
    for (path, model) in paths.iter().zip(&models) {
        let contract = model.contract();
        ensure!(
            contract.input_size == crop.input_size && contract.crop == crop.geometry,
            "{}: reads {} px crops of geometry {:?}, but the split is cropped for {} px at {:?}; measure it on its own",
            path.display(),
            contract.input_size,
            contract.crop,
            crop.input_size,
            crop.geometry
        );
    }
    let set = data.split(a.split);
    match recorded.map(|r| r.faces(a.split)) {
        Some(n) if n != set.len() => println!(
            "note: this {:?} split holds {} faces, the reference file was measured on {n}: other data, or a run with --limit\n",
            a.split,
            set.len()
        ),
        _ => println!("{:?} split: {} faces\n", a.split, set.len()),
    }
    let bars = Bars::default();
    let files: Vec<(PathBuf, AgeGenderModel)> = paths.into_iter().zip(models).collect();
    let figures = verify::measure_files(&files, set, &bars)?;
    for file in &figures {
        println!("## {} ({} bytes, {})\n", file.path.display(), file.bytes, file.quantization);
        println!("{}", file.evaluation.markdown());
        if let Some(c) = &file.against_reference {
            println!(
                "against {}: MAE {:+.3} years, accuracy {:+.2} points, max |age diff| {:.2}, max |p diff| {:.3}; \
                 int8 bars ({bars}): {}\n",
                reference_path.display(),
                c.mae_change,
                c.accuracy_change,
                c.agreement.max_age_diff,
                c.agreement.max_female_diff,
                if c.bars_met { "met" } else { "NOT met" }
            );
        }
    }
    if figures.iter().any(|f| f.against_reference.as_ref().is_some_and(|c| !c.bars_met)) {
        bail!("a model is outside the int8 bars against {}", reference_path.display());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    #[arg(long, value_enum, default_value_t = NetSize::Standard)]
    net: NetSize,
    /// Input side (DESIGN.md's PyTorch comparison: `--net reference`).
    #[arg(long, default_value_t = 64)]
    size: u32,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[command(flatten)]
    device: DeviceArg,
}

pub fn bench_train(a: BenchTrainArgs) -> Result<()> {
    let device = a.device.open()?;
    let net = a.net.config(a.size);
    let bench = bench::bench_steps(net.clone(), a.batch, a.steps, &device)?;
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
        a.device.name,
        median,
        bench.step_seconds.iter().copied().fold(f64::INFINITY, f64::min),
        bench.step_seconds.iter().copied().fold(0.0, f64::max),
        images_per_second,
        gflops
    );
    Ok(())
}
