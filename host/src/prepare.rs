//! Data preparation for a run: labels read, faces cropped by the board's own path (cached),
//! and split as the run's seed splits them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::{DataSpec, TrainConfig};
use crate::crops::{CropSet, CropSettings, ensure_some};
use crate::data::{Rejected, Sample, Split, fnv1a, load_dataset, mix_seed, split_of};

/// Crops of the three splits, and every input that could not be used.
pub struct Prepared {
    pub train: Arc<CropSet>,
    /// With `--scene-views`: each training face twice, its plain crop and then, in the same
    /// order, its crop in a camera-sized frame ([`CropSet::with_second_views`]).
    pub train_views: Option<Arc<CropSet>>,
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

/// Loads the labels, builds (or loads) the crops and splits them as `config`'s run did.
pub fn prepare(config: &TrainConfig, detector: &Path, cache_dir: &Path, threads: usize) -> Result<Prepared> {
    prepare_data(&config.data_spec(), detector, cache_dir, threads)
}

/// What training adds with `--scene-views`: each training face's crop in a camera-sized frame
/// as its second view (made once and cached). Evaluation and export read the plain crops only.
pub fn add_scene_views(
    prepared: &mut Prepared,
    config: &TrainConfig,
    detector: &Path,
    cache_dir: &Path,
    threads: usize,
) -> Result<()> {
    if config.scene_views <= 0.0 {
        return Ok(());
    }
    let settings = CropSettings { in_scene: true, ..config.crop.clone() };
    let (scene, _) =
        CropSet::build_or_load(&prepared.train.samples, &settings, detector, cache_dir, threads)?;
    let (views, found) = prepared.train.with_second_views(&scene)?;
    eprintln!(
        "scene views: {found} of {} training faces found in a camera-sized frame (the rest read plain)",
        prepared.train.len()
    );
    prepared.train_views = Some(Arc::new(views));
    Ok(())
}

/// Loads the labels of every source, builds (or loads) the crops and splits them: each
/// source by the seeded hash of its own file names, so adding a source moves no face of
/// another between train, validation and test.
pub fn prepare_data(spec: &DataSpec, detector: &Path, cache_dir: &Path, threads: usize) -> Result<Prepared> {
    ensure!(!spec.data.is_empty(), "no data: give --data (a UTKFace folder or a CSV manifest)");
    ensure!(spec.data.len() <= u8::MAX as usize, "at most {} data sources", u8::MAX);
    let mut samples = Vec::new();
    let mut rejected = Vec::new();
    let mut labelled = Vec::new();
    for (index, source) in spec.data.iter().enumerate() {
        let (mut of_source, unusable) = load_dataset(&source.path)?;
        of_source.iter_mut().for_each(|s| s.source = index as u8);
        labelled.push((of_source.len(), unusable.len()));
        samples.extend(of_source);
        rejected.extend(unusable);
    }
    if let Some(limit) = spec.limit {
        // A seeded choice spread over the whole set, not the first names alphabetically; by
        // file name, as the split is, so it does not hang on how the folder was named.
        let name =
            |s: &Sample| s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        samples.sort_by_key(|s| fnv1a(spec.seed ^ 0x5eed, name(s).as_bytes()));
        samples.truncate(limit);
    }
    samples.sort_by(|a, b| (a.source, &a.path).cmp(&(b.source, &b.path)));
    let (crops, failed) = CropSet::build_or_load(&samples, spec.crop, detector, cache_dir, threads)?;
    if spec.data.len() > 1 || !failed.is_empty() {
        print_sources(spec, &labelled, &samples, &failed);
    }
    rejected.extend(failed);
    let pick = |want: Split| -> Vec<usize> {
        (0..crops.len()).filter(|&i| split_of(&crops.samples[i].path, spec.seed) == want).collect()
    };
    let prepared = Prepared {
        train: Arc::new(crops.subset(&pick(Split::Train))),
        train_views: None,
        val: crops.subset(&pick(Split::Val)),
        test: crops.subset(&pick(Split::Test)),
        rejected,
    };
    ensure_some(&prepared.train, "training")?;
    ensure_some(&prepared.val, "validation")?;
    Ok(prepared)
}

/// Each source's images: labelled, rows rejected, faces not found, and why no face was found
/// (every image without a face is also listed by name in the run's `rejected.txt`).
fn print_sources(spec: &DataSpec, labelled: &[(usize, usize)], samples: &[Sample], failed: &[Rejected]) {
    let source_of: std::collections::HashMap<&Path, u8> =
        samples.iter().map(|s| (s.path.as_path(), s.source)).collect();
    for (index, (source, (images, bad_rows))) in spec.data.iter().zip(labelled).enumerate() {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for r in failed.iter().filter(|r| source_of.get(r.path.as_path()) == Some(&(index as u8))) {
            *reasons.entry(r.reason.as_str()).or_default() += 1;
        }
        let lost: usize = reasons.values().sum();
        let why: Vec<String> = reasons.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
        eprintln!(
            "data {}: {images} labelled images (weight {}), {bad_rows} rows unusable, {lost} without a usable face{}",
            source.path.display(),
            source.weight,
            if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
        );
    }
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

/// Training crops the batch-norm statistics are re-estimated on: a seeded choice of this
/// many (and their mirror images): PreciseBN's 8,192 images. Using every training crop instead
/// read no better (model card, "Training").
pub const BN_STATS_CROPS: usize = 4096;

/// The crops of `train` that [`crate::trained::Model::recalibrate_batch_norm`] is given: the same for a given
/// seed, so a run's kept statistics can be computed again by `eval` and `export`.
pub fn bn_stats_crops(train: &CropSet, seed: u64) -> CropSet {
    let mut indices: Vec<usize> = (0..train.len()).collect();
    if indices.len() > BN_STATS_CROPS {
        indices.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(seed, 0xb7, 0)));
        indices.truncate(BN_STATS_CROPS);
        indices.sort_unstable();
    }
    train.subset(&indices)
}
