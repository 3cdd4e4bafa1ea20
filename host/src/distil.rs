//! Knowledge distillation from trained runs or model files (`train --teacher RUN|FILE.onnx ...`):
//! the teachers read every training crop once, as the exported files read faces (mirrored),
//! and the student learns from a mix of the labels and their averaged readings
//! ([`MultiTaskLoss::compute_taught`]). A model file (the shipped one, say) reads through
//! tract, as the board does, so a student can learn from it without the runs that made it.
//!
//! [`MultiTaskLoss::compute_taught`]: crate::nn::loss::MultiTaskLoss::compute_taught

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use candle_core::{Device, Tensor};
use faceage_device::ModelContract;
use serde::{Deserialize, Serialize};
use tract_onnx::pb::ValueInfoProto;
use tract_onnx::prelude::{TypedRunnableModel, tvec};

use crate::config::{BnStats, Distil, TrainConfig, ensure_same_split, file_split_seed};
use crate::crops::{CropSet, CropSettings};
use crate::data::fnv1a;
use crate::export::AGE_DISTRIBUTIONS;
use crate::nn::loss::Teaching;
use crate::prepare::{Prepared, bn_stats_crops};
use crate::run_dir::RunDir;
use crate::tensor_file::{self, RawTensor, TensorFile};
use crate::trained::{Model, plain_batches};

/// The teachers' averaged readings of every training crop, in the order of the student's
/// training set.
pub struct TeacherTargets {
    bins: usize,
    /// `[crops, bins]` row-major.
    age_probs: Vec<f32>,
    female: Vec<f32>,
    weight: f64,
}

impl TeacherTargets {
    /// Reads `train` (the student's training crops) with every teacher of `distil`. Each
    /// teacher must have been trained on the same split (the same `--seed`), so none of them
    /// has seen the student's validation or test faces; each reads its own crops (its input
    /// size may differ from the student's, and `prepare` builds a run's crops).
    fn compute(
        distil: &Distil,
        student: &TrainConfig,
        train: &CropSet,
        prepare: &dyn Fn(&TrainConfig) -> Result<Prepared>,
        device: &Device,
    ) -> Result<Self> {
        let keys: Vec<PathBuf> = train.samples.iter().map(|s| canonical(&s.path)).collect();
        let mut sums: Option<(usize, Vec<f32>, Vec<f32>)> = None;
        for dir in &distil.teachers {
            let started = Instant::now();
            let (probs, female) = read_teacher(dir, student, &keys, prepare, device)?;
            let bins = probs.len() / keys.len().max(1);
            match &mut sums {
                None => sums = Some((bins, probs, female)),
                Some((b, p, f)) => {
                    ensure!(
                        *b == bins,
                        "teacher {}: {bins} age bins, the first teacher has {b}",
                        dir.display()
                    );
                    p.iter_mut().zip(&probs).for_each(|(a, x)| *a += x);
                    f.iter_mut().zip(&female).for_each(|(a, x)| *a += x);
                }
            }
            eprintln!(
                "teacher {} read {} training crops in {:.0} s",
                dir.display(),
                keys.len(),
                started.elapsed().as_secs_f64()
            );
        }
        let (bins, mut age_probs, mut female) = sums.expect("at least one teacher");
        let k = distil.teachers.len() as f32;
        age_probs.iter_mut().for_each(|v| *v /= k);
        female.iter_mut().for_each(|v| *v /= k);
        Ok(Self { bins, age_probs, female, weight: distil.weight })
    }

