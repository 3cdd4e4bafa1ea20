//! A trained model in memory: the net, its parameters and loss, loaded from a run, and the
//! evaluation-mode passes every command reads it through.

use anyhow::{Context, Result, ensure};
use candle_core::{Device, Tensor};

use crate::age_map::AgeMap;
use crate::augment::{Batch, make_batch};
use crate::checkpoint;
use crate::config::TrainConfig;
use crate::crops::CropSet;
use crate::metrics::{Evaluation, Prediction, evaluate};
use crate::nn::loss::MultiTaskLoss;
use crate::nn::model::{AgeGenderNet, with_mirror_images};
use crate::nn::params::Params;
use crate::run_dir::RunDir;

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
        let mut loss = MultiTaskLoss::new(config.age_loss, config.ldl_sigma, &mut params)?;
        loss.group_edge = config.group_edge;
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
    // Fitted on exact ages only: an age group's midpoint is no age to map a reading to.
    let exact: Vec<usize> = (0..val.len()).filter(|&i| val.samples[i].age_group.is_none()).collect();
    ensure!(!exact.is_empty(), "the age map needs validation faces labelled with exact ages");
    let ages: Vec<f32> = exact.iter().map(|&i| val.samples[i].age).collect();
    let raw: Vec<f32> = exact.iter().map(|&i| readings[i].age).collect();
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

/// Mean total loss on the validation crops (eval mode).
pub fn validation_loss(model: &Model, set: &CropSet, device: &Device) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for input in plain_batches(set, 256, device) {
        let (batch, x) = input?;
        let count = batch.ages.len();
        let ages = Tensor::from_vec(batch.ages, count, device)?;
        let female = Tensor::from_vec(batch.female, count, device)?;
        let out = model.net.forward(&x, false)?;
        sum += model.loss.compute(&out, &ages, &batch.groups, &female)?.total.to_scalar::<f32>()? as f64
            * count as f64;
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
