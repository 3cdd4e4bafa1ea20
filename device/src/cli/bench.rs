//! `faceage bench`: what each model costs on this board, so a user can pick a file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use faceage_device::AgeGenderModel;
use faceage_device::bench::{
    Timing, check_inference_threads, model_figures, set_inference_threads, time_pipeline,
};
use faceage_device::live::{FrameReport, Live, LiveOptions};
use faceage_device::source::Frame;
use faceage_device::track::ReadPolicy;

#[derive(clap::Args)]
pub struct Args {
    /// Model files to compare (repeat the option) [default: `classify`'s model; with --source,
    /// `run`'s].
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Time the whole pipeline stage by stage on this source instead (any `run --source`).
    #[arg(long)]
    source: Option<String>,
    /// With --source: read every face in every frame, as `faceage run --read-every-frame`
    /// does (the reference for the per-person reading).
    #[arg(long)]
    read_every_frame: bool,
    /// With --source: run the detector on one frame in this many, as `faceage run
    /// --detect-every` does.
    #[arg(long, default_value_t = faceage_device::live::DETECT_EVERY)]
    detect_every: u32,
    /// Frames to time with --source.
    #[arg(long, default_value_t = 100)]
    frames: usize,
    /// BlazeFace detector for --source.
    #[arg(long, env = "FACEAGE_DETECTOR")]
    detector: Option<PathBuf>,
    /// With --source: time the detector without framing (see `classify --help`).
    #[arg(long)]
    plain_detector: bool,
    /// Thread counts to try for tract's matrix products, e.g. `1,4` (more than 1 needs a build
    /// with `--features multithread`).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    threads: Vec<usize>,
    /// Timed single-face runs per model and thread count.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Faces per call for the throughput figure.
    #[arg(long, default_value_t = 8)]
    batch: usize,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(source) = args.source.clone() {
        return pipeline(args, &source);
    }
    let models = if args.models.is_empty() {
        vec![super::ModelArgs::default().model_path()]
    } else {
        args.models.clone()
    };
    let arch = std::env::consts::ARCH;
    // An unavailable thread count is refused before any figure is printed.
    for &threads in &args.threads {
        check_inference_threads(threads)?;
    }
    println!(
        "{:<40} {:>9} {:>15} {:>7} {:>12} {:>9} {:>12}",
        "model", "bytes", "format", "threads", "ms/face p50", "p90", "faces/s @batch"
    );
    for path in &models {
        let model = AgeGenderModel::load(path)?;
        for &threads in &args.threads {
            set_inference_threads(threads)?;
            let f = model_figures(&model, args.runs, args.batch)?;
            println!(
                "{:<40} {:>9} {:>15} {:>7} {:>12.3} {:>9.3} {:>12.0}",
                path.display(),
                model.file_size(),
                model.contract().quant_format.as_str(),
                threads,
                Timing::ms(f.per_face.median),
                Timing::ms(f.per_face.p90),
                f.faces_per_second()
            );
        }
    }
    println!("({arch}; {} single-face runs per row, throughput at {} faces per call)", args.runs, args.batch);
    Ok(ExitCode::SUCCESS)
}

/// Stage-by-stage cost of `faceage run` on `source`: read and decode, detect, crop,
/// classify, track, and draw + JPEG-encode the kiosk picture.
fn pipeline(args: Args, source: &str) -> Result<ExitCode> {
    let threads = args.threads.first().copied().unwrap_or(1);
    set_inference_threads(threads)?;
    let models = super::ModelArgs {
        model: args.models.first().cloned(),
        detector: args.detector.clone(),
        min_score: 0.5,
        plain_detector: args.plain_detector,
    }
    .for_run();
    let mut options = LiveOptions { detect_every: args.detect_every.max(1), ..LiveOptions::default() };
    if args.read_every_frame {
        options.tracker.read = ReadPolicy::every_frame();
    }
    let mut pipeline = models.load_pipeline()?;
    let mut live = Live::new(options);
    let mut frames = faceage_device::source::open(source, &Default::default())?;
    let mut kiosk = KioskWork::default();
    let figures = time_pipeline(&mut pipeline, &mut live, frames.as_mut(), args.frames, |frame, report| {
        kiosk.publish(frame, report)
    })?;
    anyhow::ensure!(figures.frames > 0, "{source}: no frames to time");
    let policy = if args.read_every_frame {
        "every face read in every frame"
    } else {
        "each person read until settled"
    };
    println!(
        "{source}: {threads} thread(s), {}, {policy}, detector on 1 frame in {}",
        std::env::consts::ARCH,
        args.detect_every.max(1)
    );
    println!("{figures}");
    Ok(ExitCode::SUCCESS)
}

/// What the kiosk does with a frame while someone watches: draw the people in view, encode a
/// JPEG.
#[derive(Default)]
struct KioskWork {
    #[cfg(feature = "kiosk")]
    in_view: faceage_device::figures::InView,
    #[cfg(feature = "kiosk")]
    started: Option<std::time::Instant>,
}

impl KioskWork {
    #[cfg(feature = "kiosk")]
    fn publish(&mut self, frame: &Frame, report: &FrameReport) -> Result<()> {
        use faceage_device::kiosk::publisher::{overlay, tracks_in_view};
        let now = self.started.get_or_insert_with(std::time::Instant::now).elapsed();
        self.in_view.update(report, now);
        let tracks = tracks_in_view(report, &self.in_view, now);
        let picture = overlay(&frame.image, tracks.iter().map(|(t, _)| t));
        std::hint::black_box(faceage_device::imaging::encode_jpeg(&picture, 80)?);
        Ok(())
    }

    #[cfg(not(feature = "kiosk"))]
    fn publish(&mut self, _: &Frame, _: &FrameReport) -> Result<()> {
        Ok(())
    }
}
