//! Brings a model file written by an earlier exporter up to the current contract without
//! retraining. A file whose age head is a distribution already computes each face's
//! probability over ages (`age.mean` reads it); what it lacks is the sum of that mass per age
//! band, the `age_bands` output the counts are made from. Adding it is one MatMul against a
//! fixed 0/1 matrix: the ages, the gender and every weight stay byte for byte as they were.
//!
//! It can also fit an age map ([`AgeMap`]) on the validation split *as the board crops it*
//! and write it into the graph: a file trained on other crops (the trainer's padded chips
//! before the board and the trainer shared `find_faces`) reads the board's crops with a bias
//! the map takes out. The band shares are summed from the distribution before the map, so the
//! counts do not move with it.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use faceage_device::bands::{AGE_BANDS, age_band_index};
use faceage_device::{AgeGenderModel, ModelContract};
use image::{Rgb, RgbImage};
use prost::Message;
use rand::{Rng, SeedableRng};
use tract_onnx::pb::{ModelProto, StringStringEntryProto};

use super::graph::{Dim, Graph};
use super::{OUTPUT_AGE_BANDS, band_shares, mapped_age, predict_with_device};
use crate::age_map::AgeMap;
use crate::crops::CropSet;

/// What [`add_age_bands`] did, for the command to print.
#[derive(Debug, PartialEq, Eq)]
pub struct BandsAdded {
    /// The tensor the band shares are summed from.
    pub distribution: String,
    pub bins: usize,
}

/// An age map fitted on a file's board readings, and what it does to them.
#[derive(Debug)]
pub struct MapFit {
    pub map: AgeMap,
    pub faces: usize,
    pub mae_before: f64,
    pub mae_after: f64,
}

/// What [`upgrade_file`] did.
#[derive(Debug)]
pub struct Upgrade {
    pub bands: Option<BandsAdded>,
    pub age_map: Option<MapFit>,
}

/// Adds the `age_bands` output (and its contract keys) to `model`; `label` names the file in
/// errors. Refuses a file that already has it or that has no age distribution to sum.
pub fn add_age_bands(model: &mut ModelProto, label: &str) -> Result<BandsAdded> {
    let metadata = faceage_device::onnx::metadata(model);
    let mut contract = ModelContract::from_metadata(&metadata, label)?;
    if contract.output_age_bands.is_some() {
        bail!("{label}: already has an age_bands output; nothing to do");
    }
    let graph = model.graph.as_mut().with_context(|| format!("{label}: the file holds no graph"))?;
    // The distribution the age mean is read from: averaged over both views when mirrored.
    let distribution = graph
        .node
        .iter()
        .find(|n| n.name == "age.mean" && n.op_type == "MatMul")
        .and_then(|n| n.input.first().cloned())
        .with_context(|| {
            format!("{label}: no age distribution (node age.mean) in the graph; a regression head has no band shares")
        })?;
    let bins = graph
        .initializer
        .iter()
        .find(|t| t.name == "age.bins")
        .and_then(|t| t.dims.first().copied())
        .filter(|&d| d > 0)
        .with_context(|| format!("{label}: the initializer age.bins is missing"))? as usize;
    let taken = |name: &str| {
        graph.initializer.iter().any(|t| t.name == name)
            || graph.node.iter().any(|n| n.output.iter().any(|o| o == name))
    };
    for name in ["age.band_matrix", OUTPUT_AGE_BANDS] {
        if taken(name) {
            bail!("{label}: the graph already has a tensor named {name}");
        }
    }

    let mut added = Graph::default();
    band_shares(&mut added, &distribution, bins);
    graph.initializer.extend(added.initializers);
    graph.node.extend(added.nodes);
    graph
        .output
        .push(Graph::value_info(OUTPUT_AGE_BANDS, &[Dim::Named("N"), Dim::Fixed(AGE_BANDS.len() as i64)]));

    contract.output_age_bands = Some(OUTPUT_AGE_BANDS.into());
    for (key, value) in contract.to_metadata() {
        set_metadata(model, key, value);
    }
    Ok(BandsAdded { distribution, bins })
}

/// The metadata key [`add_age_map`] records the map under (an addition to the contract's keys:
/// the board does not need it, a reader of the file does).
pub const AGE_MAP_KEY: &str = "faceage.upgrade.age_map";

