//! `faceage bench`: what each model costs on this board, so a user can pick a file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use faceage_device::AgeGenderModel;
use faceage_device::bench::{Timing, check_inference_threads, model_figures, set_inference_threads};

#[derive(clap::Args)]
pub struct Args {
    /// Model files to compare (repeat the option) [default: the default model].
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Time the whole pipeline stage by stage on this source instead (any `run --source`).
    #[arg(long)]
    source: Option<String>,
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
    use faceage_device::pipeline::StageTimes;
    use faceage_device::track::{Tracker, TrackerConfig};
    use std::time::{Duration, Instant};

    let threads = args.threads.first().copied().unwrap_or(1);
    set_inference_threads(threads)?;
    let models = super::ModelArgs {
        model: args.models.first().cloned(),
        detector: args.detector.clone(),
        min_score: 0.5,
        plain_detector: args.plain_detector,
    };
    let mut pipeline = models.load_pipeline()?;
    let mut frames = faceage_device::source::open(source, &Default::default())?;
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut times = StageTimes::default();
    let (mut decode, mut track, mut encode) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut size = (0, 0);
    let mut n = 0usize;
    // One untimed frame first: caches, allocators, tract's first-run planning.
    if let Some(f) = frames.next_frame()? {
        pipeline.analyze(&f.image)?;
    }
    let started = Instant::now();
    while n < args.frames {
        let t = Instant::now();
        let Some(frame) = frames.next_frame()? else { break };
        decode += t.elapsed();
        size = frame.image.dimensions();
        let readings = pipeline.analyze_timed(&frame.image, &mut times)?;
        let t = Instant::now();
        tracker.update(&readings);
        track += t.elapsed();
        let t = Instant::now();
        let mut picture = frame.image.clone();
        faceage_device::draw::overlay_readings(&mut picture, &readings);
        let jpeg = faceage_device::imaging::encode_jpeg(&picture, 80)?;
        std::hint::black_box(jpeg);
        encode += t.elapsed();
        n += 1;
    }
    let wall = started.elapsed();
    anyhow::ensure!(n > 0, "{source}: no frames to time");
    let per = |d: Duration| Timing::ms(d) / n as f64;
    let total = decode + times.detect + times.crop + times.classify + track + encode;
    println!(
        "{source}: {n} frames of {}x{}, {:.2} faces per frame, {threads} thread(s), {}",
        size.0,
        size.1,
        times.faces as f64 / n as f64,
        std::env::consts::ARCH
    );
    println!("{:<22} {:>10} {:>8}", "stage", "ms/frame", "share");
    for (name, d) in [
        ("read + decode", decode),
        ("detect (BlazeFace)", times.detect),
        ("align + crop", times.crop),
        ("classify (all faces)", times.classify),
        ("track + fuse", track),
        ("draw + JPEG encode", encode),
    ] {
        println!(
            "{name:<22} {:>10.2} {:>7.1}%",
            per(d),
            100.0 * d.as_secs_f64() / total.as_secs_f64().max(1e-12)
        );
    }
    if times.faces > 0 {
        println!("{:<22} {:>10.3}", "classify per face", Timing::ms(times.classify) / times.faces as f64);
    }
    println!(
        "end to end: {:.1} ms/frame = {:.1} fps (kiosk encoding included)",
        Timing::ms(wall) / n as f64,
        n as f64 / wall.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
