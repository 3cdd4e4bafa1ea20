//! People across frames: tracks made by IoU association with a constant-velocity prior, and
//! readings fused over each track so they do not flicker.

use serde::{Deserialize, Serialize};

use crate::age_gender::{BandShares, Estimate, Gender};
use crate::geometry::BBox;
use crate::pipeline::FaceReading;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackerConfig {
    /// A detection continues a track when it overlaps the track's predicted box this much.
    pub min_iou: f32,
    /// Frames with the face seen before the track counts as a person.
    pub confirm_after: u32,
    /// Consecutive frames without the face after which the track ends.
    pub end_after_missed: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self { min_iou: 0.2, confirm_after: 3, end_after_missed: 5 }
    }
}

/// A track's reading, fused over its frames.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusedReading {
    /// Weighted mean age, years.
    pub age: f32,
    /// Spread of the fused age (one standard deviation, years): the model's own spread and the
    /// disagreement between frames together.
    pub age_spread: f32,
    /// Probability of female from the weighted mean of per-frame logits.
    pub female: f32,
    pub gender: Gender,
    /// Share of each age band (counts::AGE_BANDS): the per-frame shares' weighted mean, which
    /// is what the person adds to the counts.
    pub bands: BandShares,
    /// Frames fused.
    pub frames: u32,
}

/// Running weighted sums of per-frame estimates.
#[derive(Clone, Debug, Default)]
struct Fusion {
    weight: f64,
    age: f64,
    /// Sum of w * (age^2 + std^2): the second moment of the mixture of per-frame estimates.
    age_second: f64,
    logit: f64,
    bands: [f64; 6],
    frames: u32,
}

impl Fusion {
    /// Weight of one frame's estimate: the detector's confidence times how large the face is
    /// (small faces carry less detail), saturating at 112 px.
    fn weight(score: f32, face_px: f32) -> f64 {
        (score.clamp(0.0, 1.0) * (face_px / 112.0).clamp(0.1, 1.0)) as f64
    }

    fn add(&mut self, e: &Estimate, weight: f64) {
        let age = e.age as f64;
        let std = e.age_std.unwrap_or(0.0) as f64;
        let p = (e.female as f64).clamp(1e-4, 1.0 - 1e-4);
        self.weight += weight;
        self.age += weight * age;
        self.age_second += weight * (age * age + std * std);
        self.logit += weight * (p / (1.0 - p)).ln();
        for (sum, share) in self.bands.iter_mut().zip(e.band_shares()) {
            *sum += weight * share as f64;
        }
        self.frames += 1;
    }

    fn reading(&self) -> FusedReading {
        let w = self.weight.max(1e-12);
        let age = self.age / w;
        let spread = (self.age_second / w - age * age).max(0.0).sqrt();
        let female = 1.0 / (1.0 + (-self.logit / w).exp());
        FusedReading {
            age: age as f32,
            age_spread: spread as f32,
            female: female as f32,
            gender: if female >= 0.5 { Gender::Female } else { Gender::Male },
            bands: self.bands.map(|b| (b / w) as f32),
            frames: self.frames,
        }
    }
}

#[derive(Clone, Debug)]
struct Track {
    id: u64,
    bbox: BBox,
    /// Centre motion per frame, smoothed.
    velocity: (f32, f32),
    hits: u32,
    missed: u32,
    confirmed: bool,
    fusion: Fusion,
    /// The latest per-frame estimate, for comparison with the fused one.
    last: Estimate,
}

impl Track {
    fn predicted(&self) -> BBox {
        BBox { cx: self.bbox.cx + self.velocity.0, cy: self.bbox.cy + self.velocity.1, ..self.bbox }
    }

    fn view(&self) -> TrackView {
        TrackView {
            id: self.id,
            bbox: self.bbox,
            reading: self.fusion.reading(),
            frame_estimate: self.last,
            confirmed: self.confirmed,
            seen_now: self.missed == 0,
        }
    }
}

/// What a track looks like from outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackView {
    pub id: u64,
    pub bbox: BBox,
    pub reading: FusedReading,
    /// This frame's (or the last seen frame's) own estimate, unfused.
    pub frame_estimate: Estimate,
    pub confirmed: bool,
    /// Matched a face in the latest frame.
    pub seen_now: bool,
}

/// Changes from one frame.
#[derive(Clone, Debug, Default)]
pub struct TrackUpdate {
    /// Tracks confirmed in this frame: each is a new person, counted once.
    pub confirmed: Vec<TrackView>,
    /// Tracks that ended in this frame.
    pub ended: Vec<TrackView>,
}

pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Self { config, tracks: Vec::new(), next_id: 1 }
    }

    /// Associates one frame's faces with the tracks, greedily by IoU against each track's
    /// predicted box; unmatched faces start tracks, unmatched tracks age and end.
    pub fn update(&mut self, faces: &[FaceReading]) -> TrackUpdate {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            let predicted = track.predicted();
            for (f, face) in faces.iter().enumerate() {
                let iou = predicted.iou(&face.face.bbox);
                if iou >= self.config.min_iou {
                    pairs.push((iou, t, f));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_taken = vec![false; self.tracks.len()];
        let mut face_taken = vec![false; faces.len()];
        let mut update = TrackUpdate::default();
        for (_, t, f) in pairs {
            if track_taken[t] || face_taken[f] {
                continue;
            }
            track_taken[t] = true;
            face_taken[f] = true;
            let track = &mut self.tracks[t];
            let face = &faces[f];
            let b = face.face.bbox;
            let motion = (b.cx - track.bbox.cx, b.cy - track.bbox.cy);
            track.velocity =
                (0.5 * track.velocity.0 + 0.5 * motion.0, 0.5 * track.velocity.1 + 0.5 * motion.1);
            track.bbox = b;
            track.hits += 1;
            track.missed = 0;
            track.last = face.estimate;
            track.fusion.add(&face.estimate, Fusion::weight(face.face.score, b.w.max(b.h)));
            if !track.confirmed && track.hits >= self.config.confirm_after {
                track.confirmed = true;
                update.confirmed.push(track.view());
            }
        }
        for (t, track) in self.tracks.iter_mut().enumerate() {
            if !track_taken[t] {
                track.missed += 1;
                // Coast along the motion while unseen.
                track.bbox.cx += track.velocity.0;
                track.bbox.cy += track.velocity.1;
            }
        }
        let end_after = self.config.end_after_missed;
        let (ended, kept): (Vec<Track>, Vec<Track>) =
            std::mem::take(&mut self.tracks).into_iter().partition(|t| t.missed > end_after);
        self.tracks = kept;
        update.ended = ended.iter().map(Track::view).collect();
        for (f, face) in faces.iter().enumerate() {
            if face_taken[f] {
                continue;
            }
            let mut fusion = Fusion::default();
            let b = face.face.bbox;
            fusion.add(&face.estimate, Fusion::weight(face.face.score, b.w.max(b.h)));
            let confirmed = self.config.confirm_after <= 1;
            let track = Track {
                id: self.next_id,
                bbox: b,
                velocity: (0.0, 0.0),
                hits: 1,
                missed: 0,
                confirmed,
                fusion,
                last: face.estimate,
            };
            self.next_id += 1;
            if confirmed {
                update.confirmed.push(track.view());
            }
            self.tracks.push(track);
        }
        update
    }

    /// Current tracks (confirmed or not), oldest first.
    pub fn tracks(&self) -> Vec<TrackView> {
        self.tracks.iter().map(Track::view).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;
    use crate::geometry::Point;

    fn reading(cx: f32, age: f32, female: f32) -> FaceReading {
        FaceReading {
            face: Face {
                bbox: BBox { cx, cy: 100.0, w: 80.0, h: 80.0 },
                landmarks: [Point::default(); 6],
                score: 0.9,
            },
            estimate: Estimate { age, female, age_std: Some(3.0), age_bands: None },
        }
    }

    #[test]
    fn a_moving_face_is_one_track_and_one_person() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut confirmed = 0;
        for frame in 0..20 {
            let u = tracker.update(&[reading(100.0 + frame as f32 * 15.0, 30.0, 0.8)]);
            confirmed += u.confirmed.len();
        }
        assert_eq!(confirmed, 1);
        let tracks = tracker.tracks();
        assert_eq!(tracks.len(), 1);
        assert_eq!(tracks[0].id, 1);
        assert!(tracks[0].bbox.cx > 350.0, "the track followed the face");
    }

    #[test]
    fn tracks_end_after_missed_frames_and_brief_flickers_are_not_people() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let u = tracker.update(&[reading(100.0, 30.0, 0.2), reading(400.0, 50.0, 0.9)]);
        assert!(u.confirmed.is_empty());
        // The second face vanishes after one frame: never confirmed.
        for _ in 0..3 {
            tracker.update(&[reading(100.0, 30.0, 0.2)]);
        }
        let mut ended = Vec::new();
        let mut people = 0;
        for _ in 0..10 {
            let u = tracker.update(&[]);
            ended.extend(u.ended);
            people += u.confirmed.len();
        }
        assert_eq!(people, 0);
        assert_eq!(ended.len(), 2);
        assert!(ended.iter().any(|t| t.confirmed) && ended.iter().any(|t| !t.confirmed));
        assert!(tracker.tracks().is_empty());
    }

    #[test]
    fn fusion_steadies_age_and_gender() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let noisy = [24.0, 36.0, 27.0, 33.0, 25.0, 35.0, 30.0, 29.0];
        let mut fused = Vec::new();
        for (i, &age) in noisy.iter().enumerate() {
            let female = if i % 3 == 0 { 0.4 } else { 0.8 };
            tracker.update(&[reading(200.0, age, female)]);
            fused.push(tracker.tracks()[0].reading);
        }
        let last = fused.last().unwrap();
        assert!((last.age - 29.875).abs() < 0.01, "{}", last.age);
        assert_eq!(last.gender, Gender::Female, "one doubtful frame in three does not flip it");
        assert!(last.age_spread > 3.0 && last.age_spread < 6.0, "{}", last.age_spread);
        let spread = |v: &[f32]| {
            let m = v.iter().sum::<f32>() / v.len() as f32;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
        };
        let fused_ages: Vec<f32> = fused[3..].iter().map(|r| r.age).collect();
        assert!(spread(&fused_ages) < spread(&noisy[3..]) / 3.0);
        // Readings of 24-36 with no distribution: all of each frame in 20-39.
        assert_eq!(last.bands, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn band_shares_are_fused_as_a_weighted_mean() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for bands in [[0.0, 0.0, 0.0, 0.6, 0.4, 0.0], [0.0, 0.0, 0.0, 0.2, 0.8, 0.0]] {
            let mut r = reading(200.0, 40.0, 0.3);
            r.estimate.age_bands = Some(bands);
            tracker.update(&[r]);
        }
        let fused = tracker.tracks()[0].reading.bands;
        assert!((fused[3] - 0.4).abs() < 1e-5 && (fused[4] - 0.6).abs() < 1e-5, "{fused:?}");
    }
}
