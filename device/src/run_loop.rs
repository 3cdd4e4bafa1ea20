//! `faceage run`'s loop as a library: frames pulled from each source (paced; on a live
//! source the newest frame wins), each run through that source's [`Live`] with the one shared
//! [`Pipeline`], intervals closed on time into the one counts log, and whatever watches (event
//! lines on stdout, the kiosk) told through an [`Observer`]. The command parses its arguments
//! and wires these together; nothing here prints but warnings.
//!
//! Several sources are served in turn on this one thread (a board has one core to spare for
//! the model): a source with no new frame is passed over, and one that ends or gives up stops
//! alone while the others go on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use jiff::ZonedDateTime as Zoned;

use crate::counts::{CountsLog, IntervalRecord};
use crate::live::{ClosedInterval, FrameReport, Live};
use crate::pipeline::Pipeline;
use crate::source::{self, Frame, FrameSource, LatestFrame, Next, SourceOptions, SourceSpec};

/// Unreadable frames in a row after which a file source is given up (a live source reopens
/// itself with back-off instead: [`LatestFrame`]).
pub const MAX_UNREADABLE_IN_A_ROW: u32 = 50;

/// How long the loop waits for a live frame when it reads one source, before it looks at the
/// clock (so an interval closes on time when nobody walks past a camera that stopped sending).
const LIVE_WAIT: Duration = Duration::from_millis(250);

/// With several sources none is waited on; a round in which none had a frame sleeps this long.
const IDLE_ROUND: Duration = Duration::from_millis(5);

/// Frames from a file read in order, every one, or from a live source read on its own thread.
pub enum Frames {
    File(Box<dyn FrameSource>),
    Live(LatestFrame),
}

/// What one pull from [`Frames`] gave.
pub enum Pulled {
    /// A frame, and how many the source has dropped so far.
    Frame(Frame, u64),
    /// No live frame within the wait: time for the clock, not for a frame.
    Idle,
    /// A file frame that could not be read.
    Unreadable(anyhow::Error),
    End,
}

impl Frames {
    /// Opens `spec`: cameras and streams, and files read in real time, on their own thread
    /// (the newest frame wins, a failed device is reopened with back-off); files and image
    /// folders in order. `name` prefixes the reader's messages.
    pub fn open(name: &str, spec: &str, options: &SourceOptions) -> Result<Frames> {
        let live = matches!(SourceSpec::parse(spec)?, SourceSpec::Camera(_) | SourceSpec::Stream(_))
            || options.realtime;
        if !live {
            return Ok(Frames::File(source::open(spec, options)?));
        }
        let (spec, options, name) = (spec.to_string(), options.clone(), name.to_string());
        Ok(Frames::Live(LatestFrame::spawn_checked(
            move || source::open(&spec, &options),
            move |msg| eprintln!("source {name}: {msg}"),
        )?))
    }

    /// The next frame; a live source is waited on up to `wait`.
    pub fn pull(&mut self, wait: Duration) -> Pulled {
        match self {
            Frames::File(source) => match source.next_frame() {
                Ok(Some(frame)) => Pulled::Frame(frame, 0),
                Ok(None) => Pulled::End,
                Err(e) => Pulled::Unreadable(e),
            },
            Frames::Live(latest) => match latest.next(wait) {
                Next::Frame(frame) => Pulled::Frame(frame, latest.dropped()),
                Next::Timeout => Pulled::Idle,
                Next::Closed => Pulled::End,
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Frames::File(source) => source.describe(),
            Frames::Live(_) => "the live source".into(),
        }
    }

    /// Stops a live source's reader thread (a file needs nothing).
    pub fn stop(&mut self) {
        if let Frames::Live(latest) = self {
            latest.stop();
        }
    }
}

/// At most `max_fps` frames a second: the time to wait before the next frame may start.
#[derive(Clone, Debug, Default)]
pub struct Pacing {
    min_gap: Option<Duration>,
    last_start: Option<Instant>,
}

impl Pacing {
    pub fn new(max_fps: Option<f32>) -> Self {
        let min_gap = max_fps.filter(|f| *f > 0.0).map(|f| Duration::from_secs_f32(1.0 / f));
        Self { min_gap, last_start: None }
    }

    /// How long to wait at `now` before starting a frame.
    pub fn wait_at(&self, now: Instant) -> Duration {
        match (self.min_gap, self.last_start) {
            (Some(gap), Some(last)) => gap.saturating_sub(now.saturating_duration_since(last)),
            _ => Duration::ZERO,
        }
    }

