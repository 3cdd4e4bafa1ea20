//! The training loop: one loop, configured. Seeded, resumable, interruptible.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::augment::{Batch, make_batch};
use crate::checkpoint::{self, TrainState};
use crate::config::{BnStats, TrainConfig};
use crate::crops::CropSet;
use crate::data::{epoch_order, mix_seed};
use crate::distil::TeacherTargets;
use crate::nn::average::WeightAverage;
use crate::nn::optim::{AdamW, warmup_cosine};
use crate::plots;
use crate::prepare::{Prepared, bn_stats_crops};
use crate::progress::Progress;
use crate::run_dir::{EpochRecord, RunDir};
use crate::trained::{Model, score, validation_loss};
use crate::warm_start;

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
    let mut trainer = Trainer::new(config, run, data, device, teacher)?;
    if resume {
        trainer.resume()?;
    } else {
        trainer.start()?;
    }
    trainer.run(stop)
}

/// Batches per epoch and the learning-rate schedule's length, in optimiser steps.
struct Schedule {
    batch_size: usize,
    batches_per_epoch: usize,
    warmup: u64,
    total_steps: u64,
}

impl Schedule {
    /// `train_crops`: the faces one epoch reads ([`crate::data::epoch_len`]).
    fn new(config: &TrainConfig, train_crops: usize) -> Self {
        let batch_size = config.batch_size.min(train_crops).max(2);
        let batches_per_epoch = train_crops / batch_size;
        Self {
            batch_size,
            batches_per_epoch,
            warmup: ((config.warmup_epochs * batches_per_epoch as f64) as u64).max(1),
            total_steps: (batches_per_epoch * config.epochs) as u64,
        }
    }
}

/// What an epoch's training batches add up to (the running figures of the progress bar).
#[derive(Default)]
struct Running {
    loss_sum: f64,
    error_sum: f64,
    correct: usize,
    seen: usize,
    lr: f64,
}

impl Running {
    fn mean(&self, sum: f64) -> f64 {
        sum / self.seen.max(1) as f64
    }
    fn accuracy(&self) -> f64 {
        100.0 * self.correct as f64 / self.seen.max(1) as f64
    }
}

/// One training run in progress: the model, its optimiser and weight average, and where it
/// stands. `run` drives epochs until the schedule ends, patience runs out or `stop` is set.
pub struct Trainer<'a> {
    config: &'a TrainConfig,
    run: &'a RunDir,
    data: &'a Prepared,
    device: &'a Device,
    teacher: Option<&'a TeacherTargets>,
    model: Model,
    optimizer: AdamW,
    average: Option<WeightAverage>,
    state: TrainState,
    /// The crops PreciseBN re-estimates the statistics on before every validation.
    bn_crops: Option<CropSet>,
    schedule: Schedule,
}