    /// [`Self::compute`], kept in `file` so a resumed run does not read every crop again
    /// (a minute and a half per teacher on two cores): a file made for other teachers or
    /// other crops is computed again. `prepare` builds a teacher's crops ([`crate::prepare::prepare`]
    /// with the detector and cache of this run).
    pub fn load_or_compute(
        file: &Path,
        distil: &Distil,
        student: &TrainConfig,
        train: &CropSet,
        prepare: &dyn Fn(&TrainConfig) -> Result<Prepared>,
        device: &Device,
    ) -> Result<Self> {
        distil.validate()?;
        let header = TargetsHeader {
            teachers: distil.teachers.clone(),
            crops: train.len(),
            bins: 0,
            crops_hash: crops_hash(train),
        };
        match read_targets(file, &header) {
            Ok((bins, age_probs, female)) => {
                eprintln!("teachers' readings of {} training crops from {}", female.len(), file.display());
                return Ok(Self { bins, age_probs, female, weight: distil.weight });
            }
            Err(e) if file.exists() => eprintln!("{}: {e:#}; reading the crops again", file.display()),
            Err(_) => {}
        }
        let targets = Self::compute(distil, student, train, prepare, device)?;
        write_targets(file, &TargetsHeader { bins: targets.bins, ..header }, &targets)?;
        Ok(targets)
    }

    /// What the teachers hand on for the training crops `indices`.
    pub fn teaching(&self, indices: &[usize], device: &Device) -> Result<Teaching> {
        let mut probs = Vec::with_capacity(indices.len() * self.bins);
        for &i in indices {
            probs.extend_from_slice(&self.age_probs[i * self.bins..(i + 1) * self.bins]);
        }
        let female: Vec<f32> = indices.iter().map(|&i| self.female[i]).collect();
        Ok(Teaching {
            age_probs: Tensor::from_vec(probs, (indices.len(), self.bins), device)?,
            female: Tensor::from_vec(female, indices.len(), device)?,
            weight: self.weight,
        })
    }

    pub fn len(&self) -> usize {
        self.female.len()
    }

    pub fn is_empty(&self) -> bool {
        self.female.is_empty()
    }
}

