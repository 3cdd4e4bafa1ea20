//! `faceage run`: frames in, people counted, a counts log that never loses a line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use faceage_device::counts::{CountsLog, LogFormat, Rotation};
use faceage_device::live::{FrameReport, Live, LiveOptions};
use faceage_device::source::{self, Frame, FrameSource, LatestFrame, Next, SourceOptions, SourceSpec};
use faceage_device::track::TrackerConfig;
use jiff::ZonedDateTime as Zoned;
use serde::Serialize;

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
    /// an animated GIF/APNG, or an MJPEG AVI.
    #[arg(long)]
    source: String,
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
    /// Process at most this many frames per second (the newest frame wins).
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
    /// Stop after this many frames.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Threads for tract's matrix products (more than 1 needs a build with `--features multithread`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[cfg(feature = "kiosk")]
    #[command(flatten)]
    kiosk: super::kiosk::KioskArgs,
    #[command(flatten)]
    models: ModelArgs,
}

fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').ok_or("expected WIDTHxHEIGHT, e.g. 640x480")?;
    Ok((w.parse().map_err(|_| "bad width")?, h.parse().map_err(|_| "bad height")?))
}

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event<'a> {
    Person {
        frame: u64,
        track: u64,
        age: f32,
        age_spread: f32,
        gender: faceage_device::Gender,
        female: f32,
        /// The band of the age reading.
        band: &'static str,
        /// What the person added to each band of the counts (see `counts::BandCounts`).
        band_shares: [f32; 6],
    },
    TrackEnded {
        frame: u64,
        track: u64,
        confirmed: bool,
        frames: u32,
        age: f32,
        age_spread: f32,
        gender: faceage_device::Gender,
    },
    Interval {
        record: &'a faceage_device::counts::IntervalRecord,
    },
    Frame {
        frame: u64,
        tracks: Vec<TraceTrack>,
    },
}

#[derive(Serialize)]
struct TraceTrack {
    track: u64,
    confirmed: bool,
    seen: bool,
    age: f32,
    frame_age: f32,
    female: f32,
    frame_female: f32,
}

/// Frames from a file read in order, or from a live source read on its own thread.
enum Frames {
    File(Box<dyn FrameSource>),
    Live(LatestFrame),
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Err(e) = faceage_device::bench::set_inference_threads(args.threads) {
        // A speed setting the build cannot honour (say, a config kept from a multithread build)
        // must not stop the counting service.
        eprintln!("warning: {e:#}; counting on one thread");
    }
    let pipeline = args.models.load_pipeline()?;
    let spec = SourceSpec::parse(&args.source)?;
    let live_source = matches!(spec, SourceSpec::Camera(_) | SourceSpec::Stream(_)) || args.realtime;
    let options = SourceOptions { resolution: args.resolution, fps: args.fps, realtime: args.realtime };
    let mut frames = if live_source {
        let (spec_text, opts) = (args.source.clone(), options.clone());
        Frames::Live(LatestFrame::spawn_checked(
            move || source::open(&spec_text, &opts),
            |msg| eprintln!("source: {msg}"),
        )?)
    } else {
        Frames::File(source::open(&args.source, &options)?)
    };

    let log = if args.counts_log.as_os_str() == "-" {
        None
    } else {
        let format = match args.log_format {
            FormatArg::Jsonl => LogFormat::Jsonl,
            FormatArg::Csv => LogFormat::Csv,
        };
        let rotation = match args.rotate {
            RotateArg::None => Rotation::None,
            RotateArg::Daily => Rotation::Daily,
        };
        Some(CountsLog::new(&args.counts_log, format, rotation))
    };
    if let Some(dir) = &args.save_crops {
        eprintln!("warning: saving face crops of counted people to {} (--save-crops)", dir.display());
    }
    let options = LiveOptions {
        interval_secs: args.interval.max(1),
        tracker: TrackerConfig {
            confirm_after: args.confirm_frames.max(1),
            end_after_missed: args.max_missed,
            ..TrackerConfig::default()
        },
        save_crops: args.save_crops.clone(),
    };
    let mut live = Live::new(pipeline, options, log);