/// Sets a metadata entry, replacing the file's own; every other key the file carries stays.
fn set_metadata(model: &mut ModelProto, key: String, value: String) {
    match model.metadata_props.iter_mut().find(|p| p.key == key) {
        Some(prop) => prop.value = value,
        None => model.metadata_props.push(StringStringEntryProto { key, value }),
    }
}

/// Fits an age map on `model`'s readings of `set` (the validation split, cropped as the board
/// crops): least absolute deviations of the true age on the reading.
pub fn fit_age_map(model: &AgeGenderModel, set: &CropSet) -> Result<MapFit> {
    ensure!(!set.samples.is_empty(), "no faces to fit an age map on");
    ensure!(
        set.samples.iter().all(|s| s.age_group.is_none()),
        "an age map is fitted on exact ages; these faces are labelled with age groups"
    );
    let readings: Vec<f32> = predict_with_device(model, set)?.iter().map(|p| p.age).collect();
    let truths: Vec<f32> = set.samples.iter().map(|s| s.age).collect();
    let map = AgeMap::fit(&readings, &truths)?;
    let mae = |f: &dyn Fn(f32) -> f32| {
        readings.iter().zip(&truths).map(|(&r, &t)| (f(r) - t).abs() as f64).sum::<f64>()
            / readings.len() as f64
    };
    Ok(MapFit { faces: readings.len(), mae_before: mae(&|r| r), mae_after: mae(&|r| map.apply(r)), map })
}

/// Writes `map` between the age reading and the `age` output. Refuses a file that has a map.
pub fn add_age_map(model: &mut ModelProto, map: &AgeMap, label: &str) -> Result<()> {
    let contract = ModelContract::from_metadata(&faceage_device::onnx::metadata(model), label)?;
    let graph = model.graph.as_mut().with_context(|| format!("{label}: the file holds no graph"))?;
    ensure!(
        !graph.node.iter().any(|n| n.name.starts_with("age.map")),
        "{label}: already reads its age through an age map"
    );
    let output = graph
        .node
        .iter()
        .position(|n| n.op_type == "Reshape" && n.output.first() == Some(&contract.output_age))
        .with_context(|| format!("{label}: no Reshape node gives the {} output", contract.output_age))?;
    let reading = graph.node[output].input[0].clone();
    let mut added = Graph::default();
    let mapped = mapped_age(&mut added, map, &reading);
    graph.initializer.extend(added.initializers);
    // Before the output node, so the node list stays in topological order.
    graph.node.splice(output..output, added.nodes);
    let node = graph.node.iter_mut().find(|n| n.output.first() == Some(&contract.output_age));
    node.context("the age output node went missing")?.input[0] = mapped;
    let knots = |v: &[f32]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(",");
    set_metadata(
        model,
        AGE_MAP_KEY.into(),
        format!("readings {} -> ages {}", knots(&map.knots), knots(&map.values)),
    );
    Ok(())
}

/// Reads `input`, adds the band output when it lacks one and, given a validation split
/// (`map_on`), an age map fitted on it; checks the result with the board's own library and
/// writes it to `output` (which may be `input`: [`super::write`] replaces a file whole).
pub fn upgrade_file(input: &Path, output: &Path, map_on: Option<&CropSet>) -> Result<Upgrade> {
    let label = input.display().to_string();
    let before = faceage_device::onnx::read_model(input)?;
    let original = AgeGenderModel::from_bytes(&before.encode_to_vec(), &label)?;
    let mut after = before.clone();
    let bands = if original.contract().output_age_bands.is_none() {
        Some(add_age_bands(&mut after, &label)?)
    } else {
        None
    };
    let age_map = match map_on {
        Some(set) => {
            let fit = fit_age_map(&original, set)?;
            add_age_map(&mut after, &fit.map, &label)?;
            Some(fit)
        }
        None => None,
    };
    if bands.is_none() && age_map.is_none() {
        bail!("{label}: already has an age_bands output; nothing to do");
    }
    let bytes = after.encode_to_vec();
    check_readings(&original, &bytes, age_map.as_ref().map(|f| &f.map), &label)?;

    super::write(&after, output)?;
    Ok(Upgrade { bands, age_map })
}

