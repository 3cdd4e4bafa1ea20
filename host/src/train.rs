//! The training loop: one loop, configured. Seeded, resumable, interruptible.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::age_map::AgeMap;
use crate::augment::{Augment, Batch, make_batch};
use crate::crops::{CropSet, CropSettings, ensure_some};
use crate::data::{Rejected, Sample, Split, fnv1a, load_dataset, split_of};
use crate::distil::{Distil, TeacherTargets};
use crate::metrics::{Evaluation, Prediction, evaluate};
use crate::nn::average::WeightAverage;
use crate::nn::loss::{AgeLoss, MultiTaskLoss};
use crate::nn::model::{AgeGenderNet, NetConfig, with_mirror_images};
use crate::nn::optim::{AdamW, AdamWConfig, warmup_cosine};
use crate::nn::params::Params;
use crate::progress::Progress;
use crate::{checkpoint, plots};

/// Everything that defines a training run; saved as `train.json` in the run folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// UTKFace folder or CSV manifest.
    pub data: PathBuf,
    pub net: NetConfig,
    pub crop: CropSettings,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    pub lr_floor: f64,
    pub warmup_epochs: f64,
    pub adamw: AdamWConfig,
    /// Stop after this many epochs without a better validation score.
    pub patience: usize,
    /// Seeds the split, the weights, the order and the augmentation.
    pub seed: u64,
    pub augment: Augment,
    pub age_loss: AgeLoss,
    /// Width (years) of the LDL target distribution.
    pub ldl_sigma: f32,
    /// Use only this many images (a seeded choice), for smoke tests.
    pub limit: Option<usize>,
    /// Decay of the weight average that is evaluated and kept (`--ema`); none by default,
    /// and runs from before it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    /// Where the batch-norm statistics that are evaluated, kept and exported come from; runs
    /// from before this setting used training's momentum average.
    #[serde(default)]
    pub bn_stats: BnStats,
    /// Teachers to learn from besides the labels (`--teacher`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distil: Option<Distil>,
}

/// Where a model's batch-norm running statistics come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BnStats {
    /// Training's momentum average of the last few augmented batches.
    #[default]
    Momentum,
    /// Re-estimated before every validation on plain training crops and their mirror images
    /// (PreciseBN): what the board reads, and steady from epoch to epoch.
    Precise,
}

/// Training crops the batch-norm statistics are re-estimated on: a seeded choice of this
/// many (and their mirror images): PreciseBN's 8,192 images. All 16,945 crops (this constant
/// set above the split's size) gave the shipped run the same test MAE, 5.32, and two faces
/// fewer right on gender.
pub const BN_STATS_CROPS: usize = 4096;

/// The crops of `train` that [`Model::recalibrate_batch_norm`] is given: the same for a given
/// seed, so a run's kept statistics can be computed again by `eval` and `export`.
pub fn bn_stats_crops(train: &CropSet, seed: u64) -> CropSet {
    let mut indices: Vec<usize> = (0..train.len()).collect();
    if indices.len() > BN_STATS_CROPS {
        indices.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(seed, 0xb7, 0)));
        indices.truncate(BN_STATS_CROPS);
        indices.sort_unstable();
    }
    train.subset(&indices)
}

/// Where training stands; stored in checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Next epoch to run (0-based) and next batch within it.
    pub epoch: usize,
    pub batch: usize,
    pub optimizer_step: u64,
    pub best_score: Option<f64>,
    pub best_epoch: Option<usize>,
    pub stale_epochs: usize,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_age_mae: f64,
    pub train_gender_accuracy: f64,
    pub val_loss: f64,
    pub val_age_mae: f64,
    pub val_gender_accuracy: f64,
    /// Model selection score: MAE/5 + error%/5, 2.0 exactly at the quality bars; lower is better.
    pub val_score: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Files of a run folder.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("train.json")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.0.join("best.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    pub fn rejected(&self) -> PathBuf {
        self.0.join("rejected.txt")
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn read_config(&self) -> Result<TrainConfig> {
        let path = self.config();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: no training run here (train.json missing)", self.0.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: unreadable", path.display()))
    }

    pub fn read_metrics(&self) -> Result<Vec<EpochRecord>> {
        let text = std::fs::read_to_string(self.metrics()).unwrap_or_default();
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
    }
}