/// One teacher's age distributions (row-major `[crops, bins]`) and p(female) of the student's
/// training crops, whose canonical paths are `keys`: a run folder read through candle, or a
/// model file through tract. The teacher must share the student's split and age bins.
fn read_teacher(
    dir: &Path,
    student: &TrainConfig,
    keys: &[PathBuf],
    prepare: &dyn Fn(&TrainConfig) -> Result<Prepared>,
    device: &Device,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let file = dir.is_file().then(|| FileTeacher::open(dir)).transpose()?;
    let config = match &file {
        Some(file) => TrainConfig { crop: file.crop(), seed: file.seed, ..student.clone() },
        None => {
            RunDir(dir.to_path_buf()).read_config().with_context(|| format!("teacher {}", dir.display()))?
        }
    };
    ensure_same_split(&format!("teacher {}", dir.display()), config.seed, student.seed)?;
    let data = prepare(&config).with_context(|| format!("teacher {}: preparing its crops", dir.display()))?;
    let row_of: HashMap<PathBuf, usize> =
        data.train.samples.iter().enumerate().map(|(i, s)| (canonical(&s.path), i)).collect();
    let rows = keys
        .iter()
        .map(|k| {
            row_of.get(k).copied().with_context(|| {
                format!("teacher {}: {} is not among its training crops", dir.display(), k.display())
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let crops = data.train.subset(&rows);
    let (probs, female) = match &file {
        Some(file) => file.read(&crops)?,
        None => {
            let run = RunDir(dir.to_path_buf());
            let (_, model) =
                Model::load_best(&run, device).with_context(|| format!("teacher {}", dir.display()))?;
            if config.bn_stats == BnStats::Momentum {
                // As `export --recalibrate-bn` reads such a run.
                model.recalibrate_batch_norm(&bn_stats_crops(&data.train, config.seed), device)?;
            }
            read_distributions(&model, &crops, device)
                .with_context(|| format!("teacher {}", dir.display()))?
        }
    };
    let bins = probs.len() / rows.len().max(1);
    ensure!(
        bins == student.net.age_bins(),
        "teacher {}: reads ages into {bins} bins, this run's net into {}",
        dir.display(),
        student.net.age_bins()
    );
    Ok((probs, female))
}

/// A teacher-targets file's layout, in its metadata (v2: safetensors; v1 was a magic, a JSON
/// header and the floats).
const TARGETS_FORMAT: &str = "faceage-teacher-targets-v2";
const FORMAT_KEY: &str = "faceage.format";
const HEADER_KEY: &str = "faceage.targets";

/// What a teacher-targets file was made from; `bins` is read back, the rest must match.
#[derive(Serialize, Deserialize, PartialEq)]
struct TargetsHeader {
    teachers: Vec<PathBuf>,
    crops: usize,
    bins: usize,
    /// Of the training crops' paths in order: the rows' order.
    crops_hash: u64,
}

fn crops_hash(train: &CropSet) -> u64 {
    let names: Vec<u8> = train
        .samples
        .iter()
        .flat_map(|s| s.path.to_string_lossy().into_owned().into_bytes().into_iter().chain([0]))
        .collect();
    fnv1a(0, &names)
}

/// Tensors `age_probs` (f32, `[crops, bins]`) and `female` (f32, `[crops]`), the header as
/// JSON in the metadata; whole or not at all, so a killed run never leaves half a file to be
/// trusted later.
fn write_targets(file: &Path, header: &TargetsHeader, targets: &TeacherTargets) -> Result<()> {
    let crops = targets.female.len();
    let metadata = HashMap::from([
        (FORMAT_KEY.to_string(), TARGETS_FORMAT.to_string()),
        (HEADER_KEY.to_string(), serde_json::to_string(header)?),
    ]);
    let tensors = [
        ("age_probs", RawTensor::f32(vec![crops, targets.bins], &targets.age_probs)),
        ("female", RawTensor::f32(vec![crops], &targets.female)),
    ];
    tensor_file::save(file, &tensors, metadata)
}

/// `(bins, age_probs, female)` of a teacher-targets file whose header matches `want`.
fn read_targets(file: &Path, want: &TargetsHeader) -> Result<(usize, Vec<f32>, Vec<f32>)> {
    let targets = TensorFile::open(file)?;
    ensure!(targets.meta(FORMAT_KEY).ok() == Some(TARGETS_FORMAT), "not a teacher-targets file");
    let header: TargetsHeader = serde_json::from_str(targets.meta(HEADER_KEY)?)?;
    ensure!(TargetsHeader { bins: 0, ..header } == *want, "made for other teachers or other crops");
    let probs = targets.f32s("age_probs", &[want.crops, header.bins])?;
    let female = targets.f32s("female", &[want.crops])?;
    Ok((header.bins, probs, female))
}

/// A teacher given as a model file: read through tract as the board reads faces, with the
/// file's age distribution added to its outputs.
struct FileTeacher {
    label: String,
    contract: ModelContract,
    /// The split seed of the file's training, from its metadata.
    seed: u64,
    plan: Arc<TypedRunnableModel>,
    female_at: usize,
    probs_at: usize,
}

impl FileTeacher {
    fn open(path: &Path) -> Result<Self> {
        let label = format!("teacher {}", path.display());
        let mut proto = faceage_device::onnx::read_model(path).with_context(|| label.clone())?;
        let contract = ModelContract::from_metadata(&faceage_device::onnx::metadata(&proto), &label)?;
        let seed = file_split_seed(&contract, &label)?;
        let graph = proto.graph.as_mut().with_context(|| format!("{label}: the file holds no graph"))?;
        let produced: HashSet<String> = graph.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
        let distribution = AGE_DISTRIBUTIONS.iter().find(|d| produced.contains(**d)).with_context(|| {
            format!(
                "{label}: no age distribution in its graph ({}): only a net with the distribution head can teach",
                AGE_DISTRIBUTIONS.join(" or ")
            )
        })?;
        let female_at = graph
            .output
            .iter()
            .position(|o| o.name == contract.output_female)
            .with_context(|| format!("{label}: no output {:?}", contract.output_female))?;
        let probs_at = graph.output.len();
        graph.output.push(ValueInfoProto { name: distribution.to_string(), ..Default::default() });
        let plan = faceage_device::onnx::runnable(&proto, None, &label)?;
        Ok(Self { label, contract, seed, plan, female_at, probs_at })
    }

    /// The crops the file was trained on: its own input size and geometry.
    fn crop(&self) -> CropSettings {
        CropSettings::for_model(self.contract.input_size, self.contract.crop.clone())
    }

    /// As [`read_distributions`], in batches the board's way: crops normalised as the contract
    /// says, both views averaged inside the graph (a `--no-mirror` file reads once).
    fn read(&self, set: &CropSet) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut probs, mut female) = (Vec::new(), Vec::new());
        for crops in set.model_crop_batches(64) {
            let input = faceage_device::age_gender::input_tensor(&crops, &self.contract)?;
            let outputs = self
                .plan
                .run(tvec!(input.into()))
                .with_context(|| format!("{}: inference failed", self.label))?;
            let values = |at: usize| -> Result<Vec<f32>> {
                let tensor =
                    outputs.get(at).with_context(|| format!("{}: output {at} missing", self.label))?;
                Ok(tensor.to_plain_array_view::<f32>()?.iter().copied().collect())
            };
            female.extend(values(self.female_at)?);
            probs.extend(values(self.probs_at)?);
        }
        ensure!(
            female.len() == set.len() && probs.len() % set.len().max(1) == 0,
            "{}: {} readings of p(female) and {} probabilities for {} crops",
            self.label,
            female.len(),
            probs.len(),
            set.len()
        );
        Ok((probs, female))
    }
}

/// Each crop's age distribution (row-major `[crops, bins]`) and p(female), read mirrored.
fn read_distributions(model: &Model, set: &CropSet, device: &Device) -> Result<(Vec<f32>, Vec<f32>)> {
    let (mut probs, mut female) = (Vec::new(), Vec::new());
    for input in plain_batches(set, 256, device) {
        let (_, x) = input?;
        let (p, f) = model.net.infer_distribution(&x, true)?;
        probs.extend(p.flatten_all()?.to_vec1::<f32>()?);
        female.extend(f.to_vec1::<f32>()?);
    }
    Ok((probs, female))
}

/// Images are matched between runs by their real path: one run may name the data folder
/// relatively, another absolutely.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targets_file_is_read_back_only_for_the_same_teachers_and_crops() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("teacher-targets.safetensors");
        let targets = TeacherTargets {
            bins: 3,
            age_probs: vec![0.2, 0.5, 0.3, 1.0, 0.0, 0.0],
            female: vec![0.9, 0.1],
            weight: 0.5,
        };
        let header = TargetsHeader { teachers: vec!["runs/a".into()], crops: 2, bins: 3, crops_hash: 7 };
        write_targets(&file, &header, &targets).unwrap();
        let want = TargetsHeader { bins: 0, ..header };
        let (bins, probs, female) = read_targets(&file, &want).unwrap();
        assert_eq!((bins, probs, female), (3, targets.age_probs.clone(), targets.female.clone()));

        let other = TargetsHeader { teachers: vec!["runs/b".into()], crops: 2, bins: 0, crops_hash: 7 };
        assert!(format!("{:#}", read_targets(&file, &other).unwrap_err()).contains("other teachers"));
        let moved = TargetsHeader { crops_hash: 8, teachers: vec!["runs/a".into()], crops: 2, bins: 0 };
        assert!(read_targets(&file, &moved).is_err());

        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 4]).unwrap();
        let error = format!("{:#}", read_targets(&file, &want).unwrap_err());
        assert!(error.contains("not a whole safetensors file"), "{error}");
        // Another safetensors file (a checkpoint, say) is not taken for one.
        tensor_file::save(&file, &[("w", RawTensor::f32(vec![1], &[1.0]))], HashMap::new()).unwrap();
        assert!(
            format!("{:#}", read_targets(&file, &want).unwrap_err()).contains("not a teacher-targets file")
        );
    }

    #[test]
    fn teaching_gathers_the_rows_of_a_batch() {
        let targets = TeacherTargets {
            bins: 2,
            age_probs: vec![0.1, 0.9, 0.6, 0.4, 0.5, 0.5],
            female: vec![0.2, 0.7, 0.4],
            weight: 0.25,
        };
        let t = targets.teaching(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(t.age_probs.to_vec2::<f32>().unwrap(), vec![vec![0.5, 0.5], vec![0.1, 0.9]]);
        assert_eq!(t.female.to_vec1::<f32>().unwrap(), vec![0.4, 0.2]);
        assert_eq!(t.weight, 0.25);
    }
}
