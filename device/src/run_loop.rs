//! `faceage run`'s loop as a library: frames pulled from a source (paced; on a live source the
//! newest frame wins), each run through [`Live`], intervals of the counts log closed on time,
//! and whatever watches (event lines on stdout, the kiosk) told through an [`Observer`]. The
//! command parses its arguments and wires these together; nothing here prints but warnings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use jiff::ZonedDateTime as Zoned;

use crate::counts::IntervalRecord;
use crate::live::{FrameReport, Live};
use crate::source::{self, Frame, FrameSource, LatestFrame, Next, SourceOptions, SourceSpec};

/// Unreadable frames in a row after which a file source is given up (a live source reopens
/// itself with back-off instead: [`LatestFrame`]).
pub const MAX_UNREADABLE_IN_A_ROW: u32 = 50;

/// How long the loop waits for a live frame before it looks at the clock (so an interval
/// closes on time when nobody walks past a camera that stopped sending).
const LIVE_WAIT: Duration = Duration::from_millis(250);

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
    /// folders in order.
    pub fn open(spec: &str, options: &SourceOptions) -> Result<Frames> {
        let live = matches!(SourceSpec::parse(spec)?, SourceSpec::Camera(_) | SourceSpec::Stream(_))
            || options.realtime;
        if !live {
            return Ok(Frames::File(source::open(spec, options)?));
        }
        let (spec, options) = (spec.to_string(), options.clone());
        Ok(Frames::Live(LatestFrame::spawn_checked(
            move || source::open(&spec, &options),
            |msg| eprintln!("source: {msg}"),
        )?))
    }

    pub fn pull(&mut self) -> Pulled {
        match self {
            Frames::File(source) => match source.next_frame() {
                Ok(Some(frame)) => Pulled::Frame(frame, 0),
                Ok(None) => Pulled::End,
                Err(e) => Pulled::Unreadable(e),
            },
            Frames::Live(latest) => match latest.next(LIVE_WAIT) {
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
    /// A frame was read: its report, the live state after it and the time since the start.
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
    /// Frames per second at most (the newest frame wins on a live source).
    pub max_fps: Option<f32>,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunSummary {
    pub frames: u64,
    pub people: u64,
    pub seconds: f64,
    /// The last interval could not be written: the error and the lines lost with the process.
    pub unwritten: Option<(anyhow::Error, usize)>,
}

/// Runs frames through `live` until the source ends, `stop` is set or `max_frames` is
/// reached, then writes the partial interval. Errors: a file source unreadable
/// [`MAX_UNREADABLE_IN_A_ROW`] frames in a row, or an observer that failed (stdout closed);
/// the partial interval is written first either way.
pub fn run(
    live: &mut Live,
    frames: &mut Frames,
    settings: &RunSettings,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<RunSummary> {
    let mut pacing = Pacing::new(settings.max_fps);
    let mut unreadable = 0u32;
    let started = Instant::now();
    let outcome = loop {
        if stop.load(Ordering::Relaxed) || settings.max_frames.is_some_and(|m| live.frames_total >= m) {
            break Ok(());
        }
        let wait = pacing.wait_at(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let (frame, dropped) = match frames.pull() {
            Pulled::Frame(frame, dropped) => (frame, dropped),
            Pulled::Idle => match roll(live, observer) {
                Ok(()) => continue,
                Err(e) => break Err(e),
            },
            Pulled::Unreadable(e) => {
                observer.warning(&format!("frame skipped: {e:#}"));
                unreadable += 1;
                if unreadable >= MAX_UNREADABLE_IN_A_ROW {
                    break Err(anyhow::anyhow!(
                        "{}: {MAX_UNREADABLE_IN_A_ROW} unreadable frames in a row; giving up",
                        frames.describe()
                    ));
                }
                continue;
            }
            Pulled::End => break Ok(()),
        };
        unreadable = 0;
        pacing.started(Instant::now());
        let told = match live.process(&frame, dropped) {
            Ok(report) => observer.frame(&frame, &report, live, started.elapsed()),
            Err(e) => {
                observer.warning(&format!("frame {}: {e:#}", frame.index));
                Ok(())
            }
        };
        if let Err(e) = told.and_then(|()| roll(live, observer)) {
            break Err(e);
        }
    };
    frames.stop();
    // What was counted is written even when the source gave up or a watcher failed.
    let (record, written) = live.finish(&Zoned::now());
    let told = observer.interval(&record);
    if let Err(e) = outcome {
        if let Err(w) = written {
            observer.warning(&format!("counts log: {w:#}"));
        }
        bail!(e);
    }
    told?;
    Ok(RunSummary {
        frames: live.frames_total,
        people: live.people_total,
        seconds: started.elapsed().as_secs_f64(),
        unwritten: written.err().map(|e| (e, live.pending_lines())),
    })
}

/// Closes the interval when it is due; a log that cannot be written keeps the line queued.
fn roll(live: &mut Live, observer: &mut dyn Observer) -> Result<()> {
    if let Some((record, written)) = live.roll_if_due(&Zoned::now()) {
        if let Err(e) = written {
            observer.warning(&format!("counts log: {e:#}"));
        }
        observer.interval(&record)?;
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

    fn live() -> Live {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/faceage-int8.onnx");
        let pipeline = Pipeline::new(Box::new(NoFaces), AgeGenderModel::load(&model).unwrap());
        Live::new(pipeline, LiveOptions::default(), None)
    }

    #[derive(Default)]
    struct Recorder {
        frames: Vec<u64>,
        intervals: usize,
        warnings: Vec<String>,
    }

    impl Observer for Recorder {
        fn frame(&mut self, frame: &Frame, _: &FrameReport, _: &Live, _: Duration) -> Result<()> {
            self.frames.push(frame.index);
            Ok(())
        }
        fn interval(&mut self, _: &IntervalRecord) -> Result<()> {
            self.intervals += 1;
            Ok(())
        }
        fn warning(&mut self, message: &str) {
            self.warnings.push(message.to_string());
        }
    }

    fn run_script(script: Vec<bool>, settings: RunSettings) -> (Result<RunSummary>, Recorder) {
        let mut frames = Frames::File(Box::new(Scripted { script, at: 0 }));
        let mut recorder = Recorder::default();
        let result = run(&mut live(), &mut frames, &settings, &AtomicBool::new(false), &mut recorder);
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

        let mut frames = Frames::File(Box::new(Scripted { script: vec![true; 10], at: 0 }));
        let stop = AtomicBool::new(true);
        let summary = run(&mut live(), &mut frames, &RunSettings::default(), &stop, &mut NoObserver).unwrap();
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
        let mut frames = Frames::File(Box::new(Scripted { script: vec![true; 5], at: 0 }));
        let mut watcher = ClosedStdout(0);
        let mut live = live();
        let result =
            run(&mut live, &mut frames, &RunSettings::default(), &AtomicBool::new(false), &mut watcher);
        assert!(format!("{:#}", result.unwrap_err()).contains("broken pipe"));
        assert_eq!(
            (live.frames_total, watcher.0),
            (1, 1),
            "stopped at the first frame, its interval written"
        );
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