/// Crops of the three splits, and every input that could not be used.
pub struct Prepared {
    pub train: Arc<CropSet>,
    pub val: CropSet,
    pub test: CropSet,
    pub rejected: Vec<Rejected>,
}

impl Prepared {
    pub fn split(&self, split: Split) -> &CropSet {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

/// What a split needs of a training configuration: which faces, how they are cropped and
/// which seed splits them. `verify` builds one from a model file's contract instead of a run.
pub struct DataSpec<'a> {
    pub data: &'a Path,
    pub crop: &'a CropSettings,
    pub seed: u64,
    pub limit: Option<usize>,
}

impl TrainConfig {
    pub fn data_spec(&self) -> DataSpec<'_> {
        DataSpec { data: &self.data, crop: &self.crop, seed: self.seed, limit: self.limit }
    }
}

/// Loads the labels, builds (or loads) the crops and splits them as `config`'s run did.
pub fn prepare(config: &TrainConfig, detector: &Path, cache_dir: &Path, threads: usize) -> Result<Prepared> {
    prepare_data(&config.data_spec(), detector, cache_dir, threads)
}

/// Loads the labels, builds (or loads) the crops and splits them.
pub fn prepare_data(spec: &DataSpec, detector: &Path, cache_dir: &Path, threads: usize) -> Result<Prepared> {
    let (mut samples, mut rejected) = load_dataset(spec.data)?;
    if let Some(limit) = spec.limit {
        // A seeded choice spread over the whole set, not the first names alphabetically; by
        // file name, as the split is, so it does not hang on how the folder was named.
        let name =
            |s: &Sample| s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        samples.sort_by_key(|s| fnv1a(spec.seed ^ 0x5eed, name(s).as_bytes()));
        samples.truncate(limit);
        samples.sort_by(|a, b| a.path.cmp(&b.path));
    }
    let (crops, failed) = CropSet::build_or_load(&samples, spec.crop, detector, cache_dir, threads)?;
    rejected.extend(failed);
    let pick = |want: Split| -> Vec<usize> {
        (0..crops.len()).filter(|&i| split_of(&crops.samples[i].path, spec.seed) == want).collect()
    };
    let prepared = Prepared {
        train: Arc::new(crops.subset(&pick(Split::Train))),
        val: crops.subset(&pick(Split::Val)),
        test: crops.subset(&pick(Split::Test)),
        rejected,
    };
    ensure_some(&prepared.train, "training")?;
    ensure_some(&prepared.val, "validation")?;
    Ok(prepared)
}

pub fn report_rejected(rejected: &[Rejected], file: Option<&Path>) -> Result<()> {
    if rejected.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 20;
    for r in rejected.iter().take(SHOWN) {
        eprintln!("skipped {r}");
    }
    if rejected.len() > SHOWN {
        eprintln!("... and {} more skipped", rejected.len() - SHOWN);
    }
    if let Some(file) = file {
        let text: String = rejected.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(file, text).with_context(|| format!("{}: cannot write", file.display()))?;
        eprintln!("{} inputs skipped, listed with reasons in {}", rejected.len(), file.display());
    }
    Ok(())
}

/// The net, its parameters and the loss (whose task weights are parameters too).
pub struct Model {
    pub params: Params,
    pub net: AgeGenderNet,
    pub loss: MultiTaskLoss,
    /// Correction of the age reading ([`AgeMap`]), when asked for (`--age-map`); never while
    /// training (model choice sees the net's own reading).
    pub age_map: Option<AgeMap>,
}

impl Model {
    pub fn new(config: &TrainConfig, device: &Device) -> Result<Self> {
        let mut params = Params::new(config.seed, device);
        let net = AgeGenderNet::new(config.net.clone(), &mut params)?;
        let loss = MultiTaskLoss::new(config.age_loss, config.ldl_sigma, &mut params)?;
        Ok(Self { params, net, loss, age_map: None })
    }

    /// Builds the model of a run and loads its best weights.
    pub fn load_best(run: &RunDir, device: &Device) -> Result<(TrainConfig, Self)> {
        let config = run.read_config()?;
        let model = Self::new(&config, device)?;
        let ckpt = checkpoint::load(&run.best(), device)?;
        model.params.assign(&ckpt.params, &run.best().display().to_string())?;
        Ok((config, model))
    }

