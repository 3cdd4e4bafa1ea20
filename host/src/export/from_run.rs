//! A trained run's model written out as the board's files: the f32 file (checked against
//! candle through tract) and, when asked, the int8 file (measured with the board's code, its
//! figures written into it). `faceage-host export` parses its arguments, calls these and
//! prints the reports.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;
use faceage_device::{AgeGenderModel, ModelContract, QuantFormat};

use super::quantize::{self, Calibration};
use super::{Agreement, Encoding, FoldedNet, PlainF32, RecordedSplit};
use crate::augment::{MEAN, STD};
use crate::config::TrainConfig;
use crate::crops::CropSet;
use crate::metrics::{Evaluation, Prediction, evaluate};
use crate::prepare::Prepared;
use crate::trained::Model;
use crate::{FAIRFACE_CREDIT, UTKFACE_LICENSE};

/// How the f32 file is made.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub out: PathBuf,
    /// Each face read as is and mirrored, averaged (the shipped reading).
    pub mirror: bool,
    /// Largest tolerated difference between tract and candle (years and probability).
    pub tolerance: f32,
    /// The command that trained the run, and how the file differs from the run's kept model.
    pub train_command: String,
}

/// How the int8 file is made.
#[derive(Clone, Debug)]
pub struct QuantOptions {
    pub format: QuantFormat,
    pub calibration: Calibration,
    /// Training crops the activation ranges are measured on.
    pub calibration_crops: usize,
    pub out: PathBuf,
}

/// The int8 file beside `f32_out`: its name with "f32" replaced by "int8" (or "int8-qop"),
/// else `faceage-int8.onnx` in its folder.
pub fn int8_path(f32_out: &Path, format: QuantFormat) -> PathBuf {
    let suffix = if format == QuantFormat::Int8Qoperator { "int8-qop" } else { "int8" };
    let name = f32_out.file_name().map(|n| n.to_string_lossy().replace("f32", suffix)).unwrap_or_default();
    let name = if name.contains(suffix) { name } else { format!("faceage-{suffix}.onnx") };
    f32_out.with_file_name(name)
}

/// What was written: the f32 file.
pub struct ExportReport {
    pub path: PathBuf,
    pub bytes: usize,
    pub val: Evaluation,
    pub test: Evaluation,
    /// tract against candle on the test crops.
    pub agreement: Agreement,
    pub contract: ModelContract,
    pub folded: FoldedNet,
}

/// What was written: the int8 file, against the f32 reading.
pub struct QuantReport {
    pub path: PathBuf,
    pub bytes: usize,
    pub format: QuantFormat,
    pub test: Evaluation,
    pub mae_change: f64,
    pub accuracy_change: f64,
    pub against_f32: Agreement,
}

