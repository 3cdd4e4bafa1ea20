//! What the board does all day, one frame at a time: read faces, follow people, count each
//! person once, and close an interval of the counts log when its time is up.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use jiff::ZonedDateTime as Zoned;
use serde::Serialize;

use crate::counts::{BandTally, IntervalCounter, IntervalRecord, next_boundary};
use crate::detect::Face;
use crate::pipeline::{Pipeline, StageTimes};
use crate::source::Frame;
use crate::track::{TrackUpdate, TrackView, Tracker, TrackerConfig};

#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// Length of a counts-log interval.
    pub interval_secs: u64,
    pub tracker: TrackerConfig,
    /// Face crops of counted people are written here only when the user asks.
    pub save_crops: Option<PathBuf>,
    /// The detector runs on one frame in this many; the tracker carries people along their
    /// motion in between (1: every frame). Model card, "Reading each person".
    pub detect_every: u32,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            tracker: TrackerConfig::default(),
            save_crops: None,
            detect_every: DETECT_EVERY,
        }
    }
}

/// [`LiveOptions::detect_every`]'s default.
pub const DETECT_EVERY: u32 = 2;

/// What one frame changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FrameReport {
    /// The faces found in this frame, best score first.
    pub faces: Vec<Face>,
    /// How many of them the model read (see [`crate::track::ReadPolicy`]).
    pub faces_read: usize,
    /// Current tracks after this frame.
    pub tracks: Vec<TrackView>,
    /// People counted in this frame (tracks just confirmed).
    pub counted: Vec<TrackView>,
    /// Tracks that ended in this frame.
    pub ended: Vec<TrackView>,
}

/// Counts of the current local day, for the kiosk.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DayCounts {
    pub date: String,
    pub people: u32,
    #[serde(flatten)]
    pub tally: BandTally,
}

/// An interval closed: its record, and its start for the log's daily file.
#[derive(Clone, Debug)]
pub struct ClosedInterval {
    pub record: IntervalRecord,
    pub start: Zoned,
}

/// The counting state of one source (one camera): its tracker, its interval, its day. The
/// model ([`Pipeline`]) is shared by every source and handed in for each frame; frames of two
/// sources never meet in one tracker.
pub struct Live {
    /// The source's name, written into its counts-log lines (empty: none, one source).
    pub source: String,
    tracker: Tracker,
    counter: IntervalCounter,
    next_roll: Zoned,
    options: LiveOptions,
    dropped_seen: u64,
    /// Since the process started.
    pub people_total: u64,
    /// People per gender and age band since the process started (`/metrics`).
    pub tally_total: BandTally,
    pub frames_total: u64,
    pub today: DayCounts,
    pub times: StageTimes,
    pub track_time: std::time::Duration,
}

impl Live {
    pub fn new(options: LiveOptions) -> Self {
        let now = Zoned::now();
        Self {
            source: String::new(),
            tracker: Tracker::new(options.tracker.clone()),
            counter: IntervalCounter::new(now.clone()),
            next_roll: next_boundary(&now, options.interval_secs),
            options,
            dropped_seen: 0,
            people_total: 0,
            tally_total: BandTally::default(),
            frames_total: 0,
            today: DayCounts { date: now.strftime("%Y-%m-%d").to_string(), ..Default::default() },
            times: StageTimes::default(),
            track_time: std::time::Duration::ZERO,
        }
    }

    /// Names the source (see [`Live::source`]).
    pub fn named(mut self, source: &str) -> Self {
        self.source = source.to_string();
        self
    }