    #[cfg(feature = "kiosk")]
    let kiosk = super::kiosk::start(&args.kiosk)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }

    let mut stdout = std::io::stdout().lock();
    let min_gap = args.max_fps.filter(|f| *f > 0.0).map(|f| Duration::from_secs_f32(1.0 / f));
    let mut last_start: Option<Instant> = None;
    let mut consecutive_errors = 0u32;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if args.max_frames.is_some_and(|m| live.frames_total >= m) {
            break;
        }
        if let (Some(gap), Some(last)) = (min_gap, last_start) {
            let wait = gap.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        let (frame, dropped): (Frame, u64) = match &mut frames {
            Frames::File(source) => match source.next_frame() {
                Ok(Some(frame)) => (frame, 0),
                Ok(None) => break,
                Err(e) => {
                    eprintln!("frame skipped: {e:#}");
                    consecutive_errors += 1;
                    if consecutive_errors > 50 {
                        bail!("{}: 50 unreadable frames in a row; giving up", source.describe());
                    }
                    continue;
                }
            },
            Frames::Live(latest) => match latest.next(Duration::from_millis(250)) {
                Next::Frame(frame) => (frame, latest.dropped()),
                Next::Timeout => {
                    roll(&mut live, args.events, &mut stdout)?;
                    continue;
                }
                Next::Closed => break,
            },
        };
        consecutive_errors = 0;
        last_start = Some(Instant::now());
        let report = match live.process(&frame, dropped) {
            Ok(report) => report,
            Err(e) => {
                eprintln!("frame {}: {e:#}", frame.index);
                continue;
            }
        };
        if args.events {
            print_events(&mut stdout, &frame, &report)?;
        }
        if args.trace {
            let tracks = report
                .tracks
                .iter()
                .map(|t| TraceTrack {
                    track: t.id,
                    confirmed: t.confirmed,
                    seen: t.seen_now,
                    age: t.reading.age,
                    frame_age: t.frame_estimate.age,
                    female: t.reading.female,
                    frame_female: t.frame_estimate.female,
                })
                .collect();
            writeln!(stdout, "{}", serde_json::to_string(&Event::Frame { frame: frame.index, tracks })?)?;
        }
        #[cfg(feature = "kiosk")]
        if let Some(k) = &kiosk {
            k.publish(&frame, &report, &live, started.elapsed());
        }
        roll(&mut live, args.events, &mut stdout)?;
    }
    if let Frames::Live(latest) = &mut frames {
        latest.stop();
    }
    let (record, written) = live.finish(&Zoned::now());
    if args.events {
        writeln!(stdout, "{}", serde_json::to_string(&Event::Interval { record: &record })?)?;
    }
    stdout.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} frames in {:.1} s ({:.1} fps), {} people counted",
        live.frames_total,
        seconds,
        live.frames_total as f64 / seconds.max(1e-9),
        live.people_total
    );
    if let Err(e) = written {
        eprintln!("error: {e:#}");
        eprintln!(
            "error: {} interval line(s) could not be written and are lost on exit",
            live.pending_lines()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn roll(live: &mut Live, events: bool, out: &mut impl Write) -> Result<()> {
    if let Some((record, written)) = live.roll_if_due(&Zoned::now()) {
        if let Err(e) = written {
            eprintln!("counts log: {e:#}");
        }
        if events {
            writeln!(out, "{}", serde_json::to_string(&Event::Interval { record: &record })?)?;
        }
    }
    Ok(())
}

fn print_events(out: &mut impl Write, frame: &Frame, report: &FrameReport) -> Result<()> {
    for t in &report.counted {
        let r = &t.reading;
        let e = Event::Person {
            frame: frame.index,
            track: t.id,
            age: r.age,
            age_spread: r.age_spread,
            gender: r.gender,
            female: r.female,
            band: faceage_device::counts::age_band(r.age),
            band_shares: r.bands.map(|v| (v * 1000.0).round() / 1000.0),
        };
        writeln!(out, "{}", serde_json::to_string(&e)?)?;
    }
    for t in &report.ended {
        let r = &t.reading;
        let e = Event::TrackEnded {
            frame: frame.index,
            track: t.id,
            confirmed: t.confirmed,
            frames: r.frames,
            age: r.age,
            age_spread: r.age_spread,
            gender: r.gender,
        };
        writeln!(out, "{}", serde_json::to_string(&e)?)?;
    }
    out.flush().context("stdout")
}