    /// Sets the run's fitted age map on the model (`--age-map`).
    pub fn use_age_map(&mut self, run: &RunDir) -> Result<()> {
        let map = AgeMap::load(&run.0)?.with_context(|| {
            format!(
                "{}: no {} here; fit one with `faceage-host fit-age-map --run {}`",
                run.0.display(),
                AgeMap::FILE,
                run.0.display()
            )
        })?;
        self.age_map = Some(map);
        Ok(())
    }

    /// Predictions on the exact board crops of `set`, in eval mode, read as the exported file
    /// reads them (with `mirror`: each face and its mirror image, averaged; the age map
    /// applied when there is one).
    pub fn predict_mirrored(&self, set: &CropSet, device: &Device, mirror: bool) -> Result<Vec<Prediction>> {
        let mut out = Vec::with_capacity(set.len());
        for input in plain_batches(set, 256, device) {
            let (_, x) = input?;
            let (age, female) = self.net.infer(&x, mirror)?;
            let age = match &self.age_map {
                Some(map) => map.apply_tensor(&age)?,
                None => age,
            };
            let ages = age.to_vec1::<f32>()?;
            let female = female.to_vec1::<f32>()?;
            out.extend(ages.into_iter().zip(female).map(|(age, female)| Prediction { age, female }));
        }
        Ok(out)
    }

    /// Re-estimates the batch-norm statistics on the plain (unaugmented) crops of `set`, each
    /// with its mirror image, as the exported file reads faces ([`AgeGenderNet::recalibrate_batch_norm`]).
    /// Returns the number of images seen.
    pub fn recalibrate_batch_norm(&self, set: &CropSet, device: &Device) -> Result<usize> {
        let batches = plain_batches(set, 64, device).map(|input| with_mirror_images(&input?.1));
        self.net.recalibrate_batch_norm(batches)
    }

    /// Plain single-view predictions (what training selects models on).
    pub fn predict(&self, set: &CropSet, device: &Device) -> Result<Vec<Prediction>> {
        self.predict_mirrored(set, device, false)
    }

    pub fn evaluate(&self, set: &CropSet, device: &Device) -> Result<Evaluation> {
        Ok(evaluate(&set.samples, &self.predict(set, device)?))
    }
}

/// Fits the age map of a trained model on the validation crops, read as the exported file
/// reads them (mirrored), and saves it in the run. Returns it with the validation MAE before
/// and after (in-sample: the test split is what measures it).
pub fn fit_age_map(
    run: &RunDir,
    model: &Model,
    val: &CropSet,
    device: &Device,
) -> Result<(AgeMap, f64, f64)> {
    ensure!(model.age_map.is_none(), "the age map is fitted on the net's own reading");
    let readings = model.predict_mirrored(val, device, true)?;
    let ages: Vec<f32> = val.samples.iter().map(|s| s.age).collect();
    let raw: Vec<f32> = readings.iter().map(|p| p.age).collect();
    let map = AgeMap::fit(&raw, &ages)?;
    let mae = |f: &dyn Fn(f32) -> f32| -> f64 {
        raw.iter().zip(&ages).map(|(r, a)| (f(*r) - a).abs() as f64).sum::<f64>() / ages.len().max(1) as f64
    };
    let (before, after) = (mae(&|r| r), mae(&|r| map.apply(r)));
    map.save(&run.0)?;
    Ok((map, before, after))
}

pub fn score(age_mae: f64, gender_accuracy: f64) -> f64 {
    age_mae / 5.0 + (100.0 - gender_accuracy) / 5.0
}

/// How a call to [`train`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    EarlyStopped,
    Interrupted,
}

