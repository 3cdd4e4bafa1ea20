//! faceage on the workstation: labelled faces in, a checked ONNX model file out.
//!
//! ```text
//! data (UTKFace / CSV) ─► crops (device detect+align+crop, cached) ─► augment ─► nn (candle)
//!        ─► train (AdamW, warm-up+cosine, checkpoints; teachers' readings: distil) ─► age map (fitted on validation)
//!        ─► metrics ─► export (ONNX + contract, verified with the device library) ─► quantize (int8)
//! ```
//!
//! Layers, each importing only from those below it (`main`'s commands parse and print):
//!
//! ```text
//! train, bench           the loop over a TrainConfig; the step benchmark
//! distil, warm_start     teachers' readings of the training crops; a model file's weights as a run's start
//! export (quantize, upgrade)  ONNX files from a trained model, checked with the device library
//! trained, plots         a trained model in memory and its evaluation passes; curves, galleries
//! prepare, checkpoint    a run's crops split by its seed; weights + optimiser + TrainState
//! config, run_dir        TrainConfig (Default = the shipped recipe); a run folder and its records
//! augment, nn, metrics, age_map
//! crops, progress        board crops, cached
//! tensor_file            safetensors files of the trainer's numbers (crop cache, teacher targets)
//! data                   labels and the split (the device library's)
//! ```

pub mod age_map;
pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod crops;
pub mod data;
pub mod distil;
pub mod export;
pub mod metrics;
pub mod nn;
pub mod plots;
pub mod prepare;
pub mod progress;
pub mod run_dir;
pub mod tensor_file;
pub mod train;
pub mod trained;
pub mod warm_start;

/// The licence line every model trained on UTKFace carries.
pub const UTKFACE_LICENSE: &str =
    "UTKFace is released for non-commercial research purposes only; so is any model trained on it.";

/// The credit FairFace's CC BY 4.0 licence asks of every model trained on it (added to a
/// model file's licence line when a source is FairFace).
pub const FAIRFACE_CREDIT: &str = "Also trained on FairFace (Karkkainen and Joo, \"FairFace: Face Attribute Dataset \
    for Balanced Race, Gender, and Age for Bias Measurement and Mitigation\", WACV 2021), CC BY 4.0, \
    images resized to 144x144 and re-encoded as JPEG.";

/// Picks the compute device: `cpu`, or `cuda` (GPU 0) when built with the `cuda` feature.
pub fn compute_device(name: &str) -> anyhow::Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" if candle_core::utils::cuda_is_available() => Ok(candle_core::Device::new_cuda(0)?),
        "cuda" => anyhow::bail!("this faceage-host was built without CUDA; rebuild with `--features cuda`"),
        other => anyhow::bail!("unknown device {other:?}: use cpu or cuda"),
    }
}