/// What [`temper_file`] did: the file's band temperature and weights before and after.
#[derive(Debug, PartialEq)]
pub struct Tempered {
    pub before: Option<f32>,
    pub after: f32,
    pub weights_before: Option<[f32; 6]>,
    pub weights_after: Option<[f32; 6]>,
}

/// Puts a temperature `factor` and band `weights` on the band shares of the file `input` (on
/// top of any it has: `faceage eval` fits them on the file's own readings) and writes it to
/// `output`, checked with the board's library: ages and gender as before, shares as the old
/// ones tempered by `factor`, then weighted.
///
/// The file keeps one temperature and one set of weights, `w p^(1/T)`: on top of them,
/// `w2 (w p^(1/T))^(1/f)` is `(w2 w^(1/f)) p^(1/(T f))`.
pub fn temper_file(input: &Path, output: &Path, factor: f32, weights: Option<[f32; 6]>) -> Result<Tempered> {
    let label = input.display().to_string();
    ensure!(factor.is_finite() && factor > 0.0, "--band-temperature {factor}: give a positive number");
    if let Some(w) = &weights {
        ensure!(
            w.iter().all(|w| w.is_finite() && *w > 0.0),
            "--band-weights {w:?}: give six positive numbers"
        );
    }
    let mut model = faceage_device::onnx::read_model(input)?;
    let original = AgeGenderModel::from_bytes(&model.encode_to_vec(), &label)?;
    ensure!(
        original.contract().output_age_bands.is_some(),
        "{label}: has no band shares to temper; run `faceage-host upgrade {label}` first"
    );
    let before = original.contract().band_temperature;
    let after = before.unwrap_or(1.0) * factor;
    let weights_before = original.contract().band_weights;
    let weights_after = match (weights_before, weights) {
        (None, None) => None,
        (old, new) => {
            let old = old.unwrap_or([1.0; 6]).map(|w| w.powf(1.0 / factor));
            let new = new.unwrap_or([1.0; 6]);
            Some(std::array::from_fn(|k| old[k] * new[k]))
        }
    };
    set_metadata(&mut model, faceage_device::model_file::BAND_TEMPERATURE_KEY.into(), after.to_string());
    if let Some(w) = &weights_after {
        let text = faceage_device::model_file::band_weights_text(w);
        set_metadata(&mut model, faceage_device::model_file::BAND_WEIGHTS_KEY.into(), text);
    }
    let bytes = model.encode_to_vec();
    let new = AgeGenderModel::from_bytes(&bytes, &format!("{label} (tempered)"))?;
    let crops = textured_crops(new.input_size());
    for (i, (x, y)) in original.predict(&crops)?.iter().zip(&new.predict(&crops)?).enumerate() {
        let (Some(old), Some(shares)) = (x.age_bands, y.age_bands) else {
            bail!("{label}: test input {i} has no band shares")
        };
        let want = faceage_device::bands::calibrated(&old, Some(factor), weights.as_ref());
        ensure!(
            x.age == y.age
                && x.female == y.female
                && want.iter().zip(&shares).all(|(a, b)| (a - b).abs() < 1e-4),
            "{label}: the tempered file reads test input {i} as {y:?}, expected {x:?} with shares {want:?}"
        );
    }
    super::write(&model, output)?;
    Ok(Tempered { before, after, weights_before, weights_after })
}

/// Faces are not needed to compare two graphs: textured inputs spread the readings.
fn textured_crops(size: u32) -> Vec<RgbImage> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..16)
        .map(|_| RgbImage::from_fn(size, size, |_, _| Rgb([rng.random(), rng.random(), rng.random()])))
        .collect()
}

