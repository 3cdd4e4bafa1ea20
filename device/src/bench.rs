//! Timing helpers for `faceage bench`: medians and tails, never single runs, and the
//! stage-by-stage cost of `faceage run` on a source.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Result;
use image::{Rgb, RgbImage};

use crate::age_gender::AgeGenderModel;
use crate::live::{FrameReport, Live};
use crate::source::{Frame, FrameSource};

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

/// Where `faceage run`'s time goes on a source, stage by stage, summed over the timed frames.
#[derive(Clone, Debug, Default)]
pub struct PipelineFigures {
    pub frames: usize,
    pub frame_size: (u32, u32),
    pub decode: Duration,
    pub detect: Duration,
    pub crop: Duration,
    pub classify: Duration,
    pub track: Duration,
    /// What the caller's `publish` took (the kiosk's overlay and JPEG encoding).
    pub publish: Duration,
    /// Wall time of the timed frames, start to end.
    pub wall: Duration,
    /// Frames the detector ran on (one in `detect_every`).
    pub detector_frames: usize,
    /// Faces found, over the detector's frames.
    pub faces: usize,
    /// Faces the model read.
    pub reads: usize,
    /// People counted (tracks confirmed).
    pub people: u64,
}

impl PipelineFigures {
    pub fn stages(&self) -> [(&'static str, Duration); 6] {
        [
            ("read + decode", self.decode),
            ("detect (BlazeFace)", self.detect),
            ("align + crop", self.crop),
            ("classify", self.classify),
            ("track + fuse", self.track),
            ("draw + JPEG encode", self.publish),
        ]
    }

    pub fn ms_per_frame(&self, d: Duration) -> f64 {
        Timing::ms(d) / self.frames.max(1) as f64
    }

    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.wall.as_secs_f64().max(1e-12)
    }

    /// Model reads per counted person (all reads, counted or not, over the people counted).
    pub fn reads_per_person(&self) -> Option<f64> {
        (self.people > 0).then(|| self.reads as f64 / self.people as f64)
    }
}

impl fmt::Display for PipelineFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.frames.max(1) as f64;
        writeln!(
            f,
            "{} frames of {}x{}, the detector on {}: {:.2} faces in view, {:.2} read per frame",
            self.frames,
            self.frame_size.0,
            self.frame_size.1,
            self.detector_frames,
            self.faces as f64 / self.detector_frames.max(1) as f64,
            self.reads as f64 / n
        )?;
        let total: Duration = self.stages().iter().map(|(_, d)| *d).sum();
        writeln!(f, "{:<22} {:>10} {:>8}", "stage", "ms/frame", "share")?;
        for (name, d) in self.stages() {
            let share = 100.0 * d.as_secs_f64() / total.as_secs_f64().max(1e-12);
            writeln!(f, "{name:<22} {:>10.2} {share:>7.1}%", self.ms_per_frame(d))?;
        }
        if self.reads > 0 {
            writeln!(
                f,
                "{:<22} {:>10.3}",
                "classify per read",
                Timing::ms(self.classify) / self.reads as f64
            )?;
        }
        match self.reads_per_person() {
            Some(r) => writeln!(f, "people counted: {}, model reads per person: {r:.1}", self.people)?,
            None => writeln!(f, "people counted: 0")?,
        }
        write!(
            f,
            "end to end: {:.1} ms/frame = {:.1} fps (kiosk drawing and encoding included)",
            self.ms_per_frame(self.wall),
            self.fps()
        )
    }
}

/// Runs up to `frames` frames of `source` through `live` as `faceage run` does, calling
/// `publish` on each (the kiosk's work), after one untimed frame (caches, tract's first-run
/// planning).
pub fn time_pipeline(
    pipeline: &mut crate::Pipeline,
    live: &mut Live,
    source: &mut dyn FrameSource,
    frames: usize,
    mut publish: impl FnMut(&Frame, &FrameReport) -> Result<()>,
) -> Result<PipelineFigures> {
    if let Some(frame) = source.next_frame()? {
        live.process(pipeline, &frame, 0)?;
    }
    let (times_before, track_before, people_before) = (live.times, live.track_time, live.people_total);
    let mut figures = PipelineFigures::default();
    let started = Instant::now();
    while figures.frames < frames {
        let t = Instant::now();
        let Some(frame) = source.next_frame()? else { break };
        figures.decode += t.elapsed();
        figures.frame_size = frame.image.dimensions();
        let report = live.process(pipeline, &frame, 0)?;
        let t = Instant::now();
        publish(&frame, &report)?;
        figures.publish += t.elapsed();
        figures.frames += 1;
    }
    figures.wall = started.elapsed();
    let times = live.times;
    figures.detect = times.detect - times_before.detect;
    figures.crop = times.crop - times_before.crop;
    figures.classify = times.classify - times_before.classify;
    figures.faces = times.faces - times_before.faces;
    figures.detector_frames = times.detector_frames - times_before.detector_frames;
    figures.reads = times.reads - times_before.reads;
    figures.track = live.track_time - track_before;
    figures.people = live.people_total - people_before;
    Ok(figures)
}