/// Trains `config` into `run`, resuming from its checkpoint when `resume` is set.
pub fn train(
    config: &TrainConfig,
    run: &RunDir,
    data: &Prepared,
    device: &Device,
    resume: bool,
    stop: &AtomicBool,
    teacher: Option<&TeacherTargets>,
) -> Result<Outcome> {
    ensure!(
        config.distil.is_some() == teacher.is_some(),
        "the run's teachers and the targets handed to training disagree"
    );
    if let Some(t) = teacher {
        ensure!(
            t.len() == data.train.len(),
            "teacher targets for {} crops, {} training crops",
            t.len(),
            data.train.len()
        );
    }
    std::fs::create_dir_all(&run.0).with_context(|| format!("{}: cannot create", run.0.display()))?;
    let model = Model::new(config, device)?;
    let mut optimizer = AdamW::new(&model.params, config.adamw)?;
    let mut average = config.ema_decay.map(|decay| WeightAverage::new(decay, &model.params)).transpose()?;
    let mut state = TrainState::default();
    let bn_crops = (config.bn_stats == BnStats::Precise).then(|| bn_stats_crops(&data.train, config.seed));
    if resume {
        let saved = run.read_config()?;
        // Patience only decides when to stop, so a run that stopped early can go on to the
        // end of its schedule; everything else must match or the run would not be one run.
        if (TrainConfig { patience: config.patience, ..saved.clone() }) != *config {
            bail!(
                "{}: --resume with different settings than train.json; start a new --out folder",
                run.0.display()
            );
        }
        if saved.patience != config.patience {
            std::fs::write(run.config(), serde_json::to_string_pretty(config)?)?;
        }
        let ckpt = checkpoint::load(&run.checkpoint(), device)?;
        model.params.assign(&ckpt.params, &run.checkpoint().display().to_string())?;
        state = ckpt.state.context("checkpoint has no training state")?;
        optimizer.load_state(&ckpt.optimizer, state.optimizer_step)?;
        if let Some(average) = &mut average {
            average.load(&ckpt.averaged, &run.checkpoint().display().to_string())?;
        }
        eprintln!("resuming at epoch {} batch {}", state.epoch + 1, state.batch);
    } else {
        std::fs::write(run.config(), serde_json::to_string_pretty(config)?)?;
        std::fs::write(run.metrics(), "")?;
    }

    let train_set = Arc::clone(&data.train);
    let batch_size = config.batch_size.min(train_set.len()).max(2);
    let batches_per_epoch = train_set.len() / batch_size;
    let total_steps = (batches_per_epoch * config.epochs) as u64;
    let warmup = ((config.warmup_epochs * batches_per_epoch as f64) as u64).max(1);
    let s = config.net.input_size as usize;
    eprintln!(
        "training {} parameters on {} images ({} validation), {} batches of {} per epoch",
        model.params.count_trainable(),
        train_set.len(),
        data.val.len(),
        batches_per_epoch,
        batch_size
    );

    let mut outcome = Outcome::Finished;
    while state.epoch < config.epochs {
        let epoch = state.epoch;
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(config.seed, epoch as u64, u64::MAX)));

        // Augmentation runs a batch ahead on its own thread.
        let (tx, rx) = sync_channel(2);
        let (set, aug, seed, start) =
            (Arc::clone(&train_set), config.augment.clone(), config.seed, state.batch);
        let producer = std::thread::spawn(move || {
            for (b, chunk) in order.chunks_exact(batch_size).enumerate().skip(start) {
                let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch as u64, b as u64));
                if tx.send(make_batch(&set, chunk, Some((&aug, &mut rng)))).is_err() {
                    break;
                }
            }
        });

        let bar = Progress::new(batches_per_epoch as u64, &format!("epoch {}/{}", epoch + 1, config.epochs));
        bar.set_position(state.batch as u64);
        let (mut loss_sum, mut err_sum, mut correct, mut seen) = (0.0, 0.0, 0usize, 0usize);
        let mut lr = 0.0;
        for batch in rx.iter() {
            let n = batch.ages.len();
            lr = warmup_cosine(state.optimizer_step, warmup, total_steps, config.lr, config.lr_floor);
            let x = Tensor::from_vec(batch.pixels, (3, n, s, s), device)?;
            let ages = Tensor::from_vec(batch.ages.clone(), n, device)?;
            let female = Tensor::from_vec(batch.female.clone(), n, device)?;
            let out = model.net.forward(&x, true)?;
            let teaching = teacher.map(|t| t.teaching(&batch.indices, device)).transpose()?;
            let loss = model.loss.compute_taught(&out, &ages, &female, teaching.as_ref())?;
            let grads = loss.total.backward()?;
            optimizer.step(&grads, lr)?;
            if let Some(average) = &mut average {
                average.update(&model.params, optimizer.step)?;
            }
            state.optimizer_step = optimizer.step;
            state.batch += 1;

            let value = loss.total.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                bail!("loss became {value} at epoch {} batch {}; lower --lr", epoch + 1, state.batch);
            }
            let predicted = out.age_reading()?.to_vec1::<f32>()?;
            let logits = out.female_logit.to_vec1::<f32>()?;
            loss_sum += value * n as f64;
            err_sum += predicted.iter().zip(&batch.ages).map(|(p, a)| (p - a).abs() as f64).sum::<f64>();
            correct += logits.iter().zip(&batch.female).filter(|(l, f)| (**l >= 0.0) == (**f >= 0.5)).count();
            seen += n;
            bar.inc(1);
            bar.set_message(format!(
                "e{} mae {:.2} acc {:.1}%",
                epoch + 1,
                err_sum / seen as f64,
                100.0 * correct as f64 / seen as f64
            ));

            if stop.load(Ordering::Relaxed) {
                drop(rx);
                let _ = producer.join();
                bar.finish();
                save_checkpoint(run, &model, &optimizer, average.as_ref(), &state)?;
                eprintln!(
                    "interrupted at epoch {} batch {}; checkpoint saved, continue with --resume",
                    epoch + 1,
                    state.batch
                );
                return Ok(Outcome::Interrupted);
            }
        }
        let _ = producer.join();
        bar.finish();

        let seconds = started.elapsed().as_secs_f64();
        // With --ema the average is what is judged, kept as best and exported. Re-estimating
        // the batch-norm statistics leaves training unaffected: it normalises each batch by
        // its own statistics and only folds them into the running ones.
        let judge = || {
            if let Some(crops) = &bn_crops {
                model.recalibrate_batch_norm(crops, device)?;
            }
            let kept = model.params.tensors().into_iter().map(|(k, t)| Ok((k, t.detach().copy()?)));
            Ok((
                model.evaluate(&data.val, device)?,
                validation_loss(&model, &data.val, device)?,
                kept.collect::<Result<HashMap<_, _>>>()?,
            ))
        };
        let (val, val_loss, kept) = match &average {
            Some(average) => average.with_averaged(&model.params, judge)?,
            None => judge()?,
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_age_mae: err_sum / seen.max(1) as f64,
            train_gender_accuracy: 100.0 * correct as f64 / seen.max(1) as f64,
            val_loss,
            val_age_mae: val.overall.age_mae,
            val_gender_accuracy: val.overall.gender_accuracy,
            val_score: score(val.overall.age_mae, val.overall.gender_accuracy),
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
        };
        let mut log = std::fs::OpenOptions::new().append(true).create(true).open(run.metrics())?;
        writeln!(log, "{}", serde_json::to_string(&record)?)?;
        eprintln!(
            "epoch {:>3}: train mae {:.2} acc {:.1}% | val mae {:.2} acc {:.2}% | {:.0} s, {:.0} img/s",
            record.epoch,
            record.train_age_mae,
            record.train_gender_accuracy,
            record.val_age_mae,
            record.val_gender_accuracy,
            seconds,
            record.images_per_second
        );

        state.epoch += 1;
        state.batch = 0;
        if state.best_score.is_none_or(|best| record.val_score < best) {
            state.best_score = Some(record.val_score);
            state.best_epoch = Some(record.epoch);
            state.stale_epochs = 0;
            checkpoint::save(&run.best(), &kept, None, None, &state)?;
        } else {
            state.stale_epochs += 1;
        }
        save_checkpoint(run, &model, &optimizer, average.as_ref(), &state)?;
        if state.stale_epochs >= config.patience {
            eprintln!("no better validation score for {} epochs: stopping early", config.patience);
            outcome = Outcome::EarlyStopped;
            break;
        }
        plots::write_curves(&run.read_metrics()?, &run.file("curves.png"))?;
    }
    Ok(outcome)
}

