//! What defines a training run, saved as `train.json` in its run folder. `Default` is the
//! shipped recipe (the model card's "Training"); the command line fills a config, it does not
//! define one.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use faceage_device::CropGeometry;
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::crops::CropSettings;
use crate::nn::loss::AgeLoss;
use crate::nn::model::NetConfig;
use crate::nn::optim::AdamWConfig;

/// One data set of a run: a UTKFace folder or a CSV manifest, with its own labels and its own
/// seeded split, and how often its training faces are read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    pub path: PathBuf,
    /// Each epoch reads `weight` times this source's training faces (a fresh seeded choice
    /// each epoch where that is not a whole number): 1 every face once, 0.5 half of them.
    pub weight: f64,
}

impl DataSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), weight: 1.0 }
    }
}

impl std::str::FromStr for DataSource {
    type Err = String;

    /// `PATH` (weight 1) or `PATH:WEIGHT`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.rsplit_once(':').map(|(path, w)| (path, w.parse::<f64>())) {
            Some((path, Ok(weight))) => {
                if !(weight.is_finite() && weight > 0.0) {
                    return Err(format!("{text}: the weight after ':' must be a number above 0"));
                }
                Ok(Self { path: path.into(), weight })
            }
            _ => Ok(Self::new(text)),
        }
    }
}

/// The sources as one line (`faceage.train.data`): paths joined by ` + `, a weight other than 1
/// after its path as on the command line.
pub fn describe_sources(sources: &[DataSource]) -> String {
    let one = |s: &DataSource| {
        if s.weight == 1.0 {
            s.path.display().to_string()
        } else {
            format!("{}:{}", s.path.display(), s.weight)
        }
    };
    sources.iter().map(one).collect::<Vec<_>>().join(" + ")
}

/// Runs from before several sources recorded one path as `data`.
fn one_or_more_sources<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DataSource>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Recorded {
        One(PathBuf),
        More(Vec<DataSource>),
    }
    Ok(match Recorded::deserialize(d)? {
        Recorded::One(path) => vec![DataSource::new(path)],
        Recorded::More(sources) => sources,
    })
}

/// Everything that defines a training run; saved as `train.json` in the run folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The data sets, in `--data` order (a sample's [`crate::data::Sample::source`]).
    #[serde(deserialize_with = "one_or_more_sources")]
    pub data: Vec<DataSource>,
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
    /// Softness (years) of an age group's edges where the loss asks for the age distribution's
    /// mass inside the group (`--group-edge`; 0: hard edges). Group labels are annotators'
    /// guesses from a photo, so a reading a year past the edge is not all wrong.
    #[serde(default = "default_group_edge")]
    pub group_edge: f32,
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
    /// A model file whose weights the run starts from (`--init`, fine-tuning); none by default:
    /// random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Share of training faces read, at each step, from their crop in a camera-sized frame
    /// (`CropSettings::in_scene`) instead of the plain one; 0 by default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scene_views: f64,
    /// How far each epoch evens out the age bands (`--band-balance`, 0 to 1): faces are drawn
    /// with replacement, each with weight (its band's share of the training faces) to the
    /// power `-band_balance`; 0 (the default) reads every face once, shuffled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub band_balance: f64,
    /// How far each epoch gives every race group the same age mix (`--race-age-balance`, 0 to
    /// 1; see [`crate::data::epoch_order`]); 0 by default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub race_age_balance: f64,
}