/// Refuses a thread count this build cannot honour: without the `multithread` feature tract
/// runs on the calling thread only, and asking for more must not be silently ignored.
pub fn check_inference_threads(threads: usize) -> Result<()> {
    threads_allowed(threads, cfg!(feature = "multithread"))
}

/// [`check_inference_threads`] for a build with or without `multithread`: a function of both,
/// so the tests' one build (with the feature) also checks the refusal the default build gives.
fn threads_allowed(threads: usize, multithread: bool) -> Result<()> {
    anyhow::ensure!(
        threads <= 1 || multithread,
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

    /// One face in the middle of every frame.
    struct OneFace;
    impl crate::detect::FaceDetector for OneFace {
        fn detect(&mut self, _frame: &RgbImage) -> Result<Vec<crate::detect::Face>> {
            use crate::geometry::{BBox, Point};
            let mut landmarks = [Point::new(60.0, 50.0); 6];
            landmarks[0] = Point::new(52.0, 45.0);
            landmarks[1] = Point::new(68.0, 45.0);
            let bbox = BBox { cx: 60.0, cy: 50.0, w: 40.0, h: 40.0 };
            Ok(vec![crate::detect::Face { bbox, landmarks, score: 0.9 }])
        }
    }

    struct Blank(u64);
    impl FrameSource for Blank {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            self.0 += 1;
            let image = RgbImage::from_pixel(120, 100, Rgb([100, 90, 80]));
            Ok((self.0 <= 40).then(|| Frame { image, index: self.0 - 1, time: Duration::ZERO }))
        }
        fn is_live(&self) -> bool {
            false
        }
        fn describe(&self) -> String {
            "blank".into()
        }
    }

    #[test]
    fn the_pipeline_figures_count_frames_detections_reads_and_people() {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/faceage-int8.onnx");
        let mut pipeline = crate::Pipeline::new(Box::new(OneFace), AgeGenderModel::load(&model).unwrap());
        let mut options = crate::live::LiveOptions { detect_every: 2, ..Default::default() };
        // Whatever the model makes of a blank face, its gender counts as sure here.
        options.tracker.read.settle_gender_certainty = 0.0;
        let mut live = Live::new(options);
        let mut published = 0;
        let figures = time_pipeline(&mut pipeline, &mut live, &mut Blank(0), 20, |_, report| {
            published += 1;
            assert!(report.faces_read <= report.faces.len());
            Ok(())
        })
        .unwrap();
        assert_eq!((figures.frames, published), (20, 20));
        // Frame 0 is the untimed one; the detector runs on frames 2, 4, ... 20.
        assert_eq!(figures.faces, 10);
        // Read until settled: frame 0 and the timed frames 2, 4, 6, 8 (ReadPolicy::min_reads).
        assert_eq!(figures.reads, 4);
        assert_eq!(figures.people, 1, "confirmed at its third detection, frame 4");
        assert_eq!(figures.reads_per_person(), Some(4.0));
        let text = figures.to_string();
        assert_eq!(figures.detector_frames, 10);
        assert!(
            text.contains(
                "20 frames of 120x100, the detector on 10: 1.00 faces in view, 0.20 read per frame"
            ),
            "{text}"
        );
        assert!(text.contains("model reads per person: 4.0") && text.contains("fps"), "{text}");
        // Every frame read and detected: 20 of each.
        let mut options = crate::live::LiveOptions { detect_every: 1, ..Default::default() };
        options.tracker.read = crate::track::ReadPolicy::every_frame();
        let mut live = Live::new(options);
        let figures = time_pipeline(&mut pipeline, &mut live, &mut Blank(0), 20, |_, _| Ok(())).unwrap();
        assert_eq!((figures.faces, figures.reads), (20, 20));
    }

    #[test]
    fn more_threads_without_the_feature_is_an_error_naming_it() {
        threads_allowed(1, false).unwrap();
        let err = threads_allowed(4, false).unwrap_err().to_string();
        assert!(err.contains("--threads 4") && err.contains("multithread"), "{err}");
        threads_allowed(4, true).unwrap();
        assert_eq!(
            check_inference_threads(4).is_ok(),
            cfg!(feature = "multithread"),
            "this build's own check is the same function"
        );
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