    /// Runs one frame through detection, tracking and counting. `dropped_total` is how many
    /// frames the source has dropped so far.
    pub fn process(
        &mut self,
        pipeline: &mut Pipeline,
        frame: &Frame,
        dropped_total: u64,
    ) -> Result<FrameReport> {
        let detect_now = self.frames_total.is_multiple_of(self.options.detect_every.max(1) as u64);
        let (faces, faces_read, update) = if detect_now {
            self.detect_and_read(pipeline, frame)?
        } else {
            let started = Instant::now();
            self.tracker.coast();
            self.track_time += started.elapsed();
            (Vec::new(), 0, TrackUpdate::default())
        };
        let tracks = self.tracker.tracks();

        self.counter.frames += 1;
        self.frames_total += 1;
        self.counter.dropped += dropped_total.saturating_sub(self.dropped_seen);
        self.dropped_seen = dropped_total.max(self.dropped_seen);
        let date = Zoned::now().strftime("%Y-%m-%d").to_string();
        if date != self.today.date {
            self.today = DayCounts { date, ..Default::default() };
        }
        // A visit's length is known when it ends: it goes into the interval it ended in.
        self.counter.dwell.extend(update.ended.iter().filter(|t| t.confirmed).map(|t| t.dwell_secs));
        for person in &update.confirmed {
            let r = &person.reading;
            // The kiosk's day and the log's interval count by one rule (counts::BandCounts).
            self.counter.add_person(r.gender, &r.bands);
            self.people_total += 1;
            self.tally_total.add_person(r.gender, &r.bands);
            self.today.people += 1;
            self.today.tally.add_person(r.gender, &r.bands);
            if let Some(dir) = &self.options.save_crops {
                save_crop(pipeline, dir, &self.source, frame, person, &faces)?;
            }
        }
        Ok(FrameReport { faces, faces_read, tracks, counted: update.confirmed, ended: update.ended })
    }

    /// Finds the faces of `frame`, reads those the read policy picks and moves the tracks on.
    fn detect_and_read(
        &mut self,
        pipeline: &mut Pipeline,
        frame: &Frame,
    ) -> Result<(Vec<Face>, usize, TrackUpdate)> {
        // Faces are located in every detector frame (to follow people); only those the read
        // policy picks are refined (framing's second look) and read.
        let faces = pipeline.locate_timed(&frame.image, &mut self.times)?;
        let plan = self.tracker.plan(&faces);
        let to_read = plan.faces_to_read();
        let mut refined: Vec<Option<Face>> = vec![None; faces.len()];
        for &i in &to_read {
            refined[i] = Some(pipeline.refine_timed(&frame.image, &faces[i], &mut self.times)?);
        }
        let chosen: Vec<&Face> = refined.iter().flatten().collect();
        let read = pipeline.read_timed(&frame.image, &chosen, &mut self.times)?;
        let mut estimates = vec![None; faces.len()];
        for (&i, estimate) in to_read.iter().zip(read) {
            estimates[i] = Some(estimate);
        }
        let started = Instant::now();
        // A face that was read is followed where the second look placed it.
        let faces: Vec<Face> = faces.into_iter().zip(refined).map(|(f, r)| r.unwrap_or(f)).collect();
        let update = self.tracker.apply(&plan, &faces, &estimates, frame.time);
        self.track_time += started.elapsed();
        Ok((faces, to_read.len(), update))
    }

    /// Closes the interval when its end has passed.
    pub fn roll_if_due(&mut self, now: &Zoned) -> Option<ClosedInterval> {
        if *now < self.next_roll {
            return None;
        }
        let end = self.next_roll.clone();
        self.next_roll = next_boundary(now, self.options.interval_secs);
        Some(self.close_interval(end))
    }

    /// Writes the partial interval up to `now` (on SIGINT/SIGTERM or the end of a stream);
    /// the people still in view end their visit here.
    pub fn finish(&mut self, now: &Zoned) -> ClosedInterval {
        let in_view = self.tracker.tracks();
        self.counter.dwell.extend(in_view.iter().filter(|t| t.confirmed).map(|t| t.dwell_secs));
        self.close_interval(now.clone())
    }

    fn close_interval(&mut self, end: Zoned) -> ClosedInterval {
        let start = self.counter.start.clone();
        let mut record = self.counter.roll(end);
        record.source = Some(self.source.clone()).filter(|s| !s.is_empty());
        ClosedInterval { record, start }
    }

    /// Frames the source dropped since the start (the newest frame wins).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_seen
    }
}

/// Written only with `--save-crops`: the model's crop of a newly counted person.
fn save_crop(
    pipeline: &Pipeline,
    dir: &std::path::Path,
    source: &str,
    frame: &Frame,
    person: &TrackView,
    faces: &[Face],
) -> Result<()> {
    let Some(face) = faces.iter().find(|f| f.bbox == person.bbox) else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let crop = pipeline.model.crop(&frame.image, face);
    // Track ids are per source: with several, the source's name keeps the files apart.
    let prefix: String = source.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}-") };
    let path = dir.join(format!("{prefix}person-{:06}-frame-{:06}.png", person.id, frame.index));
    crop.save(&path).with_context(|| format!("{}: cannot write", path.display()))
}