fn save_checkpoint(
    run: &RunDir,
    model: &Model,
    optimizer: &AdamW,
    average: Option<&WeightAverage>,
    state: &TrainState,
) -> Result<()> {
    let averaged = average.map(WeightAverage::tensors);
    checkpoint::save(
        &run.checkpoint(),
        &model.params.tensors(),
        Some(&optimizer.state()),
        averaged.as_ref(),
        state,
    )
}

/// Mean total loss on the validation crops (eval mode).
fn validation_loss(model: &Model, set: &CropSet, device: &Device) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for input in plain_batches(set, 256, device) {
        let (batch, x) = input?;
        let count = batch.ages.len();
        let ages = Tensor::from_vec(batch.ages, count, device)?;
        let female = Tensor::from_vec(batch.female, count, device)?;
        let out = model.net.forward(&x, false)?;
        sum += model.loss.compute(&out, &ages, &female)?.total.to_scalar::<f32>()? as f64 * count as f64;
        n += count;
    }
    Ok(sum / n.max(1) as f64)
}

/// The plain (unaugmented) crops of `set` in order, `size` at a time: each batch's labels (its
/// pixels moved out) and its `[3, N, S, S]` input. What every evaluation-mode pass reads.
pub fn plain_batches<'a>(
    set: &'a CropSet,
    size: usize,
    device: &'a Device,
) -> impl Iterator<Item = Result<(Batch, Tensor)>> + 'a {
    let s = set.settings.input_size as usize;
    let indices: Vec<usize> = (0..set.len()).collect();
    let chunks: Vec<Vec<usize>> = indices.chunks(size.max(1)).map(<[usize]>::to_vec).collect();
    chunks.into_iter().map(move |chunk| {
        let mut batch = make_batch(set, &chunk, None);
        let x = Tensor::from_vec(std::mem::take(&mut batch.pixels), (3, chunk.len(), s, s), device)?;
        Ok((batch, x))
    })
}

