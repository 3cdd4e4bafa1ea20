//! What `faceage run --kiosk` publishes for every frame: the readings of the people in view
//! and the day's counts as JSON, and, while someone watches, the picture with the readings
//! drawn on it. The page (`page.html`) reads these; their shape is tested here.

use std::time::Duration;

use image::RgbImage;
use serde::Serialize;

use super::KioskServer;
use crate::age_gender::{Gender, gender_certainty};
use crate::draw;
use crate::geometry::BBox;
use crate::live::{DayCounts, FrameReport, Live};
use crate::run_loop::Observer;
use crate::source::Frame;

/// Frames per second as an exponential average over frames (a tenth of each new gap).
#[derive(Clone, Debug, Default)]
pub struct FpsMeter {
    rate: f64,
    last: Option<Duration>,
}

impl FpsMeter {
    /// A frame at `elapsed` since the start; returns the average so far (0 after one frame).
    pub fn tick(&mut self, elapsed: Duration) -> f64 {
        if let Some(previous) = self.last {
            let gap = elapsed.saturating_sub(previous).as_secs_f64();
            if gap > 0.0 {
                self.rate = if self.rate == 0.0 { 1.0 / gap } else { 0.9 * self.rate + 0.1 / gap };
            }
        }
        self.last = Some(elapsed);
        self.rate
    }
}

/// A person in view, as the page draws and lists them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrackJson {
    pub id: u64,
    pub label: String,
    pub gender: Gender,
    pub age: f32,
    pub age_spread: f32,
    /// How sure the gender reading is, 0 (a coin toss) to 1.
    pub confidence: f32,
    pub confirmed: bool,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// The tracks seen in this frame, with their fused readings.
pub fn tracks_in_view(report: &FrameReport) -> Vec<TrackJson> {
    report
        .tracks
        .iter()
        .filter(|t| t.seen_now)
        .map(|t| {
            let r = &t.reading;
            TrackJson {
                id: t.id,
                label: draw::reading_label(r.gender, r.age),
                gender: r.gender,
                age: r.age,
                age_spread: r.age_spread,
                confidence: gender_certainty(r.female),
                confirmed: t.confirmed,
                x: t.bbox.x0(),
                y: t.bbox.y0(),
                w: t.bbox.w,
                h: t.bbox.h,
            }
        })
        .collect()
}

/// The picture a viewer sees: counted people boxed with their reading, others in grey.
pub fn overlay(image: &RgbImage, tracks: &[TrackJson]) -> RgbImage {
    let mut picture = image.clone();
    for t in tracks {
        let bbox = BBox { cx: t.x + t.w / 2.0, cy: t.y + t.h / 2.0, w: t.w, h: t.h };
        if t.confirmed {
            draw::overlay_face(&mut picture, &bbox, t.gender, t.age, t.confidence);
        } else {
            draw::rect_outline(&mut picture, &bbox, draw::GREY, 1);
        }
    }
    picture
}

/// What the page shows of one source's counts.
#[derive(Clone, Debug, Default, Serialize)]
struct SourceCounts {
    name: String,
    today: DayCounts,
    people_since_start: u64,
    frames_since_start: u64,
}

/// The counts JSON: the day of every source together, and each source's own.
fn counts_json(sources: &[SourceCounts]) -> serde_json::Value {
    // At midnight one source may roll its day before another: the newest day is today.
    let date = sources.iter().map(|s| s.today.date.as_str()).max().unwrap_or_default();
    let mut today = DayCounts { date: date.to_string(), ..Default::default() };
    for s in sources.iter().filter(|s| s.today.date == date) {
        today.people += s.today.people;
        today.tally.add(&s.today.tally);
    }
    serde_json::json!({
        "today": today,
        "since_start": {
            "people": sources.iter().map(|s| s.people_since_start).sum::<u64>(),
            "frames": sources.iter().map(|s| s.frames_since_start).sum::<u64>(),
        },
        "sources": sources.iter().map(|s| serde_json::json!({
            "name": s.name,
            "today": s.today,
            "since_start": { "people": s.people_since_start, "frames": s.frames_since_start },
        })).collect::<Vec<_>>(),
    })
}

/// Publishes every frame of every source to a running kiosk server.
pub struct KioskPublisher {
    pub server: KioskServer,
    fps: Vec<FpsMeter>,
    counts: Vec<SourceCounts>,
}

impl KioskPublisher {
    pub fn new(server: KioskServer) -> Self {
        let names = server.state.names();
        let counts =
            names.iter().map(|name| SourceCounts { name: name.clone(), ..Default::default() }).collect();
        Self { server, fps: vec![FpsMeter::default(); names.len()], counts }
    }