impl<'a> Trainer<'a> {
    /// A fresh model for `config`; `start` or `resume` before `run`.
    pub fn new(
        config: &'a TrainConfig,
        run: &'a RunDir,
        data: &'a Prepared,
        device: &'a Device,
        teacher: Option<&'a TeacherTargets>,
    ) -> Result<Self> {
        ensure!(
            config.distil.is_some() == teacher.is_some(),
            "the run's teachers and the targets handed to training disagree"
        );
        ensure!(
            (config.scene_views > 0.0) == data.train_views.is_some(),
            "--scene-views {} but the training crops {} second views (prepare::add_scene_views)",
            config.scene_views,
            if data.train_views.is_some() { "have" } else { "have no" }
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
        let optimizer = AdamW::new(&model.params, config.adamw)?;
        let average = config.ema_decay.map(|decay| WeightAverage::new(decay, &model.params)).transpose()?;
        let bn_crops =
            (config.bn_stats == BnStats::Precise).then(|| bn_stats_crops(&data.train, config.seed));
        let weights: Vec<f64> = config.data.iter().map(|d| d.weight).collect();
        let schedule = Schedule::new(config, crate::data::epoch_len(&data.train.samples, &weights));
        Ok(Self {
            config,
            run,
            data,
            device,
            teacher,
            model,
            optimizer,
            average,
            state: TrainState::default(),
            bn_crops,
            schedule,
        })
    }

    /// A new run: its configuration written, its record empty.
    pub fn start(&mut self) -> Result<()> {
        if let Some(file) = &self.config.init {
            let bn_crops = bn_stats_crops(&self.data.train, self.config.seed);
            let started =
                warm_start::start_from_file(&self.model, file, self.config, &bn_crops, self.device)?;
            eprintln!(
                "starting from {}: {} tensors, reading as the file does on {} crops (max |age diff| {:.1e}, max |p(female) diff| {:.1e})",
                file.display(),
                started.tensors,
                started.faces,
                started.max_age_diff,
                started.max_female_diff
            );
            // The weight average starts from the weights the run starts from.
            self.average = self
                .config
                .ema_decay
                .map(|decay| WeightAverage::new(decay, &self.model.params))
                .transpose()?;
        }
        std::fs::write(self.run.config(), serde_json::to_string_pretty(self.config)?)?;
        std::fs::write(self.run.metrics(), "")?;
        Ok(())
    }

    /// Continues the run from its last checkpoint: weights, optimiser moments, weight average
    /// and where it stood.
    pub fn resume(&mut self) -> Result<()> {
        let (run, config) = (self.run, self.config);
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
        let ckpt = checkpoint::load(&run.checkpoint(), self.device)?;
        let label = run.checkpoint().display().to_string();
        self.model.params.assign(&ckpt.params, &label)?;
        self.state = ckpt.state.context("checkpoint has no training state")?;
        self.optimizer.load_state(&ckpt.optimizer, self.state.optimizer_step)?;
        if let Some(average) = &mut self.average {
            average.load(&ckpt.averaged, &label)?;
        }
        eprintln!("resuming at epoch {} batch {}", self.state.epoch + 1, self.state.batch);
        Ok(())
    }

    /// Epochs until the schedule ends, patience runs out or `stop` is set (a checkpoint is
    /// saved mid-epoch then, for `--resume`).
    pub fn run(mut self, stop: &AtomicBool) -> Result<Outcome> {
        eprintln!(
            "training {} parameters on {} images ({} validation), {} batches of {} per epoch",
            self.model.params.count_trainable(),
            self.data.train.len(),
            self.data.val.len(),
            self.schedule.batches_per_epoch,
            self.schedule.batch_size
        );
        while self.state.epoch < self.config.epochs {
            let started = Instant::now();
            let Some(running) = self.train_epoch(stop)? else {
                self.save_checkpoint()?;
                eprintln!(
                    "interrupted at epoch {} batch {}; checkpoint saved, continue with --resume",
                    self.state.epoch + 1,
                    self.state.batch
                );
                return Ok(Outcome::Interrupted);
            };
            self.judge(&running, started.elapsed().as_secs_f64())?;
            if self.state.stale_epochs >= self.config.patience {
                eprintln!("no better validation score for {} epochs: stopping early", self.config.patience);
                return Ok(Outcome::EarlyStopped);
            }
            plots::write_curves(&self.run.read_metrics()?, &self.run.file("curves.png"))?;
        }
        Ok(Outcome::Finished)
    }

    /// The rest of the current epoch's batches, augmented a batch ahead on their own thread;
    /// `None` when `stop` was set.
    fn train_epoch(&mut self, stop: &AtomicBool) -> Result<Option<Running>> {
        let (config, epoch) = (self.config, self.state.epoch);
        let weights: Vec<f64> = config.data.iter().map(|d| d.weight).collect();
        let order = epoch_order(
            &self.data.train.samples,
            &weights,
            config.band_balance,
            config.race_age_balance,
            &mut ChaCha8Rng::seed_from_u64(mix_seed(config.seed, epoch as u64, u64::MAX)),
        );
        let (tx, rx) = sync_channel(2);
        let (set, aug, seed, start) =
            (Arc::clone(&self.data.train), config.augment.clone(), config.seed, self.state.batch);
        let views = self.data.train_views.clone().map(|views| (views, config.scene_views));
        let batch_size = self.schedule.batch_size;
        let producer = std::thread::spawn(move || {
            for (b, chunk) in order.chunks_exact(batch_size).enumerate().skip(start) {
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch as u64, b as u64));
                let batch = match &views {
                    // Crop `i + n` is face `i` in a camera-sized frame; labels and teacher
                    // rows stay those of face `i`.
                    Some((views, share)) => {
                        let n = set.len();
                        let picked: Vec<usize> =
                            chunk.iter().map(|&i| if rng.random_bool(*share) { i + n } else { i }).collect();
                        Batch {
                            indices: chunk.to_vec(),
                            ..make_batch(views, &picked, Some((&aug, &mut rng)))
                        }
                    }
                    None => make_batch(&set, chunk, Some((&aug, &mut rng))),
                };
                if tx.send(batch).is_err() {
                    break;
                }
            }
        });

