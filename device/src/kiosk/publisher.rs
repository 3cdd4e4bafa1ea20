//! What `faceage run --kiosk` publishes for every frame: the readings of the people in view
//! and the day's counts as JSON, and, while someone watches, the picture with the readings
//! drawn on it. The page (`page.html`) reads these; their shape is tested here.

use std::time::Duration;

use image::RgbImage;
use serde::Serialize;

use super::KioskServer;
use crate::age_gender::{Gender, gender_certainty};
use crate::counts::WholeTally;
use crate::draw;
pub use crate::figures::FpsMeter;
use crate::figures::{InView, recent};
use crate::geometry::BBox;
use crate::live::{DayCounts, FrameReport, Live};
use crate::run_loop::Observer;
use crate::source::Frame;

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
    /// A face was found on the person in the latest frame the detector looked at; false
    /// while the tracker carries them along between detections (drawn thin, not boxed).
    pub detected: bool,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// The tracks of this frame that are in view at `now` ([`InView`], updated with this
/// frame), with their fused readings and when each face was last found.
pub fn tracks_in_view(report: &FrameReport, in_view: &InView, now: Duration) -> Vec<(TrackJson, Duration)> {
    report
        .tracks
        .iter()
        .filter_map(|t| {
            let found = in_view.last_found(t.id).filter(|&found| recent(found, now))?;
            let r = &t.reading;
            let json = TrackJson {
                id: t.id,
                label: draw::reading_label(r.gender, r.age),
                gender: r.gender,
                age: r.age,
                age_spread: r.age_spread,
                confidence: gender_certainty(r.female),
                confirmed: t.confirmed,
                detected: t.seen_now,
                x: t.bbox.x0(),
                y: t.bbox.y0(),
                w: t.bbox.w,
                h: t.bbox.h,
            };
            Some((json, found))
        })
        .collect()
}

/// The picture a viewer sees: counted people boxed with their reading, a person carried
/// between detections outlined thin in their colour, others in grey.
pub fn overlay<'a>(image: &RgbImage, tracks: impl IntoIterator<Item = &'a TrackJson>) -> RgbImage {
    let mut picture = image.clone();
    for t in tracks {
        let bbox = BBox { cx: t.x + t.w / 2.0, cy: t.y + t.h / 2.0, w: t.w, h: t.h };
        match (t.confirmed, t.detected) {
            (true, true) => draw::overlay_face(&mut picture, &bbox, t.gender, t.age, t.confidence),
            (true, false) => {
                let colour = if t.gender == Gender::Female { draw::FEMALE } else { draw::MALE };
                draw::rect_outline(&mut picture, &bbox, colour, 1);
            }
            (false, _) => draw::rect_outline(&mut picture, &bbox, draw::GREY, 1),
        }
    }
    picture
}

/// One source's latest frame as `/api/tracks` serves it. Rendered when asked, so that when
/// frames stop coming (a stalled camera, the end of a file) people drop out of the list a
/// second after their face was last found and the frame rate falls.
#[derive(Clone, Debug, Default)]
pub struct TracksView {
    pub source: String,
    pub frame: u64,
    pub dropped: u64,
    pub fps: FpsMeter,
    /// The latest frame's tracks in view, each with when its face was last found (on the
    /// kiosk's clock, [`super::KioskState::now`]).
    pub tracks: Vec<(TrackJson, Duration)>,
}

impl TracksView {
    /// The `/api/tracks` JSON at `now`.
    pub fn json(&self, now: Duration) -> serde_json::Value {
        let tracks: Vec<&TrackJson> =
            self.tracks.iter().filter(|(_, found)| recent(*found, now)).map(|(t, _)| t).collect();
        serde_json::json!({
            "source": self.source,
            "frame": self.frame,
            "fps": (self.fps.rate(now) * 10.0).round() / 10.0,
            "dropped": self.dropped,
            "tracks": tracks,
        })
    }
}

/// What the page shows of one source's counts.
#[derive(Clone, Debug, Default, Serialize)]
struct SourceCounts {
    name: String,
    today: DayCounts,
    people_since_start: u64,
    frames_since_start: u64,
}

/// A day's counts as a person reads them ([`WholeTally`]).
fn whole_day(day: &DayCounts) -> WholeTally {
    day.tally.whole(u64::from(day.people))
}

/// The counts JSON: the day of every source together, and each source's own; each day's
/// expected counts and variances, and `whole`, the whole people with their ± that the page
/// shows.
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
        "whole": whole_day(&today),
        "since_start": {
            "people": sources.iter().map(|s| s.people_since_start).sum::<u64>(),
            "frames": sources.iter().map(|s| s.frames_since_start).sum::<u64>(),
        },
        "sources": sources.iter().map(|s| serde_json::json!({
            "name": s.name,
            "today": s.today,
            "whole": whole_day(&s.today),
            "since_start": { "people": s.people_since_start, "frames": s.frames_since_start },
        })).collect::<Vec<_>>(),
    })
}

/// Publishes every frame of every source to a running kiosk server.
pub struct KioskPublisher {
    pub server: KioskServer,
    fps: Vec<FpsMeter>,
    in_view: Vec<InView>,
    counts: Vec<SourceCounts>,
}

impl KioskPublisher {
    pub fn new(server: KioskServer) -> Self {
        let names = server.state.names();
        let counts =
            names.iter().map(|name| SourceCounts { name: name.clone(), ..Default::default() }).collect();
        let n = names.len();
        Self { server, fps: vec![FpsMeter::default(); n], in_view: vec![InView::default(); n], counts }
    }

