//! `faceage run`: frames in, people counted, a counts log that never loses a line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use faceage_device::counts::{CountsLog, IntervalRecord, LogFormat, Rotation};
use faceage_device::events::EventWriter;
use faceage_device::live::{FrameReport, Live, LiveOptions};
use faceage_device::run_loop::{self, Frames, Observer, RunSettings, SourceRun};
use faceage_device::source::{self, Frame, SourceOptions};
use faceage_device::track::{ReadPolicy, TrackerConfig};

use super::ModelArgs;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FormatArg {
    Jsonl,
    Csv,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum RotateArg {
    None,
    Daily,
}

#[derive(clap::Args)]
pub struct Args {
    /// camera:N or /dev/videoN, rtsp://… or a video file (ffmpeg), a folder or glob of images,
    /// an animated GIF/APNG, or an MJPEG AVI. Give it once per camera (`NAME=SOURCE` names
    /// it, e.g. `door=camera:0`): each has its own tracker and its own lines in the counts log.
    #[arg(long, required = true)]
    source: Vec<String>,
    /// The counts log (aggregates only). `-` for none.
    #[arg(long, default_value = "counts.jsonl")]
    counts_log: PathBuf,
    #[arg(long, value_enum, default_value_t = FormatArg::Jsonl)]
    log_format: FormatArg,
    /// `daily`: one file per local day (counts-2026-11-29.jsonl).
    #[arg(long, value_enum, default_value_t = RotateArg::None)]
    rotate: RotateArg,
    /// Seconds per counts-log line.
    #[arg(long, default_value_t = 60)]
    interval: u64,
    /// Process at most this many frames per second, per source (the newest frame wins).
    #[arg(long)]
    max_fps: Option<f32>,
    /// Camera resolution, e.g. 640x480.
    #[arg(long, value_parser = parse_resolution)]
    resolution: Option<(u32, u32)>,
    /// Camera frame rate.
    #[arg(long)]
    fps: Option<u32>,
    /// Read a video file in real time, dropping frames like a camera would.
    #[arg(long)]
    realtime: bool,
    /// Frames a face must be seen before it counts as a person.
    #[arg(long, default_value_t = TrackerConfig::default().confirm_after)]
    confirm_frames: u32,
    /// Frames a person may be missing before their track ends.
    #[arg(long, default_value_t = TrackerConfig::default().end_after_missed)]
    max_missed: u32,
    /// Read every face in every frame instead of each person until their reading has settled
    /// (several times the classifier's work, for the same counts).
    #[arg(long)]
    read_every_frame: bool,
    /// Run the face detector on one frame in this many, the tracker carrying people along
    /// in between (1: every frame).
    #[arg(long, default_value_t = faceage_device::live::DETECT_EVERY)]
    detect_every: u32,
    /// Save the face crop of every counted person here. Off by default: without it no face
    /// image ever reaches the disk.
    #[arg(long)]
    save_crops: Option<PathBuf>,
    /// Print one JSON line per event (person counted, track ended) on stdout.
    #[arg(long)]
    events: bool,
    /// Also print every frame's tracks, fused and per-frame readings side by side.
    #[arg(long)]
    trace: bool,
    /// Stop each source after this many frames.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Threads for tract's matrix products (more than 1 needs a build with `--features multithread`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[cfg(feature = "kiosk")]
    #[command(flatten)]
    kiosk: super::kiosk::KioskArgs,
    #[cfg(feature = "mqtt")]
    #[command(flatten)]
    fleet: super::fleet::FleetArgs,
    #[command(flatten)]
    models: ModelArgs,
}

fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').ok_or("expected WIDTHxHEIGHT, e.g. 640x480")?;
    Ok((w.parse().map_err(|_| "bad width")?, h.parse().map_err(|_| "bad height")?))
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Err(e) = faceage_device::bench::set_inference_threads(args.threads) {
        // A speed setting the build cannot honour (say, a config kept from a multithread build)
        // must not stop the counting service.
        eprintln!("warning: {e:#}; counting on one thread");
    }
    // Every source is checked (no camera read twice) and opened before the model loads: a
    // mistake in the set-up is reported at once.
    let named = source::parse_sources(&args.source)?;
    let options = SourceOptions { resolution: args.resolution, fps: args.fps, realtime: args.realtime };
    let mut sources = Vec::with_capacity(named.len());
    for source in &named {
        let frames = Frames::open(&source.name, &source.spec, &options)?;
        sources.push(SourceRun::new(frames, Live::new(live_options(&args)).named(&source.name)));
    }
    // One model for every source.
    let models = args.models.clone().for_run();
    let mut pipeline = models.load_pipeline()?;
    eprintln!("reading faces with {} ({})", models.model_path().display(), pipeline.model.contract().name);
    if let Some(dir) = &args.save_crops {
        eprintln!("warning: saving face crops of counted people to {} (--save-crops)", dir.display());
    }
    let mut log = counts_log(&args);
    let names: Vec<String> = named.iter().map(|s| s.name.clone()).collect();
    #[cfg(not(feature = "kiosk"))]
    let _ = &names;
    let mut observers = Observers {
        events: EventWriter::new(std::io::stdout().lock(), args.events, args.trace),
        #[cfg(feature = "kiosk")]
        kiosk: super::kiosk::start(&args.kiosk, &names)?,
        #[cfg(feature = "mqtt")]
        fleet: super::fleet::Fleet::start(
            &args.fleet,
            log.is_some().then_some((args.counts_log.as_path(), rotation(args.rotate))),
            &names,
            &models.model_path(),
            &pipeline.model.contract().name,
        )?,
    };

    let stop = faceage_device::signals::stop_flag()?;
    let settings = RunSettings { max_fps: args.max_fps, max_frames: args.max_frames };
    let outcome = run_loop::run(&mut pipeline, &mut sources, log.as_mut(), &settings, &stop, &mut observers);
    // The run's last line goes to the broker too (a few seconds at most).
    #[cfg(feature = "mqtt")]
    observers.fleet.finish();
    let summary = outcome?;
    eprintln!(
        "{} frames in {:.1} s ({:.1} fps), {} people counted",
        summary.frames,
        summary.seconds,
        summary.frames as f64 / summary.seconds.max(1e-9),
        summary.people
    );
    if let Some((e, lost)) = summary.unwritten {
        eprintln!("error: {e:#}");
        eprintln!("error: {lost} interval line(s) could not be written and are lost on exit");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn live_options(args: &Args) -> LiveOptions {
    LiveOptions {
        interval_secs: args.interval.max(1),
        tracker: TrackerConfig {
            confirm_after: args.confirm_frames.max(1),
            end_after_missed: args.max_missed,
            read: if args.read_every_frame { ReadPolicy::every_frame() } else { ReadPolicy::default() },
            ..TrackerConfig::default()
        },
        save_crops: args.save_crops.clone(),
        detect_every: args.detect_every.max(1),
    }
}

fn counts_log(args: &Args) -> Option<CountsLog> {
    if args.counts_log.as_os_str() == "-" {
        return None;
    }
    let format = match args.log_format {
        FormatArg::Jsonl => LogFormat::Jsonl,
        FormatArg::Csv => LogFormat::Csv,
    };
    Some(CountsLog::new(&args.counts_log, format, rotation(args.rotate)))
}

fn rotation(arg: RotateArg) -> Rotation {
    match arg {
        RotateArg::None => Rotation::None,
        RotateArg::Daily => Rotation::Daily,
    }
}

/// Everything that watches the run: event lines on stdout, and the kiosk when it is on.
struct Observers<W: std::io::Write> {
    events: EventWriter<W>,
    #[cfg(feature = "kiosk")]
    kiosk: Option<faceage_device::kiosk::KioskPublisher>,
    #[cfg(feature = "mqtt")]
    fleet: super::fleet::Fleet,
}

impl<W: std::io::Write> Observer for Observers<W> {
    fn frame(&mut self, frame: &Frame, report: &FrameReport, live: &Live, elapsed: Duration) -> Result<()> {
        self.events.frame(frame, report, live, elapsed)?;
        #[cfg(feature = "kiosk")]
        if let Some(kiosk) = &mut self.kiosk {
            kiosk.frame(frame, report, live, elapsed)?;
        }
        #[cfg(feature = "mqtt")]
        self.fleet.frame(frame, report, live, elapsed)?;
        Ok(())
    }

    fn interval(&mut self, record: &IntervalRecord) -> Result<()> {
        self.events.interval(record)
    }
}