/// The upgraded file must read every face as the original did (through `map` when one was
/// added), and its band shares must sum to one and agree with the original reading (a median:
/// at most half the mass lies below its band and at most half above).
fn check_readings(old: &AgeGenderModel, upgraded: &[u8], map: Option<&AgeMap>, label: &str) -> Result<()> {
    let new = AgeGenderModel::from_bytes(upgraded, &format!("{label} (upgraded)"))?;
    let crops = textured_crops(new.input_size());
    let (a, b) = (old.predict(&crops)?, new.predict(&crops)?);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let expected = map.map_or(x.age, |m| m.apply(x.age));
        ensure!(
            (expected - y.age).abs() < 1e-3 && (x.female - y.female).abs() < 1e-5,
            "{label}: the upgraded file reads test input {i} differently (age {} expected {}, female {} vs {})",
            y.age,
            expected,
            x.female,
            y.female
        );
        let shares =
            y.age_bands.with_context(|| format!("{label}: the upgraded file gives no band shares"))?;
        let total: f32 = shares.iter().sum();
        ensure!((total - 1.0).abs() < 1e-3, "{label}: band shares of test input {i} sum to {total}, not 1");
        let band = age_band_index(x.age);
        let below: f32 = shares[..band].iter().sum();
        let above: f32 = shares[band + 1..].iter().sum();
        ensure!(
            below <= 0.5 + 0.02 && above <= 0.5 + 0.02,
            "{label}: band shares {shares:?} of test input {i} disagree with its age {}",
            y.age
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::age_map::KNOTS;

    fn shipped() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/faceage-f32.onnx")
    }

    /// A file as the exporter wrote it before the band output existed.
    fn without_bands() -> ModelProto {
        let mut model = faceage_device::onnx::read_model(&shipped()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        if graph.output.iter().any(|o| o.name == OUTPUT_AGE_BANDS) {
            graph.output.retain(|o| o.name != OUTPUT_AGE_BANDS);
            graph.node.retain(|n| n.output.iter().all(|o| o != OUTPUT_AGE_BANDS));
            graph.initializer.retain(|t| t.name != "age.band_matrix");
            model.metadata_props.retain(|p| !p.key.starts_with("faceage.output.age_bands"));
        }
        model
    }

    #[test]
    fn an_old_file_gains_band_shares_and_reads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.onnx");
        super::super::write(&without_bands(), &old).unwrap();
        let new = dir.path().join("new.onnx");
        let done = upgrade_file(&old, &new, None).unwrap();
        assert!(done.bands.as_ref().is_some_and(|b| b.bins > 60), "{done:?}");
        let model = AgeGenderModel::load(&new).unwrap();
        assert_eq!(model.contract().output_age_bands.as_deref(), Some(OUTPUT_AGE_BANDS));
        // The other keys survive: the training record is still there.
        let before = AgeGenderModel::load(&old).unwrap();
        assert_eq!(model.contract().train_data, before.contract().train_data);
        assert_eq!(model.contract().metrics, before.contract().metrics);
        // Twice is refused, in place too, and the file is left as it was.
        let bytes = std::fs::read(&new).unwrap();
        let err = upgrade_file(&new, &new, None).unwrap_err().to_string();
        assert!(err.contains("already has an age_bands output"), "{err}");
        assert_eq!(std::fs::read(&new).unwrap(), bytes);
    }

    #[test]
    fn an_age_map_moves_the_age_output_and_nothing_else() {
        let original = without_bands();
        let label = "old.onnx";
        let old = AgeGenderModel::from_bytes(&original.encode_to_vec(), label).unwrap();
        let mut model = original.clone();
        add_age_bands(&mut model, label).unwrap();
        let map = AgeMap { knots: KNOTS.to_vec(), values: vec![1.0, 23.0, 45.0, 64.0, 100.0] };
        add_age_map(&mut model, &map, label).unwrap();
        // The check the command runs: ages through the map, gender and band shares as before.
        check_readings(&old, &model.encode_to_vec(), Some(&map), label).unwrap();
        let recorded = model.metadata_props.iter().find(|p| p.key == AGE_MAP_KEY).unwrap();
        assert!(recorded.value.ends_with("1.00,23.00,45.00,64.00,100.00"), "{}", recorded.value);
        // Without the map the same check fails: it can tell.
        assert!(check_readings(&old, &model.encode_to_vec(), None, label).is_err());
        let err = add_age_map(&mut model, &map, label).unwrap_err().to_string();
        assert!(err.contains("already reads its age through an age map"), "{err}");
    }

    #[test]
    fn a_file_without_an_age_distribution_is_refused_by_name() {
        let mut model = without_bands();
        model.graph.as_mut().unwrap().node.retain(|n| n.name != "age.mean");
        let err = add_age_bands(&mut model, "regression.onnx").unwrap_err().to_string();
        assert!(err.contains("regression.onnx") && err.contains("no age distribution"), "{err}");
    }

    #[test]
    fn a_band_temperature_tempers_the_shares_and_stacks_on_the_files_own() {
        let dir = tempfile::tempdir().unwrap();
        let once = dir.path().join("once.onnx");
        // The shipped file may carry a temperature of its own: the new one stacks on it.
        let own = AgeGenderModel::load(&shipped()).unwrap().contract().band_temperature;
        let done = temper_file(&shipped(), &once, 0.8, None).unwrap();
        assert_eq!(done.before, own);
        assert!((done.after - own.unwrap_or(1.0) * 0.8).abs() < 1e-6, "{done:?}");
        let file = AgeGenderModel::load(&once).unwrap();
        assert_eq!(file.contract().band_temperature, Some(done.after));
        let twice = dir.path().join("twice.onnx");
        let again = temper_file(&once, &twice, 1.5, None).unwrap();
        assert!((again.after - done.after * 1.5).abs() < 1e-5, "{again:?}");
        let done = again;
        // The board reads the shares sharper or softer, the ages and gender as before.
        let (plain, tempered) =
            (AgeGenderModel::load(&shipped()).unwrap(), AgeGenderModel::load(&twice).unwrap());
        let crops = textured_crops(plain.input_size());
        let (a, b) = (plain.predict(&crops).unwrap(), tempered.predict(&crops).unwrap());
        let want = faceage_device::bands::tempered(&a[0].age_bands.unwrap(), done.after / own.unwrap_or(1.0));
        assert!(want.iter().zip(&b[0].age_bands.unwrap()).all(|(x, y)| (x - y).abs() < 1e-4));
        assert_ne!(a[0].age_bands, b[0].age_bands);
        let err = temper_file(&shipped(), &twice, 0.0, None).unwrap_err().to_string();
        assert!(err.contains("positive"), "{err}");
        let bandless = dir.path().join("old.onnx");
        super::super::write(&without_bands(), &bandless).unwrap();
        let err = temper_file(&bandless, &twice, 0.9, None).unwrap_err().to_string();
        assert!(err.contains("old.onnx") && err.contains("no band shares"), "{err}");
    }

    #[test]
    fn band_weights_weigh_the_tempered_shares_and_stack_on_the_files_own() {
        let dir = tempfile::tempdir().unwrap();
        let (once, twice) = (dir.path().join("once.onnx"), dir.path().join("twice.onnx"));
        let plain = AgeGenderModel::load(&shipped()).unwrap();
        let crops = textured_crops(plain.input_size());
        let read = |path: &Path| -> Vec<faceage_device::bands::BandShares> {
            let model = AgeGenderModel::load(path).unwrap();
            model.predict(&crops).unwrap().iter().map(|e| e.age_bands.unwrap()).collect()
        };
        let (w1, w2) = ([0.5, 0.25, 1.5, 1.0, 1.4, 2.2], [1.2, 1.0, 0.8, 1.0, 1.0, 1.5]);
        let done = temper_file(&shipped(), &once, 0.9, Some(w1)).unwrap();
        assert!(done.weights_after.is_some(), "{done:?}");
        let again = temper_file(&once, &twice, 1.2, Some(w2)).unwrap();
        assert_eq!(again.weights_before, done.weights_after);
        let file = AgeGenderModel::load(&twice).unwrap();
        assert_eq!(file.contract().band_weights, again.weights_after, "in the metadata");
        // Each step as the board reads it: tempered, then weighted, on top of the last.
        use faceage_device::bands::calibrated;
        for (i, (a, b)) in read(&shipped()).iter().zip(read(&twice)).enumerate() {
            let want = calibrated(&calibrated(a, Some(0.9), Some(&w1)), Some(1.2), Some(&w2));
            assert!(want.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4), "input {i}: {want:?} vs {b:?}");
        }
        // Only a temperature on a weighted file keeps the weights' effect the same.
        let third = dir.path().join("third.onnx");
        temper_file(&twice, &third, 0.7, None).unwrap();
        for (a, b) in read(&twice).iter().zip(read(&third)) {
            let want = calibrated(a, Some(0.7), None);
            assert!(want.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4), "{want:?} vs {b:?}");
        }
        let err = temper_file(&shipped(), &third, 1.0, Some([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])).unwrap_err();
        assert!(err.to_string().contains("--band-weights"), "{err}");
    }
}