fn default_group_edge() -> f32 {
    1.0
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
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

impl Default for TrainConfig {
    /// The shipped recipe: the standard net at 64x64, 36 epochs of 64, AdamW at 3e-3 with one
    /// epoch of warm-up and a cosine decay to 1% of it, the default augmentation with the
    /// camera degradations, LDL-KL age loss of width 2 years, PreciseBN statistics, seed 1.
    fn default() -> Self {
        Self {
            data: Vec::new(),
            net: NetConfig::standard(64),
            crop: CropSettings::for_model(64, CropGeometry::default()),
            epochs: 36,
            batch_size: 64,
            lr: 3e-3,
            lr_floor: 0.01,
            warmup_epochs: 1.0,
            adamw: AdamWConfig::default(),
            patience: 8,
            seed: 1,
            augment: Augment::scaled(1.0),
            age_loss: AgeLoss::LdlKl,
            ldl_sigma: 2.0,
            group_edge: default_group_edge(),
            limit: None,
            ema_decay: None,
            bn_stats: BnStats::Precise,
            distil: None,
            init: None,
            scene_views: 0.0,
            band_balance: 0.0,
            race_age_balance: 0.0,
        }
    }
}

/// The teachers of a run and how much of the target is theirs (`--teacher`, [`crate::distil`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Distil {
    /// Run folders of the teachers, or their model files (ONNX).
    pub teachers: Vec<PathBuf>,
    /// Share of each target that is the teachers' (0 to 1); the rest is the label's.
    pub weight: f64,
}

impl Distil {
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.teachers.is_empty(), "distillation needs at least one --teacher");
        ensure!(
            (0.0..=1.0).contains(&self.weight),
            "--distil-weight {}: the teachers' share must lie between 0 and 1",
            self.weight
        );
        Ok(())
    }
}

/// What a split needs of a training configuration: which faces, how they are cropped and
/// which seed splits them. `verify` builds one from a model file's contract instead of a run.
pub struct DataSpec<'a> {
    pub data: &'a [DataSource],
    pub crop: &'a CropSettings,
    pub seed: u64,
    pub limit: Option<usize>,
}

/// The split seed a model file records (`--teacher FILE`, `--init FILE`); `label` names it.
pub fn file_split_seed(contract: &faceage_device::ModelContract, label: &str) -> Result<u64> {
    contract.split_seed.with_context(|| {
        format!(
            "{label}: its metadata does not record the split seed of its training \
             (faceage.train.split_seed), so it may have seen faces this run validates or tests on"
        )
    })
}

/// Refuses a model or run trained on another split than this run's (`run_seed`).
pub fn ensure_same_split(label: &str, trained_seed: u64, run_seed: u64) -> Result<()> {
    ensure!(
        trained_seed == run_seed,
        "{label}: trained with --seed {trained_seed}, this run uses {run_seed}: its split differs, so it \
         has seen faces this run validates or tests on"
    );
    Ok(())
}

impl TrainConfig {
    pub fn data_spec(&self) -> DataSpec<'_> {
        DataSpec { data: &self.data, crop: &self.crop, seed: self.seed, limit: self.limit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_recipe_the_card_describes() {
        let c = TrainConfig::default();
        assert_eq!((c.net.input_size, c.epochs, c.batch_size, c.seed), (64, 36, 64, 1));
        assert_eq!(c.bn_stats, BnStats::Precise);
        assert!(c.augment.flip && c.augment.camera.blur > 0.0, "camera degradations are part of the recipe");
        // A saved recipe reads back as itself.
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), c);
    }

    #[test]
    fn sources_parse_with_weights_and_old_runs_read_their_one_path() {
        let s: DataSource = "../fairface/train.csv:0.5".parse().unwrap();
        assert_eq!((s.path, s.weight), ("../fairface/train.csv".into(), 0.5));
        assert_eq!("UTKFace".parse::<DataSource>().unwrap(), DataSource::new("UTKFace"));
        assert!("a.csv:0".parse::<DataSource>().unwrap_err().contains("above 0"));
        assert!("a.csv:-1".parse::<DataSource>().is_err());

        let mut saved = serde_json::to_value(TrainConfig::default()).unwrap();
        saved["data"] = serde_json::json!("/data/UTKFace");
        let old: TrainConfig = serde_json::from_value(saved).unwrap();
        assert_eq!(old.data, vec![DataSource::new("/data/UTKFace")]);
    }
}
