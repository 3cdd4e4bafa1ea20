//! Timing helpers for `faceage bench`: medians and tails, never single runs.

use std::time::{Duration, Instant};

use anyhow::Result;
use image::{Rgb, RgbImage};

use crate::age_gender::AgeGenderModel;

/// Summary of repeated timings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub median: Duration,
    pub p90: Duration,
    pub runs: usize,
}

impl Timing {
    pub fn from_samples(mut samples: Vec<Duration>) -> Timing {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Timing { median: at(0.5), p90: at(0.9), runs: samples.len() }
    }

    pub fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }
}

/// Times `f` `runs` times after `warmup` untimed calls.
pub fn time(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    Ok(Timing::from_samples(samples))
}

/// Face-sized crops with some texture (the content does not change the cost).
pub fn synthetic_crops(size: u32, count: usize) -> Vec<RgbImage> {
    (0..count)
        .map(|k| {
            RgbImage::from_fn(size, size, |x, y| {
                let v = ((x * 7 + y * 13 + k as u32 * 31) % 200) as u8 + 28;
                Rgb([v, v.wrapping_add(20), v.wrapping_sub(10)])
            })
        })
        .collect()
}

/// Per-face latency (one face per call) and throughput in faces per second at `batch`.
pub struct ModelFigures {
    pub per_face: Timing,
    pub batch: usize,
    pub batch_timing: Timing,
}

impl ModelFigures {
    pub fn faces_per_second(&self) -> f64 {
        self.batch as f64 / self.batch_timing.median.as_secs_f64()
    }
}

pub fn model_figures(model: &AgeGenderModel, runs: usize, batch: usize) -> Result<ModelFigures> {
    let one = synthetic_crops(model.input_size(), 1);
    let many = synthetic_crops(model.input_size(), batch);
    let per_face = time(10, runs, || model.predict(&one).map(drop))?;
    let batch_timing = time(3, (runs / batch).max(10), || model.predict(&many).map(drop))?;
    Ok(ModelFigures { per_face, batch, batch_timing })
}

/// Refuses a thread count this build cannot honour: without the `multithread` feature tract
/// runs on the calling thread only, and asking for more must not be silently ignored.
pub fn check_inference_threads(threads: usize) -> Result<()> {
    anyhow::ensure!(
        threads <= 1 || cfg!(feature = "multithread"),
        "--threads {threads}: this faceage was built without the `multithread` feature \
         (cargo build --features multithread); it reads faces on one thread"
    );
    Ok(())
}

/// Makes tract's matrix products use `threads` threads (1: single-threaded, the default).
pub fn set_inference_threads(threads: usize) -> Result<()> {
    check_inference_threads(threads)?;
    #[cfg(feature = "multithread")]
    {
        use tract_linalg::multithread::{Executor, set_default_executor};
        set_default_executor(if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_takes_median_and_p90() {
        let t = Timing::from_samples((1..=10).rev().map(Duration::from_millis).collect());
        assert_eq!(t.median, Duration::from_millis(6));
        assert_eq!(t.p90, Duration::from_millis(9));
        assert_eq!(t.runs, 10);
    }

    #[cfg(not(feature = "multithread"))]
    #[test]
    fn more_threads_without_the_feature_is_an_error_naming_it() {
        set_inference_threads(1).unwrap();
        let err = set_inference_threads(4).unwrap_err().to_string();
        assert!(err.contains("--threads 4") && err.contains("multithread"), "{err}");
    }

    /// The shipped model read on two threads gives the one-thread readings.
    #[cfg(feature = "multithread")]
    #[test]
    fn two_threads_read_like_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/faceage-f32.onnx");
        let model = AgeGenderModel::load(&path).unwrap();
        let crops = synthetic_crops(model.input_size(), 4);
        set_inference_threads(1).unwrap();
        let one = model.predict(&crops).unwrap();
        set_inference_threads(2).unwrap();
        use tract_linalg::multithread::{Executor, current_tract_executor};
        assert!(matches!(current_tract_executor(), Executor::MultiThread(_)));
        let two = model.predict(&crops).unwrap();
        set_inference_threads(1).unwrap();
        assert_eq!(one.len(), 4);
        for (a, b) in one.iter().zip(&two) {
            assert!((a.age - b.age).abs() < 1e-3 && (a.female - b.female).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}