    /// A frame of `live`'s source (found by name; a source the server was not started with
    /// is not shown). Times are the kiosk's own clock, which its requests read too.
    pub fn publish(&mut self, frame: &Frame, report: &FrameReport, live: &Live) {
        let Some(index) = self.counts.iter().position(|c| c.name == live.source) else { return };
        let state = &self.server.state;
        let now = state.now();
        self.fps[index].tick(now);
        self.in_view[index].update(report, now);
        let tracks = tracks_in_view(report, &self.in_view[index], now);
        self.counts[index].today = live.today.clone();
        self.counts[index].people_since_start = live.people_total;
        self.counts[index].frames_since_start = live.frames_total;
        let picture_tracks: Vec<TrackJson> = tracks.iter().map(|(t, _)| t.clone()).collect();
        state.publish_tracks(
            index,
            TracksView {
                source: live.source.clone(),
                frame: frame.index,
                dropped: live.dropped_total(),
                fps: self.fps[index].clone(),
                tracks,
            },
        );
        state.publish_counts(counts_json(&self.counts).to_string());
        if state.has_viewers(index) {
            // The same encoder `faceage bench` times (SIMD, several times the image crate's speed).
            match crate::imaging::encode_jpeg(&overlay(&frame.image, &picture_tracks), 80) {
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
        _elapsed: Duration,
    ) -> anyhow::Result<()> {
        self.publish(frame, report, live);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::age_gender::Estimate;
    use crate::track::{FusedReading, TrackView};

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
            today.tally.female[4] = people as f64 - female;
            today.tally.female_var = Some([0.0, 0.0, 0.0, 0.25, 0.25, 0.0]);
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
        assert_eq!(json["today"]["female_var"][3], 0.5, "variances add up over sources");
        // Whole people for the page: 2.5 and 0.5 of 3 are 3 and 0 (largest remainder), each
        // ±2 sigma of its count.
        assert_eq!(json["whole"]["female"][3], serde_json::json!({"people": 3, "plus_minus": 1}));
        assert_eq!(json["whole"]["female"][4], serde_json::json!({"people": 0, "plus_minus": 1}));
        assert_eq!(json["whole"]["female_people"], 3);
        assert_eq!(json["sources"][0]["whole"]["female"][3]["people"], 2);
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
        let mut in_view = InView::default();
        let now = Duration::from_secs(5);
        in_view.update(&report, now);
        let found = tracks_in_view(&report, &in_view, now);
        assert_eq!(found.iter().map(|(t, _)| t.id).collect::<Vec<_>>(), vec![1, 2], "track 3 never found");
        let tracks: Vec<TrackJson> = found.iter().map(|(t, _)| t.clone()).collect();
        let json = serde_json::to_value(&tracks[0]).unwrap();
        assert_eq!(json["detected"], true);
        assert_eq!((json["x"].as_f64(), json["y"].as_f64()), (Some(30.0), Some(18.0)), "top-left corner");
        assert!((json["confidence"].as_f64().unwrap() - 0.8).abs() < 1e-6);
        assert_eq!(json["gender"], "F");
        assert_eq!(json["label"], draw::reading_label(Gender::Female, 33.4));

        let image = RgbImage::from_pixel(80, 60, image::Rgb([10, 10, 10]));
        let drawn = overlay(&image, &tracks);
        let changed = image.pixels().zip(drawn.pixels()).filter(|(a, b)| a != b).count();
        assert!(changed > 40, "both boxes are drawn ({changed} pixels changed)");
        let boxed = overlay(&image, &tracks[..1]);
        let thin = overlay(&image, &[TrackJson { detected: false, ..tracks[0].clone() }]);
        let changed = |p: &RgbImage| image.pixels().zip(p.pixels()).filter(|(a, b)| a != b).count();
        assert!(
            changed(&thin) > 0 && changed(&thin) < changed(&boxed) / 2,
            "a person carried between detections is outlined, not boxed ({} vs {} pixels)",
            changed(&thin),
            changed(&boxed)
        );
    }

    #[test]
    fn the_list_drops_a_person_a_second_after_their_face_was_last_found() {
        let mut in_view = InView::default();
        let at = |ms: u64| Duration::from_millis(ms);
        let seen = FrameReport { tracks: vec![view(1, 0.9, true, true)], ..Default::default() };
        in_view.update(&seen, at(0));
        let mut fps = FpsMeter::default();
        fps.tick(at(0));
        // The detector misses the face from here on; the tracker keeps the track.
        let missed = FrameReport { tracks: vec![view(1, 0.9, true, false)], ..Default::default() };
        for ms in [500, 1000] {
            in_view.update(&missed, at(ms));
            fps.tick(at(ms));
            let view = TracksView {
                source: "door".into(),
                frame: 3,
                dropped: 0,
                fps: fps.clone(),
                tracks: tracks_in_view(&missed, &in_view, at(ms)),
            };
            let json = view.json(at(ms));
            assert_eq!(json["tracks"][0]["detected"], false, "carried, marked so");
            assert_eq!(json["tracks"].as_array().unwrap().len(), 1, "in view {ms} ms after");
            // Asked later with no frame since (a stalled source): gone after a second.
            assert_eq!(view.json(at(1001))["tracks"].as_array().unwrap().len(), 0, "{}", view.json(at(1001)));
        }
        in_view.update(&missed, at(1100));
        assert!(tracks_in_view(&missed, &in_view, at(1100)).is_empty(), "not listed 1.1 s after");
    }
}