/// Independent seed for (epoch, batch) so every batch's augmentation is reproducible.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    fnv1a(seed, &[a.to_le_bytes(), b.to_le_bytes()].concat())
}

/// Figures of `bench-train`.
pub struct TrainBench {
    pub step_seconds: Vec<f64>,
    pub images_per_step: usize,
    pub macs_per_image: u64,
}

impl TrainBench {
    pub fn median(&self) -> f64 {
        let mut v = self.step_seconds.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

/// Times forward + backward + optimiser step on synthetic batches.
pub fn bench_steps(net: NetConfig, batch: usize, steps: usize, device: &Device) -> Result<TrainBench> {
    let config = TrainConfig {
        data: PathBuf::new(),
        crop: CropSettings { input_size: net.input_size, margin: 1.0, geometry: Default::default() },
        net: net.clone(),
        epochs: 1,
        batch_size: batch,
        lr: 1e-3,
        lr_floor: 0.01,
        warmup_epochs: 0.0,
        adamw: AdamWConfig::default(),
        patience: 1,
        seed: 1,
        augment: Augment::none(),
        age_loss: AgeLoss::Ldl,
        ldl_sigma: 2.0,
        limit: None,
        ema_decay: None,
        bn_stats: BnStats::Momentum,
        distil: None,
    };
    let model = Model::new(&config, device)?;
    let mut optimizer = AdamW::new(&model.params, config.adamw)?;
    let s = net.input_size as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let pixels: Vec<f32> =
        (0..3 * batch * s * s).map(|_| crate::nn::params::standard_normal(&mut rng)).collect();
    let x = Tensor::from_vec(pixels, (3, batch, s, s), device)?;
    let ages = Tensor::from_vec((0..batch).map(|i| (i * 7 % 90) as f32).collect::<Vec<_>>(), batch, device)?;
    let female = Tensor::from_vec((0..batch).map(|i| (i % 2) as f32).collect::<Vec<_>>(), batch, device)?;
    let mut times = Vec::new();
    for step in 0..steps + 1 {
        let started = Instant::now();
        let out = model.net.forward(&x, true)?;
        let loss = model.loss.compute(&out, &ages, &female)?;
        let grads = loss.total.backward()?;
        optimizer.step(&grads, 1e-3)?;
        let _ = loss.total.to_scalar::<f32>()?; // wait for the device
        if step > 0 {
            times.push(started.elapsed().as_secs_f64()); // step 0 warms caches and allocators
        }
    }
    Ok(TrainBench { step_seconds: times, images_per_step: batch, macs_per_image: net.macs() })
}
