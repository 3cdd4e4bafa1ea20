//! faceage on the workstation: labelled faces in, a checked ONNX model file out.
//!
//! ```text
//! data (UTKFace / CSV) ─► crops (device detect+align+crop, cached) ─► augment ─► nn (candle)
//!        ─► train (AdamW, warm-up+cosine, checkpoints; teachers' readings: distil) ─► age map (fitted on validation)
//!        ─► metrics ─► export (ONNX + contract, verified with the device library) ─► quantize (int8)
//! ```

pub mod age_map;
pub mod augment;
pub mod checkpoint;
pub mod crops;
pub mod data;
pub mod distil;
pub mod export;
pub mod metrics;
pub mod nn;
pub mod plots;
pub mod progress;
pub mod train;

/// The licence line every model trained on UTKFace carries.
pub const UTKFACE_LICENSE: &str =
    "UTKFace is released for non-commercial research purposes only; so is any model trained on it.";

/// Picks the compute device: `cpu`, or `cuda` (GPU 0) when built with the `cuda` feature.
pub fn compute_device(name: &str) -> anyhow::Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" if candle_core::utils::cuda_is_available() => Ok(candle_core::Device::new_cuda(0)?),
        "cuda" => anyhow::bail!("this faceage-host was built without CUDA; rebuild with `--features cuda`"),
        other => anyhow::bail!("unknown device {other:?}: use cpu or cuda"),
    }
}
