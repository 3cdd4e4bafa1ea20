//! The subcommands of `faceage`, one module each, and the options they share.

pub mod bench;
pub mod classify;
#[cfg(feature = "mqtt")]
pub mod collect;
pub mod eval;
#[cfg(feature = "mqtt")]
pub mod fleet;
#[cfg(feature = "kiosk")]
pub mod kiosk;
pub mod report;
pub mod run;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args as ClapArgs;
use faceage_device::detect::{Framing, load_board_detector};
use faceage_device::{AgeGenderModel, BlazeFaceVariant, Pipeline};

/// The model `classify` and `eval` read unless told otherwise: each face read as is and
/// mirrored, the two readings averaged (worth 0.1 years and most of a point on one photo).
pub const MODEL_FILE: &str = "faceage-f32.onnx";
/// The model `run` reads unless told otherwise: the same net, int8, each face read once. `run`
/// fuses each person's readings over the frames of their track, where the mirrored second
/// reading bought nothing measurable and cost half of the classifier's time (model card).
pub const RUN_MODEL_FILE: &str = "faceage-run-int8.onnx";

/// Model files, shared by every subcommand that looks at faces.
#[derive(ClapArgs, Clone, Debug, Default)]
pub struct ModelArgs {
    /// Age/gender model (ONNX with faceage metadata) [default: models/faceage-f32.onnx; for
    /// `run`, models/faceage-run-int8.onnx]
    #[arg(long, env = "FACEAGE_MODEL")]
    pub model: Option<PathBuf>,
    /// BlazeFace detector [default: models/face_detection_back_256x256_barracuda.onnx]
    #[arg(long, env = "FACEAGE_DETECTOR")]
    pub detector: Option<PathBuf>,
    /// Faces scoring below this are ignored.
    #[arg(long, default_value_t = 0.5)]
    pub min_score: f32,
    /// Detect once on the picture as given: no second look at faces that fill the picture or
    /// touch its edge, no padded retry when none is found. The board's path before framing,
    /// for comparison; models are trained on framed crops.
    #[arg(long)]
    pub plain_detector: bool,
}

impl ModelArgs {
    pub fn model_path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(|| default_model_file(MODEL_FILE))
    }

    /// These arguments as `run` reads them: its own default model ([`RUN_MODEL_FILE`]).
    pub fn for_run(mut self) -> Self {
        self.model.get_or_insert_with(|| default_model_file(RUN_MODEL_FILE));
        self
    }

    pub fn detector_path(&self) -> PathBuf {
        self.detector.clone().unwrap_or_else(|| default_model_file(BlazeFaceVariant::Back256.file_name()))
    }

    pub fn load_pipeline(&self) -> Result<Pipeline> {
        let mut detector = load_board_detector(&self.detector_path(), self.min_score)?;
        if self.plain_detector {
            detector.framing = Framing::off();
        }
        let model = AgeGenderModel::load(&self.model_path())?;
        Ok(Pipeline::new(Box::new(detector), model))
    }
}

/// `models/NAME` next to the working directory, else next to an installed binary
/// (`<prefix>/bin/faceage` -> `<prefix>/models/NAME`). Falls back to `models/NAME` so the
/// error message names the path a user expects.
pub fn default_model_file(name: &str) -> PathBuf {
    let local = Path::new("models").join(name);
    if local.exists() {
        return local;
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("models").join(name);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    local
}
