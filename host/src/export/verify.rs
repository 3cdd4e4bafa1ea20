//! Model files measured with the board's own code on a held-out split, each against a
//! reference file (the f32 one), and the bars an int8 file must meet against it.

use std::fmt;
use std::path::PathBuf;

use faceage_device::AgeGenderModel;

use super::{Agreement, compare, predict_with_device};
use crate::crops::CropSet;
use crate::metrics::{Evaluation, Prediction, evaluate};

/// What a quantized file may lose against its f32 file (the design's int8 bars).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bars {
    /// Years of test MAE, either way.
    pub max_mae_change: f64,
    /// Points of gender accuracy, either way.
    pub max_accuracy_change: f64,
    /// The file is smaller than this.
    pub max_bytes: u64,
}

impl Default for Bars {
    fn default() -> Self {
        Self { max_mae_change: 0.15, max_accuracy_change: 0.5, max_bytes: 500_000 }
    }
}

impl Bars {
    pub fn met(&self, mae_change: f64, accuracy_change: f64, bytes: u64) -> bool {
        mae_change.abs() <= self.max_mae_change
            && accuracy_change.abs() <= self.max_accuracy_change
            && bytes < self.max_bytes
    }
}

impl fmt::Display for Bars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MAE within {}, accuracy within {}, file < {} KB",
            self.max_mae_change,
            self.max_accuracy_change,
            self.max_bytes / 1000
        )
    }
}

/// A file against the reference.
pub struct Comparison {
    pub mae_change: f64,
    pub accuracy_change: f64,
    pub agreement: Agreement,
    pub bars_met: bool,
}

/// One file's figures on the split.
pub struct FileFigures {
    pub path: PathBuf,
    pub bytes: u64,
    /// Its quantization, in words.
    pub quantization: String,
    pub evaluation: Evaluation,
    /// None for the reference itself.
    pub against_reference: Option<Comparison>,
}

/// Reads `set` with every model (the first is the reference) and compares each with it.
pub fn measure_files(
    files: &[(PathBuf, AgeGenderModel)],
    set: &CropSet,
    bars: &Bars,
) -> anyhow::Result<Vec<FileFigures>> {
    let mut figures: Vec<FileFigures> = Vec::with_capacity(files.len());
    let mut reference_predictions: Option<Vec<Prediction>> = None;
    for (path, model) in files {
        let predictions = predict_with_device(model, set)?;
        let evaluation = evaluate(&set.samples, &predictions);
        let bytes = model.file_size();
        let against_reference = match (&reference_predictions, figures.first()) {
            (Some(reference), Some(first)) => {
                let mae_change = evaluation.overall.age_mae - first.evaluation.overall.age_mae;
                let accuracy_change =
                    evaluation.overall.gender_accuracy - first.evaluation.overall.gender_accuracy;
                Some(Comparison {
                    mae_change,
                    accuracy_change,
                    agreement: compare(reference, &predictions),
                    bars_met: bars.met(mae_change, accuracy_change, bytes),
                })
            }
            _ => {
                reference_predictions = Some(predictions);
                None
            }
        };
        let contract = model.contract();
        figures.push(FileFigures {
            path: path.clone(),
            bytes,
            quantization: format!("{}: {}", contract.quant_format.as_str(), contract.quant_details),
            evaluation,
            against_reference,
        });
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_int8_bars_hold_either_way_and_on_size() {
        let bars = Bars::default();
        assert!(bars.met(0.15, -0.5, 499_999));
        assert!(bars.met(-0.1, 0.2, 428_360));
        assert!(!bars.met(0.16, 0.0, 1000), "MAE worse by more than 0.15");
        assert!(!bars.met(0.0, -0.51, 1000), "accuracy lower by more than half a point");
        assert!(!bars.met(0.0, 0.0, 500_000), "a file of 500 KB is not under 500 KB");
        assert_eq!(bars.to_string(), "MAE within 0.15, accuracy within 0.5, file < 500 KB");
    }
}