        let bar = Progress::new(
            self.schedule.batches_per_epoch as u64,
            &format!("epoch {}/{}", epoch + 1, config.epochs),
        );
        bar.set_position(self.state.batch as u64);
        let mut running = Running::default();
        let mut interrupted = false;
        for batch in rx.iter() {
            self.step(batch, &mut running)?;
            bar.inc(1);
            bar.set_message(format!(
                "e{} mae {:.2} acc {:.1}%",
                epoch + 1,
                running.mean(running.error_sum),
                running.accuracy()
            ));
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
        }
        drop(rx);
        let _ = producer.join();
        bar.finish();
        Ok((!interrupted).then_some(running))
    }

    /// One optimiser step on `batch`.
    fn step(&mut self, batch: Batch, running: &mut Running) -> Result<()> {
        let (device, s) = (self.device, self.config.net.input_size as usize);
        let n = batch.ages.len();
        let lr = warmup_cosine(
            self.state.optimizer_step,
            self.schedule.warmup,
            self.schedule.total_steps,
            self.config.lr,
            self.config.lr_floor,
        );
        let x = Tensor::from_vec(batch.pixels, (3, n, s, s), device)?;
        let ages = Tensor::from_vec(batch.ages.clone(), n, device)?;
        let female = Tensor::from_vec(batch.female.clone(), n, device)?;
        let out = self.model.net.forward(&x, true)?;
        let teaching = self.teacher.map(|t| t.teaching(&batch.indices, device)).transpose()?;
        let loss = self.model.loss.compute_taught(&out, &ages, &batch.groups, &female, teaching.as_ref())?;
        let grads = loss.total.backward()?;
        self.optimizer.step(&grads, lr)?;
        if let Some(average) = &mut self.average {
            average.update(&self.model.params, self.optimizer.step)?;
        }
        self.state.optimizer_step = self.optimizer.step;
        self.state.batch += 1;

        let value = loss.total.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            bail!(
                "loss became {value} at epoch {} batch {}; lower --lr",
                self.state.epoch + 1,
                self.state.batch
            );
        }
        let predicted = out.age_reading()?.to_vec1::<f32>()?;
        let logits = out.female_logit.to_vec1::<f32>()?;
        running.lr = lr;
        running.loss_sum += value * n as f64;
        running.error_sum += (predicted.iter().zip(&batch.ages).zip(&batch.groups))
            .map(|((&p, &age), group)| group.map_or((p - age).abs(), |g| g.distance(p)) as f64)
            .sum::<f64>();
        running.correct +=
            logits.iter().zip(&batch.female).filter(|(l, f)| (**l >= 0.0) == (**f >= 0.5)).count();
        running.seen += n;
        Ok(())
    }

    /// Validates the epoch just trained, records it in `metrics.jsonl`, keeps the weights as
    /// best when their score is, and saves the checkpoint.
    fn judge(&mut self, running: &Running, seconds: f64) -> Result<()> {
        let (model, device, data) = (&self.model, self.device, self.data);
        // With --ema the average is what is judged, kept as best and exported. Re-estimating
        // the batch-norm statistics leaves training unaffected: it normalises each batch by
        // its own statistics and only folds them into the running ones.
        let validate = || {
            if let Some(crops) = &self.bn_crops {
                model.recalibrate_batch_norm(crops, device)?;
            }
            let kept = model.params.tensors().into_iter().map(|(k, t)| Ok((k, t.detach().copy()?)));
            Ok((
                model.evaluate(&data.val, device)?,
                validation_loss(model, &data.val, device)?,
                kept.collect::<Result<HashMap<_, _>>>()?,
            ))
        };
        let (val, val_loss, kept) = match &self.average {
            Some(average) => average.with_averaged(&model.params, validate)?,
            None => validate()?,
        };
        let record = EpochRecord {
            epoch: self.state.epoch + 1,
            lr: running.lr,
            train_loss: running.mean(running.loss_sum),
            train_age_mae: running.mean(running.error_sum),
            train_gender_accuracy: running.accuracy(),
            val_loss,
            val_age_mae: val.overall.age_mae,
            val_gender_accuracy: val.overall.gender_accuracy,
            val_score: score(val.overall.age_mae, val.overall.gender_accuracy),
            seconds,
            images_per_second: running.seen as f64 / seconds.max(1e-9),
        };
        let mut log = std::fs::OpenOptions::new().append(true).create(true).open(self.run.metrics())?;
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

        let state = &mut self.state;
        state.epoch += 1;
        state.batch = 0;
        if state.best_score.is_none_or(|best| record.val_score < best) {
            state.best_score = Some(record.val_score);
            state.best_epoch = Some(record.epoch);
            state.stale_epochs = 0;
            checkpoint::save(&self.run.best(), &kept, None, None, state)?;
        } else {
            state.stale_epochs += 1;
        }
        self.save_checkpoint()
    }

    fn save_checkpoint(&self) -> Result<()> {
        let averaged = self.average.as_ref().map(WeightAverage::tensors);
        checkpoint::save(
            &self.run.checkpoint(),
            &self.model.params.tensors(),
            Some(&self.optimizer.state()),
            averaged.as_ref(),
            &self.state,
        )
    }
}