    /// A frame of `live`'s source (found by name; a source the server was not started with
    /// is not shown).
    pub fn publish(&mut self, frame: &Frame, report: &FrameReport, live: &Live, elapsed: Duration) {
        let Some(index) = self.counts.iter().position(|c| c.name == live.source) else { return };
        let tracks = tracks_in_view(report);
        let tracks_json = serde_json::json!({
            "source": live.source,
            "frame": frame.index,
            "fps": self.fps[index].tick(elapsed),
            "dropped": live.dropped_total(),
            "tracks": tracks,
        });
        self.counts[index].today = live.today.clone();
        self.counts[index].people_since_start = live.people_total;
        self.counts[index].frames_since_start = live.frames_total;
        let state = &self.server.state;
        state.publish_tracks(index, tracks_json.to_string());
        state.publish_counts(counts_json(&self.counts).to_string());
        if state.has_viewers(index) {
            // The same encoder `faceage bench` times (SIMD, several times the image crate's speed).
            match crate::imaging::encode_jpeg(&overlay(&frame.image, &tracks), 80) {
                Ok(jpeg) => state.publish_frame(index, jpeg),
                Err(e) => eprintln!("kiosk: frame {} not encoded: {e:#}", frame.index),
            }
        }
    }
}

impl Observer for KioskPublisher {
    fn frame(
        &mut self,
        frame: &Frame,
        report: &FrameReport,
        live: &Live,
        elapsed: Duration,
    ) -> anyhow::Result<()> {
        self.publish(frame, report, live, elapsed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::age_gender::Estimate;
    use crate::track::{FusedReading, TrackView};

    #[test]
    fn the_rate_is_an_average_of_the_gaps() {
        let mut fps = FpsMeter::default();
        assert_eq!(fps.tick(Duration::from_millis(0)), 0.0, "one frame has no rate yet");
        assert!((fps.tick(Duration::from_millis(100)) - 10.0).abs() < 1e-9);
        // A 50 ms gap moves the average a tenth of the way to 20 fps.
        assert!((fps.tick(Duration::from_millis(150)) - 11.0).abs() < 1e-9);
        assert!((fps.tick(Duration::from_millis(150)) - 11.0).abs() < 1e-9, "no gap: no change");
    }

    fn view(id: u64, female: f32, confirmed: bool, seen_now: bool) -> TrackView {
        TrackView {
            id,
            bbox: BBox { cx: 40.0, cy: 30.0, w: 20.0, h: 24.0 },
            reading: FusedReading {
                age: 33.4,
                age_spread: 4.0,
                female,
                gender: Gender::of(female >= 0.5),
                bands: [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
                frames: 5,
            },
            frame_estimate: Estimate { age: 33.0, female, age_std: None, age_bands: None },
            confirmed,
            seen_now,
            dwell_secs: 1.0,
        }
    }

    #[test]
    fn the_day_is_summed_over_sources_and_each_source_kept() {
        let day = |date: &str, people: u32, female: f64| {
            let mut today = DayCounts { date: date.into(), people, ..Default::default() };
            today.tally.female[3] = female;
            today
        };
        let sources = [
            SourceCounts {
                name: "door".into(),
                today: day("2026-12-03", 2, 2.0),
                people_since_start: 5,
                frames_since_start: 100,
            },
            SourceCounts {
                name: "till".into(),
                today: day("2026-12-03", 1, 0.5),
                people_since_start: 1,
                frames_since_start: 50,
            },
            // Not yet past midnight: its day is not today's.
            SourceCounts {
                name: "yard".into(),
                today: day("2026-12-02", 9, 9.0),
                people_since_start: 9,
                frames_since_start: 10,
            },
        ];
        let json = counts_json(&sources);
        assert_eq!(json["today"]["date"], "2026-12-03");
        assert_eq!(json["today"]["people"], 3);
        assert_eq!(json["today"]["female"][3], 2.5);
        assert_eq!(
            (json["since_start"]["people"].as_u64(), json["since_start"]["frames"].as_u64()),
            (Some(15), Some(160))
        );
        assert_eq!(json["sources"][1]["name"], "till");
        assert_eq!(json["sources"][1]["today"]["people"], 1);
    }

    #[test]
    fn the_page_gets_the_people_in_view_with_corner_boxes_and_certainty() {
        let report = FrameReport {
            tracks: vec![view(1, 0.9, true, true), view(2, 0.3, false, true), view(3, 0.5, true, false)],
            ..Default::default()
        };
        let tracks = tracks_in_view(&report);
        assert_eq!(tracks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1, 2], "track 3 is not in view");
        let json = serde_json::to_value(&tracks[0]).unwrap();
        assert_eq!((json["x"].as_f64(), json["y"].as_f64()), (Some(30.0), Some(18.0)), "top-left corner");
        assert!((json["confidence"].as_f64().unwrap() - 0.8).abs() < 1e-6);
        assert_eq!(json["gender"], "F");
        assert_eq!(json["label"], draw::reading_label(Gender::Female, 33.4));

        let image = RgbImage::from_pixel(80, 60, image::Rgb([10, 10, 10]));
        let drawn = overlay(&image, &tracks);
        let changed = image.pixels().zip(drawn.pixels()).filter(|(a, b)| a != b).count();
        assert!(changed > 40, "both boxes are drawn ({changed} pixels changed)");
    }
}
