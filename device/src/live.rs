//! What the board does all day, one frame at a time: read faces, follow people, count each
//! person once, and close an interval of the counts log when its time is up.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use jiff::ZonedDateTime as Zoned;
use serde::Serialize;

use crate::counts::{BandTally, CountsLog, IntervalCounter, IntervalRecord, next_boundary};
use crate::pipeline::{FaceReading, Pipeline, StageTimes};
use crate::source::Frame;
use crate::track::{TrackView, Tracker, TrackerConfig};

#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// Length of a counts-log interval.
    pub interval_secs: u64,
    pub tracker: TrackerConfig,
    /// Face crops of counted people are written here only when the user asks.
    pub save_crops: Option<PathBuf>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self { interval_secs: 60, tracker: TrackerConfig::default(), save_crops: None }
    }
}

/// What one frame changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FrameReport {
    pub readings: Vec<FaceReading>,
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

pub struct Live {
    pipeline: Pipeline,
    tracker: Tracker,
    counter: IntervalCounter,
    next_roll: Zoned,
    log: Option<CountsLog>,
    options: LiveOptions,
    dropped_seen: u64,
    /// Since the process started.
    pub people_total: u64,
    pub frames_total: u64,
    pub today: DayCounts,
    pub times: StageTimes,
    pub track_time: std::time::Duration,
}

impl Live {
    pub fn new(pipeline: Pipeline, options: LiveOptions, log: Option<CountsLog>) -> Self {
        let now = Zoned::now();
        Self {
            pipeline,
            tracker: Tracker::new(options.tracker.clone()),
            counter: IntervalCounter::new(now.clone()),
            next_roll: next_boundary(&now, options.interval_secs),
            log,
            options,
            dropped_seen: 0,
            people_total: 0,
            frames_total: 0,
            today: DayCounts { date: now.strftime("%Y-%m-%d").to_string(), ..Default::default() },
            times: StageTimes::default(),
            track_time: std::time::Duration::ZERO,
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Runs one frame through detection, tracking and counting. `dropped_total` is how many
    /// frames the source has dropped so far.
    pub fn process(&mut self, frame: &Frame, dropped_total: u64) -> Result<FrameReport> {
        let readings = self.pipeline.analyze_timed(&frame.image, &mut self.times)?;
        let started = Instant::now();
        let update = self.tracker.update(&readings);
        let tracks = self.tracker.tracks();
        self.track_time += started.elapsed();

        self.counter.frames += 1;
        self.frames_total += 1;
        self.counter.dropped += dropped_total.saturating_sub(self.dropped_seen);
        self.dropped_seen = dropped_total.max(self.dropped_seen);
        let date = Zoned::now().strftime("%Y-%m-%d").to_string();
        if date != self.today.date {
            self.today = DayCounts { date, ..Default::default() };
        }
        for person in &update.confirmed {
            let r = &person.reading;
            // The kiosk's day and the log's interval count by one rule (counts::BandCounts).
            self.counter.add_person(r.gender, &r.bands);
            self.people_total += 1;
            self.today.people += 1;
            self.today.tally.add_person(r.gender, &r.bands);
            if let Some(dir) = &self.options.save_crops {
                self.save_crop(dir, frame, person, &readings)?;
            }
        }
        Ok(FrameReport { readings, tracks, counted: update.confirmed, ended: update.ended })
    }

    /// Written only with `--save-crops`: the model's crop of a newly counted person.
    fn save_crop(
        &self,
        dir: &std::path::Path,
        frame: &Frame,
        person: &TrackView,
        readings: &[FaceReading],
    ) -> Result<()> {
        let Some(reading) = readings.iter().find(|r| r.face.bbox == person.bbox) else { return Ok(()) };
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let crop = self.pipeline.model.crop(&frame.image, &reading.face);
        let path = dir.join(format!("person-{:06}-frame-{:06}.png", person.id, frame.index));
        crop.save(&path).with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Closes the interval when its end has passed; returns the record and any error from
    /// writing it (the record stays queued in the log then).
    pub fn roll_if_due(&mut self, now: &Zoned) -> Option<(IntervalRecord, Result<()>)> {
        if *now < self.next_roll {
            return None;
        }
        let end = self.next_roll.clone();
        self.next_roll = next_boundary(now, self.options.interval_secs);
        Some(self.close_interval(end))
    }

    /// Writes the partial interval up to `now` (on SIGINT/SIGTERM or the end of a stream).
    pub fn finish(&mut self, now: &Zoned) -> (IntervalRecord, Result<()>) {
        self.close_interval(now.clone())
    }

    fn close_interval(&mut self, end: Zoned) -> (IntervalRecord, Result<()>) {
        let start = self.counter.start.clone();
        let record = self.counter.roll(end);
        let written = match &mut self.log {
            Some(log) => log.append(&record, &start),
            None => Ok(()),
        };
        (record, written)
    }

    /// Frames the source dropped since the start (the newest frame wins).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_seen
    }

    /// Lines the log still holds in memory.
    pub fn pending_lines(&self) -> usize {
        self.log.as_ref().map_or(0, CountsLog::pending)
    }
}