/// The figures a file carries: validation and test MAE and gender accuracy.
fn metrics_map(val: &Evaluation, test: &Evaluation) -> BTreeMap<String, f64> {
    [
        ("val.age_mae", val.overall.age_mae),
        ("val.gender_accuracy", val.overall.gender_accuracy),
        ("test.age_mae", test.overall.age_mae),
        ("test.gender_accuracy", test.overall.gender_accuracy),
        ("test.faces", test.overall.count as f64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The test crops, or the validation ones for a run too small to have any.
fn test_set(data: &Prepared) -> &CropSet {
    if data.test.is_empty() { &data.val } else { &data.test }
}

/// Whether FairFace faces were among the training faces, whose CC BY 4.0 licence asks every
/// model trained on them to credit it: a face from a folder named FairFace, or labelled with a
/// race group only FairFace has.
fn trained_on_fairface(samples: &[crate::data::Sample]) -> bool {
    samples.iter().any(|s| {
        s.race.is_some_and(|r| r >= crate::data::UTKFACE_RACES)
            || s.path.to_string_lossy().to_ascii_lowercase().contains("fairface")
    })
}

/// The contract of the f32 file of a run (its figures still to be filled in).
fn contract_for(config: &TrainConfig, data: &Prepared, folded: &FoldedNet, command: &str) -> ModelContract {
    ModelContract {
        name: format!("faceage-cnn{}", config.net.input_size),
        input_name: super::INPUT_NAME.into(),
        input_size: config.net.input_size,
        mean: MEAN,
        std: STD,
        crop: config.crop.geometry.clone(),
        detector: "blazeface-back-256, framed (detect::FramedDetector)".into(),
        output_age: super::OUTPUT_AGE.into(),
        output_female: super::OUTPUT_FEMALE.into(),
        output_age_std: folded.age_distribution.then(|| super::OUTPUT_AGE_STD.into()),
        output_age_bands: folded.age_distribution.then(|| super::OUTPUT_AGE_BANDS.into()),
        band_temperature: None,
        band_weights: None,
        quant_format: QuantFormat::None,
        quant_details: "f32 weights and activations".into(),
        train_data: RecordedSplit {
            train: data.train.len(),
            val: data.val.len(),
            test: data.test.len(),
            seed: config.seed,
        }
        .describe(&crate::config::describe_sources(&config.data)),
        split_seed: Some(config.seed),
        train_license: if trained_on_fairface(&data.train.samples) {
            format!("{UTKFACE_LICENSE} {FAIRFACE_CREDIT}")
        } else {
            UTKFACE_LICENSE.into()
        },
        train_command: command.to_string(),
        metrics: BTreeMap::new(),
    }
}

/// Writes the f32 file of `model` (trained as `config` on `data`), measured on the
/// validation and test crops, and checks that tract reads it as candle does.
pub fn export_f32(
    model: &Model,
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
    options: &ExportOptions,
) -> Result<ExportReport> {
    let measure = |set: &CropSet| -> Result<Evaluation> {
        Ok(evaluate(&set.samples, &model.predict_mirrored(set, device, options.mirror)?))
    };
    let val = measure(&data.val)?;
    let test = measure(test_set(data))?;
    let folded = FoldedNet {
        mirror: options.mirror,
        age_map: model.age_map.clone(),
        ..FoldedNet::from_net(&model.net)?
    };
    let contract = ModelContract {
        metrics: metrics_map(&val, &test),
        ..contract_for(config, data, &folded, &options.train_command)
    };
    let bytes = super::write(&super::build_model(&folded, &contract, &PlainF32)?, &options.out)?;
    let label = options.out.display().to_string();
    let agreement = super::verify_against_candle(
        &bytes,
        &label,
        model,
        options.mirror,
        test_set(data),
        device,
        options.tolerance,
    )?;
    Ok(ExportReport { path: options.out.clone(), bytes: bytes.len(), val, test, agreement, contract, folded })
}

/// Writes the quantized file of an exported model: ranges calibrated on training crops,
/// measured with the board's code on the validation and test crops, its figures written into
/// it, its size checked.
pub fn export_quantized(
    model: &Model,
    exported: &ExportReport,
    data: &Prepared,
    device: &Device,
    options: &QuantOptions,
) -> Result<QuantReport> {
    let crops = quantize::calibration_crops(&data.train, options.calibration_crops)?;
    let ranges = quantize::calibrate(&exported.folded, &exported.contract, &crops, options.calibration)?;
    let encoding: Box<dyn Encoding> = match options.format {
        QuantFormat::Int8Qoperator => Box::new(quantize::QOperator { ranges }),
        _ => Box::new(quantize::Qdq { ranges }),
    };
    let mut contract = ModelContract {
        quant_format: options.format,
        quant_details: quantize::describe(options.format, options.calibration, crops.len()),
        ..exported.contract.clone()
    };
    // Measure the quantized file with the board's code, then write its figures into it.
    let label = options.out.display().to_string();
    let draft =
        super::write(&super::build_model(&exported.folded, &contract, encoding.as_ref())?, &options.out)?;
    let quantized = AgeGenderModel::from_bytes(&draft, &label)?;
    let read = |set: &CropSet| super::predict_with_device(&quantized, set);
    let val = evaluate(&data.val.samples, &read(&data.val)?);
    let test_predictions: Vec<Prediction> = read(test_set(data))?;
    let test = evaluate(&test_set(data).samples, &test_predictions);
    contract.metrics = metrics_map(&val, &test);
    let bytes =
        super::write(&super::build_model(&exported.folded, &contract, encoding.as_ref())?, &options.out)?;
    quantize::check_size(bytes.len(), model.params.count_trainable())?;
    let f32_predictions = model.predict_mirrored(test_set(data), device, exported.folded.mirror)?;
    Ok(QuantReport {
        path: options.out.clone(),
        bytes: bytes.len(),
        format: options.format,
        mae_change: test.overall.age_mae - exported.test.overall.age_mae,
        accuracy_change: test.overall.gender_accuracy - exported.test.overall.gender_accuracy,
        test,
        against_f32: super::compare(&f32_predictions, &test_predictions),
    })
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} bytes, f32; test MAE {:.2}, gender accuracy {:.2}%; tract vs candle on {} crops: max |age diff| {:.2e}, max |p diff| {:.2e}",
            self.path.display(),
            self.bytes,
            self.test.overall.age_mae,
            self.test.overall.gender_accuracy,
            self.agreement.faces,
            self.agreement.max_age_diff,
            self.agreement.max_female_diff
        )
    }
}

impl fmt::Display for QuantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} bytes, {}; test MAE {:.2} ({:+.3} vs f32), gender accuracy {:.2}% ({:+.2} points); max |age diff| {:.2}, max |p diff| {:.3} over {} crops",
            self.path.display(),
            self.bytes,
            self.format.as_str(),
            self.test.overall.age_mae,
            self.mae_change,
            self.test.overall.gender_accuracy,
            self.accuracy_change,
            self.against_f32.max_age_diff,
            self.against_f32.max_female_diff,
            self.against_f32.faces
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_int8_file_is_named_after_the_f32_one() {
        let int8 = |p: &str, f| int8_path(Path::new(p), f);
        assert_eq!(
            int8("models/faceage-f32.onnx", QuantFormat::Int8Qdq),
            Path::new("models/faceage-int8.onnx")
        );
        assert_eq!(int8("out/a-f32.onnx", QuantFormat::Int8Qoperator), Path::new("out/a-int8-qop.onnx"));
        assert_eq!(int8("out/model.onnx", QuantFormat::Int8Qdq), Path::new("out/faceage-int8.onnx"));
    }
}
