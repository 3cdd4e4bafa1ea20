//! `faceage run --events` / `--trace`: one JSON line per event on a writer (stdout). The
//! lines are an interface scripts read; their shape is tested here.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::age_gender::Gender;
use crate::bands::age_band;
use crate::counts::IntervalRecord;
use crate::live::{FrameReport, Live};
use crate::run_loop::Observer;
use crate::source::Frame;

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    Person {
        frame: u64,
        track: u64,
        age: f32,
        age_spread: f32,
        gender: Gender,
        female: f32,
        /// The band of the age reading.
        band: &'static str,
        /// What the person added to each band of the counts (see `counts::BandCounts`).
        band_shares: [f32; 6],
        /// Time in view so far (when counted), seconds.
        dwell_s: f32,
    },
    TrackEnded {
        frame: u64,
        track: u64,
        confirmed: bool,
        /// Frames in which the face was read.
        frames: u32,
        /// Time in view, first to last frame the face was seen, seconds.
        dwell_s: f32,
        age: f32,
        age_spread: f32,
        gender: Gender,
    },
    Interval {
        record: &'a IntervalRecord,
    },
    Frame {
        frame: u64,
        tracks: Vec<TraceTrack>,
    },
}

/// A track in a `--trace` line: fused and per-frame readings side by side.
#[derive(Serialize)]
pub struct TraceTrack {
    track: u64,
    confirmed: bool,
    seen: bool,
    age: f32,
    frame_age: f32,
    female: f32,
    frame_female: f32,
}

/// An event line: the event, and the source it happened at when the run named its sources.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    event: &'a Event<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    source: &'a str,
}

fn round_tenth(v: f32) -> f32 {
    (v * 10.0).round() / 10.0
}

/// The events of every frame, as JSON lines: people counted, tracks ended and intervals
/// closed (`events`), and every frame's tracks (`trace`).
pub struct EventWriter<W: Write> {
    out: W,
    pub events: bool,
    pub trace: bool,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W, events: bool, trace: bool) -> Self {
        Self { out, events, trace }
    }

    fn line(&mut self, source: &str, event: &Event) -> Result<()> {
        writeln!(self.out, "{}", serde_json::to_string(&Line { event, source })?).context("stdout")
    }

    fn people(&mut self, source: &str, frame: &Frame, report: &FrameReport) -> Result<()> {
        for t in &report.counted {
            let r = &t.reading;
            self.line(
                source,
                &Event::Person {
                    frame: frame.index,
                    track: t.id,
                    age: r.age,
                    age_spread: r.age_spread,
                    gender: r.gender,
                    female: r.female,
                    band: age_band(r.age),
                    band_shares: r.bands.map(|v| (v * 1000.0).round() / 1000.0),
                    dwell_s: round_tenth(t.dwell_secs),
                },
            )?;
        }
        for t in &report.ended {
            let r = &t.reading;
            self.line(
                source,
                &Event::TrackEnded {
                    frame: frame.index,
                    track: t.id,
                    confirmed: t.confirmed,
                    frames: r.frames,
                    dwell_s: round_tenth(t.dwell_secs),
                    age: r.age,
                    age_spread: r.age_spread,
                    gender: r.gender,
                },
            )?;
        }
        Ok(())
    }

    fn tracks(&mut self, source: &str, frame: &Frame, report: &FrameReport) -> Result<()> {
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
        self.line(source, &Event::Frame { frame: frame.index, tracks })
    }
}

impl<W: Write> Observer for EventWriter<W> {
    fn frame(&mut self, frame: &Frame, report: &FrameReport, live: &Live, _elapsed: Duration) -> Result<()> {
        if self.events {
            self.people(&live.source, frame, report)?;
        }
        if self.trace {
            self.tracks(&live.source, frame, report)?;
        }
        if self.events || self.trace {
            self.out.flush().context("stdout")?;
        }
        Ok(())
    }

    fn interval(&mut self, record: &IntervalRecord) -> Result<()> {
        if self.events {
            // The record names its source itself.
            self.line("", &Event::Interval { record })?;
            self.out.flush().context("stdout")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use image::RgbImage;
    use serde_json::Value;

    use super::*;
    use crate::age_gender::Estimate;
    use crate::geometry::BBox;
    use crate::track::{FusedReading, TrackView};

    fn view(id: u64, age: f32, confirmed: bool) -> TrackView {
        let reading = FusedReading {
            age,
            age_spread: 3.0,
            female: 0.8,
            gender: Gender::Female,
            bands: [0.0, 0.0, 0.1, 0.8123456, 0.0876544, 0.0],
            frames: 7,
        };
        let estimate = Estimate { age: age + 1.0, female: 0.7, age_std: None, age_bands: None };
        TrackView {
            id,
            bbox: BBox { cx: 10.0, cy: 10.0, w: 5.0, h: 5.0 },
            reading,
            frame_estimate: estimate,
            confirmed,
            seen_now: true,
            dwell_secs: 12.345,
        }
    }

    fn lines(writer: EventWriter<Vec<u8>>) -> Vec<Value> {
        String::from_utf8(writer.out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_counted_person_and_an_ended_track_are_one_line_each() {
        let frame = Frame { image: RgbImage::new(1, 1), index: 42, time: Duration::ZERO };
        let report = FrameReport {
            counted: vec![view(3, 31.0, true)],
            ended: vec![view(2, 64.0, false)],
            ..Default::default()
        };
        let mut writer = EventWriter::new(Vec::new(), true, false);
        writer.people("door", &frame, &report).unwrap();
        let lines = lines(writer);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l["source"] == "door"), "{lines:?}");
        let person = &lines[0];
        assert_eq!(person["event"], "person");
        assert_eq!((person["frame"].as_u64(), person["track"].as_u64()), (Some(42), Some(3)));
        assert_eq!(person["band"], "20-39");
        assert_eq!(person["gender"], "F");
        assert_eq!(person["band_shares"][3].as_f64().map(|v| (v * 1000.0).round()), Some(812.0));
        let ended = &lines[1];
        assert_eq!(ended["event"], "track_ended");
        assert_eq!((ended["confirmed"].as_bool(), ended["frames"].as_u64()), (Some(false), Some(7)));
        assert_eq!((person["dwell_s"].as_f64(), ended["dwell_s"].as_f64()), (Some(12.3), Some(12.3)));
    }

    #[test]
    fn a_trace_line_shows_fused_and_per_frame_readings() {
        let frame = Frame { image: RgbImage::new(1, 1), index: 5, time: Duration::ZERO };
        let report = FrameReport { tracks: vec![view(9, 40.0, true)], ..Default::default() };
        let mut writer = EventWriter::new(Vec::new(), false, true);
        writer.tracks("", &frame, &report).unwrap();
        let line = &lines(writer)[0];
        assert_eq!(line["event"], "frame");
        assert!(line.get("source").is_none(), "no source key for an unnamed source: {line}");
        let track = &line["tracks"][0];
        assert_eq!((track["age"].as_f64(), track["frame_age"].as_f64()), (Some(40.0), Some(41.0)));
    }
}