    pub fn started(&mut self, at: Instant) {
        self.last_start = Some(at);
    }
}

/// What the loop tells whoever watches it. Every method has a default, so an observer
/// implements only what it shows.
pub trait Observer {
    /// A frame of `live`'s source was read: its report, the source's state after it and the
    /// time since the start.
    fn frame(
        &mut self,
        _frame: &Frame,
        _report: &FrameReport,
        _live: &Live,
        _elapsed: Duration,
    ) -> Result<()> {
        Ok(())
    }
    /// An interval of the counts log closed (also the partial one at the end).
    fn interval(&mut self, _record: &IntervalRecord) -> Result<()> {
        Ok(())
    }
    /// Something went wrong that the loop carries on through.
    fn warning(&mut self, message: &str) {
        eprintln!("{message}");
    }
}

/// Watches nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Limits of one run.
#[derive(Clone, Debug, Default)]
pub struct RunSettings {
    /// Frames per second at most, per source (the newest frame wins on a live source).
    pub max_fps: Option<f32>,
    /// Stop each source after this many frames.
    pub max_frames: Option<u64>,
}

/// One source of a run: its frames and its own counting state.
pub struct SourceRun {
    pub frames: Frames,
    pub live: Live,
    pacing: Pacing,
    unreadable: u32,
    running: bool,
}

impl SourceRun {
    pub fn new(frames: Frames, live: Live) -> Self {
        Self { frames, live, pacing: Pacing::default(), unreadable: 0, running: true }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct RunSummary {
    /// Over all sources.
    pub frames: u64,
    pub people: u64,
    pub seconds: f64,
    /// The log could not be written at the end: the last error and the lines lost with the
    /// process.
    pub unwritten: Option<(anyhow::Error, usize)>,
}

/// The counts log (when there is one) and the watchers: where closed intervals go.
struct Outlet<'a> {
    log: Option<&'a mut CountsLog>,
    observer: &'a mut dyn Observer,
    last_error: Option<anyhow::Error>,
}

impl Outlet<'_> {
    /// Writes the interval (a log that cannot be written keeps it queued) and tells the
    /// watchers; only a watcher's failure is an error.
    fn closed(&mut self, closed: ClosedInterval) -> Result<()> {
        if let Some(log) = self.log.as_deref_mut() {
            match log.append(&closed.record, &closed.start) {
                Ok(()) => self.last_error = None,
                Err(e) => {
                    self.observer.warning(&format!("counts log: {e:#}"));
                    self.last_error = Some(e);
                }
            }
        }
        self.observer.interval(&closed.record)
    }
}

/// Runs frames of every source through its [`Live`] until every source has ended, `stop` is
/// set or each has read `max_frames`; a source's partial interval is written when it ends.
/// Errors: a file source unreadable [`MAX_UNREADABLE_IN_A_ROW`] frames in a row (the other
/// sources go on first), or an observer that failed (stdout closed); what was counted is
/// written first either way.
pub fn run(
    pipeline: &mut Pipeline,
    sources: &mut [SourceRun],
    log: Option<&mut CountsLog>,
    settings: &RunSettings,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<RunSummary> {
    let started = Instant::now();
    for source in sources.iter_mut() {
        source.pacing = Pacing::new(settings.max_fps);
    }
    let mut outlet = Outlet { log, observer, last_error: None };
    let mut given_up: Vec<anyhow::Error> = Vec::new();
    let outcome = loop {
        let running: Vec<usize> = (0..sources.len()).filter(|&i| sources[i].running).collect();
        if stop.load(Ordering::Relaxed) || running.is_empty() {
            break Ok(());
        }
        // One source: wait on it. Several: wait on none, serve whichever has a frame.
        let alone = running.len() == 1;
        let mut served = false;
        let mut result = Ok(());
        for &i in &running {
            result = match serve(pipeline, &mut sources[i], alone, settings, &mut outlet, started) {
                Ok(Served::Frame) => {
                    served = true;
                    Ok(())
                }
                Ok(Served::Nothing) => Ok(()),
                Ok(Served::Ended) => end(&mut sources[i], &mut outlet),
                Ok(Served::GaveUp(e)) => {
                    if !alone {
                        outlet.observer.warning(&format!("{e:#}; the other sources go on"));
                    }
                    given_up.push(e);
                    end(&mut sources[i], &mut outlet)
                }
                Err(e) => Err(e),
            };
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result.and_then(|()| roll_due(sources, &mut outlet)) {
            break Err(e);
        }
        if !served && !alone {
            std::thread::sleep(IDLE_ROUND);
        }
    };
    // What was counted is written even when a source gave up or a watcher failed.
    let mut told = Ok(());
    for source in sources.iter_mut().filter(|s| s.running) {
        let result = end(source, &mut outlet);
        told = told.and(result);
    }
    outcome?;
    told?;
    if !given_up.is_empty() {
        let all: Vec<String> = given_up.iter().map(|e| format!("{e:#}")).collect();
        bail!("{}", all.join("; "));
    }
    let pending = outlet.log.as_ref().map_or(0, |log| log.pending());
    Ok(RunSummary {
        frames: sources.iter().map(|s| s.live.frames_total).sum(),
        people: sources.iter().map(|s| s.live.people_total).sum(),
        seconds: started.elapsed().as_secs_f64(),
        unwritten: (pending > 0).then(|| {
            let e = outlet.last_error.take().unwrap_or_else(|| anyhow::anyhow!("counts log not written"));
            (e, pending)
        }),
    })
}

/// What serving a source once did.
enum Served {
    Frame,
    Nothing,
    /// The source ended (its stream, or `max_frames`).
    Ended,
    /// Too many unreadable frames in a row.
    GaveUp(anyhow::Error),
}

/// Reads and processes at most one frame of `source`. Errors are a watcher's failure only.
fn serve(
    pipeline: &mut Pipeline,
    source: &mut SourceRun,
    alone: bool,
    settings: &RunSettings,
    outlet: &mut Outlet,
    started: Instant,
) -> Result<Served> {
    if settings.max_frames.is_some_and(|m| source.live.frames_total >= m) {
        return Ok(Served::Ended);
    }
    let wait = source.pacing.wait_at(Instant::now());
    if !wait.is_zero() {
        if !alone {
            return Ok(Served::Nothing);
        }
        std::thread::sleep(wait);
    }
    let (frame, dropped) = match source.frames.pull(if alone { LIVE_WAIT } else { Duration::ZERO }) {
        Pulled::Frame(frame, dropped) => (frame, dropped),
        Pulled::Idle => return Ok(Served::Nothing),
        Pulled::End => return Ok(Served::Ended),
        Pulled::Unreadable(e) => {
            outlet.observer.warning(&format!("{}frame skipped: {e:#}", prefix(&source.live)));
            source.unreadable += 1;
            if source.unreadable < MAX_UNREADABLE_IN_A_ROW {
                return Ok(Served::Nothing);
            }
            return Ok(Served::GaveUp(anyhow::anyhow!(
                "{}: {MAX_UNREADABLE_IN_A_ROW} unreadable frames in a row; giving up",
                source.frames.describe()
            )));
        }
    };
    source.unreadable = 0;
    source.pacing.started(Instant::now());
    match source.live.process(pipeline, &frame, dropped) {
        Ok(report) => outlet.observer.frame(&frame, &report, &source.live, started.elapsed())?,
        Err(e) => outlet.observer.warning(&format!("{}frame {}: {e:#}", prefix(&source.live), frame.index)),
    }
    Ok(Served::Frame)
}

/// `source NAME: ` before a message about a named source.
fn prefix(live: &Live) -> String {
    if live.source.is_empty() { String::new() } else { format!("source {}: ", live.source) }
}

/// A source is done: its reader stopped, its partial interval written.
fn end(source: &mut SourceRun, outlet: &mut Outlet) -> Result<()> {
    source.running = false;
    source.frames.stop();
    outlet.closed(source.live.finish(&Zoned::now()))
}

/// Closes the intervals that are due, each source's in turn.
fn roll_due(sources: &mut [SourceRun], outlet: &mut Outlet) -> Result<()> {
    let now = Zoned::now();
    for source in sources.iter_mut().filter(|s| s.running) {
        if let Some(closed) = source.live.roll_if_due(&now) {
            outlet.closed(closed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use image::RgbImage;

    use super::*;
    use crate::age_gender::AgeGenderModel;
    use crate::detect::{Face, FaceDetector};
    use crate::live::LiveOptions;
    use crate::pipeline::Pipeline;

    /// Frames that are unreadable where `script` says false.
    struct Scripted {
        script: Vec<bool>,
        at: usize,
    }

    impl FrameSource for Scripted {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            let Some(&good) = self.script.get(self.at) else { return Ok(None) };
            self.at += 1;
            if !good {
                bail!("frame {} is corrupt", self.at - 1);
            }
            let image = RgbImage::from_pixel(64, 48, image::Rgb([90, 90, 90]));
            Ok(Some(Frame { image, index: self.at as u64 - 1, time: Duration::ZERO }))
        }
        fn is_live(&self) -> bool {
            false
        }
        fn describe(&self) -> String {
            "scripted.avi".into()
        }
    }

    struct NoFaces;
    impl FaceDetector for NoFaces {
        fn detect(&mut self, _frame: &RgbImage) -> Result<Vec<Face>> {
            Ok(Vec::new())
        }
    }

    fn pipeline() -> Pipeline {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/faceage-int8.onnx");
        Pipeline::new(Box::new(NoFaces), AgeGenderModel::load(&model).unwrap())
    }

    fn scripted(name: &str, script: Vec<bool>) -> SourceRun {
        let frames = Frames::File(Box::new(Scripted { script, at: 0 }));
        // Intervals sit on the clock's grid, and a slow run straddled even an hour's boundary
        // (in CI): this grid's first boundary (2^32 s) is in 2106.
        SourceRun::new(
            frames,
            Live::new(LiveOptions { interval_secs: 1 << 32, ..LiveOptions::default() }).named(name),
        )
    }

    #[derive(Default)]
    struct Recorder {
        frames: Vec<u64>,
        /// (source, frame) of every frame.
        seen: Vec<(String, u64)>,
        intervals: usize,
        records: Vec<IntervalRecord>,
        warnings: Vec<String>,
    }

    impl Observer for Recorder {
        fn frame(&mut self, frame: &Frame, _: &FrameReport, live: &Live, _: Duration) -> Result<()> {
            self.frames.push(frame.index);
            self.seen.push((live.source.clone(), frame.index));
            Ok(())
        }
        fn interval(&mut self, record: &IntervalRecord) -> Result<()> {
            self.intervals += 1;
            self.records.push(record.clone());
            Ok(())
        }
        fn warning(&mut self, message: &str) {
            self.warnings.push(message.to_string());
        }
    }

    fn run_script(script: Vec<bool>, settings: RunSettings) -> (Result<RunSummary>, Recorder) {
        let mut sources = [scripted("", script)];
        let mut recorder = Recorder::default();
        let stop = AtomicBool::new(false);
        let result = run(&mut pipeline(), &mut sources, None, &settings, &stop, &mut recorder);
        (result, recorder)
    }

    #[test]
    fn corrupt_frames_are_skipped_with_a_warning_and_the_run_goes_on() {
        let (result, seen) = run_script(vec![true, false, true, false, false, true], RunSettings::default());
        let summary = result.unwrap();
        assert_eq!(summary.frames, 3);
        assert_eq!(seen.frames, vec![0, 2, 5]);
        assert_eq!(seen.warnings.len(), 3);
        assert!(seen.warnings[0].contains("frame 1 is corrupt"), "{:?}", seen.warnings);
        assert_eq!(seen.intervals, 1, "the partial interval is written at the end");
    }

    #[test]
    fn a_source_that_stays_unreadable_is_given_up_after_writing_what_was_counted() {
        let mut script = vec![true];
        script.extend(std::iter::repeat_n(false, MAX_UNREADABLE_IN_A_ROW as usize + 5));
        let (result, seen) = run_script(script, RunSettings::default());
        let error = format!("{:#}", result.unwrap_err());
        assert!(error.contains("scripted.avi") && error.contains("in a row"), "{error}");
        assert_eq!(seen.warnings.len(), MAX_UNREADABLE_IN_A_ROW as usize);
        assert_eq!(seen.intervals, 1);
    }

    #[test]
    fn max_frames_and_stop_end_the_run() {
        let (result, seen) = run_script(vec![true; 10], RunSettings { max_frames: Some(4), max_fps: None });
        assert_eq!(result.unwrap().frames, 4);
        assert_eq!(seen.frames, vec![0, 1, 2, 3]);

        let mut sources = [scripted("", vec![true; 10])];
        let stop = AtomicBool::new(true);
        let summary =
            run(&mut pipeline(), &mut sources, None, &RunSettings::default(), &stop, &mut NoObserver)
                .unwrap();
        assert_eq!(summary.frames, 0, "a stop asked for before the first frame reads none");
    }

    #[test]
    fn a_watcher_that_fails_ends_the_run_after_the_interval_is_written() {
        struct ClosedStdout(usize);
        impl Observer for ClosedStdout {
            fn frame(&mut self, _: &Frame, _: &FrameReport, _: &Live, _: Duration) -> Result<()> {
                bail!("stdout: broken pipe")
            }
            fn interval(&mut self, _: &IntervalRecord) -> Result<()> {
                self.0 += 1;
                Ok(())
            }
        }
        let mut sources = [scripted("", vec![true; 5])];
        let mut watcher = ClosedStdout(0);
        let stop = AtomicBool::new(false);
        let result = run(&mut pipeline(), &mut sources, None, &RunSettings::default(), &stop, &mut watcher);
        assert!(format!("{:#}", result.unwrap_err()).contains("broken pipe"));
        assert_eq!(
            (sources[0].live.frames_total, watcher.0),
            (1, 1),
            "stopped at the first frame, its interval written"
        );
    }

    #[test]
    fn several_sources_are_served_in_turn_each_with_its_own_counts_in_one_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counts.jsonl");
        let mut log = CountsLog::new(&path, crate::counts::LogFormat::Jsonl, crate::counts::Rotation::None);
        let mut sources = [scripted("door", vec![true; 3]), scripted("till", vec![true; 6])];
        let mut seen = Recorder::default();
        let stop = AtomicBool::new(false);
        let summary =
            run(&mut pipeline(), &mut sources, Some(&mut log), &RunSettings::default(), &stop, &mut seen)
                .unwrap();
        assert_eq!(summary.frames, 9);
        // Taken in turn while both have frames, then the longer one alone.
        let order: Vec<(&str, u64)> = seen.seen.iter().map(|(s, i)| (s.as_str(), *i)).collect();
        assert_eq!(
            order,
            vec![
                ("door", 0),
                ("till", 0),
                ("door", 1),
                ("till", 1),
                ("door", 2),
                ("till", 2),
                ("till", 3),
                ("till", 4),
                ("till", 5)
            ]
        );
        // One line per source, each counting its own frames, in the one log.
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let per_source: Vec<(&str, u64)> =
            lines.iter().map(|l| (l["source"].as_str().unwrap(), l["frames"].as_u64().unwrap())).collect();
        assert_eq!(per_source, vec![("door", 3), ("till", 6)], "door's line is written when it ends");
        assert_eq!(seen.records.len(), 2);
    }

    #[test]
    fn a_source_that_gives_up_does_not_stop_the_others() {
        let mut bad = vec![true];
        bad.extend(std::iter::repeat_n(false, MAX_UNREADABLE_IN_A_ROW as usize));
        let mut sources = [scripted("broken", bad), scripted("fine", vec![true; 80])];
        let mut seen = Recorder::default();
        let stop = AtomicBool::new(false);
        let result = run(&mut pipeline(), &mut sources, None, &RunSettings::default(), &stop, &mut seen);
        let error = format!("{:#}", result.unwrap_err());
        assert!(error.contains("scripted.avi") && error.contains("giving up"), "{error}");
        assert_eq!(sources[1].live.frames_total, 80, "the good source was read to its end");
        assert!(seen.warnings.iter().any(|w| w.contains("the other sources go on")), "{:?}", seen.warnings);
        assert!(seen.warnings.iter().any(|w| w.starts_with("source broken: frame skipped")));
        assert_eq!(seen.records.len(), 2, "both sources' intervals are written");
    }

    #[test]
    fn max_frames_counts_per_source() {
        let mut sources = [scripted("a", vec![true; 10]), scripted("b", vec![true; 10])];
        let settings = RunSettings { max_frames: Some(4), max_fps: None };
        let stop = AtomicBool::new(false);
        let summary = run(&mut pipeline(), &mut sources, None, &settings, &stop, &mut NoObserver).unwrap();
        assert_eq!(summary.frames, 8);
    }

    #[test]
    fn pacing_waits_out_the_rest_of_the_gap() {
        let mut pacing = Pacing::new(Some(10.0));
        let t0 = Instant::now();
        assert_eq!(pacing.wait_at(t0), Duration::ZERO, "the first frame starts at once");
        pacing.started(t0);
        let wait = pacing.wait_at(t0 + Duration::from_millis(30));
        assert!((wait.as_secs_f64() - 0.070).abs() < 1e-6, "{wait:?}");
        assert_eq!(pacing.wait_at(t0 + Duration::from_millis(150)), Duration::ZERO);
        assert_eq!(Pacing::new(None).wait_at(t0), Duration::ZERO);
        assert_eq!(Pacing::new(Some(0.0)).wait_at(t0), Duration::ZERO, "0 is no limit");
    }
}
