//! People across frames: tracks made by IoU association with a constant-velocity prior,
//! readings fused over each track so they do not flicker, and a [`ReadPolicy`] that reads a
//! person's face until their reading has settled rather than in every frame.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::age_gender::{BandShares, Estimate, Gender, gender_certainty};
use crate::detect::Face;
use crate::geometry::BBox;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackerConfig {
    /// A detection continues a track when it overlaps the track's predicted box this much.
    pub min_iou: f32,
    /// Frames with the face seen before the track counts as a person.
    pub confirm_after: u32,
    /// Consecutive frames without the face after which the track ends.
    pub end_after_missed: u32,
    /// When a tracked face is read by the model.
    #[serde(default)]
    pub read: ReadPolicy,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self { min_iou: 0.2, confirm_after: 3, end_after_missed: 5, read: ReadPolicy::default() }
    }
}

/// When the model reads a tracked face. A person is counted with the reading fused over the
/// frames up to their confirmation, so until then every frame is read; after that a face
/// whose fused reading has settled is read only now and then (to catch a wrong early lock)
/// and when it has grown (a person walking closer gives a better picture). The classifier
/// is most of a frame's cost, and a person in view for ten seconds needs no 150 readings.
/// Thresholds measured in the model card, "Reading each person".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadPolicy {
    /// Reads before a confirmed track may settle.
    pub min_reads: u32,
    /// Settled when the fused age's standard error (the frames' disagreement over the square
    /// root of the frames read) is at most this many years...
    pub settle_age_error: f32,
    /// ...and the fused gender is at least this sure ([`crate::age_gender::gender_certainty`]).
    pub settle_gender_certainty: f32,
    /// Settled anyway after this many reads: some faces stay ambiguous.
    pub max_reads: u32,
    /// A settled track is read again once in this many frames the detector sees it (0: never).
    pub recheck_every: u32,
    /// A settled track is read again as soon as its face is this much larger (box side) than
    /// at its last reading.
    pub regrow: f32,
}

impl Default for ReadPolicy {
    fn default() -> Self {
        Self {
            min_reads: 5,
            settle_age_error: 1.0,
            settle_gender_certainty: 0.6,
            max_reads: 15,
            recheck_every: 15,
            regrow: 1.3,
        }
    }
}

impl ReadPolicy {
    /// Every face read in every frame (`--read-every-frame`): the reference the per-person
    /// policy is measured against.
    pub fn every_frame() -> Self {
        Self { min_reads: u32::MAX, max_reads: u32::MAX, ..Self::default() }
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
    /// Share of each age band (bands::AGE_BANDS): the per-frame shares' weighted mean, which
    /// is what the person adds to the counts.
    pub bands: BandShares,
    /// Frames fused (the frames in which the face was read).
    pub frames: u32,
}

/// Running weighted sums of per-frame estimates.
#[derive(Clone, Debug, Default)]
struct Fusion {
    weight: f64,
    /// Sum of squared weights: the effective number of frames is weight^2 / weight_sq.
    weight_sq: f64,
    age: f64,
    /// Sum of w * age^2: the frames' disagreement.
    age_sq: f64,
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
        self.weight_sq += weight * weight;
        self.age += weight * age;
        self.age_sq += weight * age * age;
        self.age_second += weight * (age * age + std * std);
        self.logit += weight * (p / (1.0 - p)).ln();
        for (sum, share) in self.bands.iter_mut().zip(e.band_shares()) {
            *sum += weight * share as f64;
        }
        self.frames += 1;
    }

    /// Standard error of the fused age, years: how far more frames could still move it.
    fn age_error(&self) -> f64 {
        let w = self.weight.max(1e-12);
        let mean = self.age / w;
        let disagreement = (self.age_sq / w - mean * mean).max(0.0);
        let effective_frames = (w * w / self.weight_sq.max(1e-12)).max(1.0);
        (disagreement / effective_frames).sqrt()
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
            gender: Gender::of(female >= 0.5),
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
    /// Frames seen since the face was last read.
    unread: u32,
    /// Box side at the last reading.
    side_at_read: f32,
    /// Stream times of the first and the latest frame the face was seen in.
    first_seen: Duration,
    last_seen: Duration,
}

impl Track {
    fn new(id: u64, face: &Face, estimate: Estimate, confirmed: bool, now: Duration) -> Self {
        let mut track = Track {
            id,
            bbox: face.bbox,
            velocity: (0.0, 0.0),
            hits: 1,
            missed: 0,
            confirmed,
            fusion: Fusion::default(),
            last: estimate,
            unread: 0,
            side_at_read: 0.0,
            first_seen: now,
            last_seen: now,
        };
        track.read(face, estimate);
        track
    }

    fn predicted(&self) -> BBox {
        BBox { cx: self.bbox.cx + self.velocity.0, cy: self.bbox.cy + self.velocity.1, ..self.bbox }
    }

    fn read(&mut self, face: &Face, estimate: Estimate) {
        let side = face.bbox.w.max(face.bbox.h);
        self.fusion.add(&estimate, Fusion::weight(face.score, side));
        self.last = estimate;
        self.unread = 0;
        self.side_at_read = side;
    }

    /// Has the fused reading settled under `policy`?
    fn settled(&self, policy: &ReadPolicy) -> bool {
        let reads = self.fusion.frames;
        if !self.confirmed || reads < policy.min_reads {
            return false;
        }
        let sure = self.fusion.age_error() <= policy.settle_age_error as f64
            && gender_certainty(self.fusion.reading().female) >= policy.settle_gender_certainty;
        sure || reads >= policy.max_reads
    }

    /// Should `face`, which continues this track, be read in this frame?
    fn wants_reading(&self, face: &Face, policy: &ReadPolicy) -> bool {
        if !self.settled(policy) {
            return true;
        }
        let due = policy.recheck_every > 0 && self.unread + 1 >= policy.recheck_every;
        let grown = face.bbox.w.max(face.bbox.h) >= self.side_at_read * policy.regrow;
        due || grown
    }

    fn view(&self) -> TrackView {
        TrackView {
            id: self.id,
            bbox: self.bbox,
            reading: self.fusion.reading(),
            frame_estimate: self.last,
            confirmed: self.confirmed,
            seen_now: self.missed == 0,
            dwell_secs: self.last_seen.saturating_sub(self.first_seen).as_secs_f32(),
        }
    }
}

/// What a track looks like from outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackView {
    pub id: u64,
    pub bbox: BBox,
    pub reading: FusedReading,
    /// The face's latest per-frame estimate, unfused.
    pub frame_estimate: Estimate,
    pub confirmed: bool,
    /// Matched a face in the latest frame.
    pub seen_now: bool,
    /// Time in view so far: from the first to the latest frame the face was seen, seconds.
    #[serde(default)]
    pub dwell_secs: f32,
}

/// Changes from one frame.
#[derive(Clone, Debug, Default)]
pub struct TrackUpdate {
    /// Tracks confirmed in this frame: each is a new person, counted once.
    pub confirmed: Vec<TrackView>,
    /// Tracks that ended in this frame.
    pub ended: Vec<TrackView>,
}

/// One frame's faces before the model reads them: the track each face continues (by index
/// in the tracker, `None` for a new person) and whether the face is to be read.
#[derive(Clone, Debug, PartialEq)]
pub struct FramePlan {
    continues: Vec<Option<usize>>,
    pub read: Vec<bool>,
}

impl FramePlan {
    /// Indices of the faces to read, in order.
    pub fn faces_to_read(&self) -> Vec<usize> {
        self.read.iter().enumerate().filter(|(_, r)| **r).map(|(i, _)| i).collect()
    }
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

    /// Which faces continue which tracks (greedily by IoU against each track's predicted
    /// box), and which of them the model should read under the [`ReadPolicy`]. A face that
    /// starts a track is always read.
    pub fn plan(&self, faces: &[Face]) -> FramePlan {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            let predicted = track.predicted();
            for (f, face) in faces.iter().enumerate() {
                let iou = predicted.iou(&face.bbox);
                if iou >= self.config.min_iou {
                    pairs.push((iou, t, f));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_taken = vec![false; self.tracks.len()];
        let mut continues = vec![None; faces.len()];
        for (_, t, f) in pairs {
            if track_taken[t] || continues[f].is_some() {
                continue;
            }
            track_taken[t] = true;
            continues[f] = Some(t);
        }
        let read = continues
            .iter()
            .zip(faces)
            .map(|(t, face)| t.is_none_or(|t| self.tracks[t].wants_reading(face, &self.config.read)))
            .collect();
        FramePlan { continues, read }
    }

    /// Moves the tracks to this frame's `faces` as `plan` (made by [`Tracker::plan`] for the
    /// same faces) associates them, fuses the `estimates` of the faces that were read, ages
    /// and ends the tracks that were not seen, and starts a track for each new face. `now` is
    /// the frame's stream time (for time in view).
    pub fn apply(
        &mut self,
        plan: &FramePlan,
        faces: &[Face],
        estimates: &[Option<Estimate>],
        now: Duration,
    ) -> TrackUpdate {
        let mut update = TrackUpdate::default();
        let mut seen = vec![false; self.tracks.len()];
        for (f, continues) in plan.continues.iter().enumerate() {
            let Some(t) = *continues else { continue };
            seen[t] = true;
            let track = &mut self.tracks[t];
            let b = faces[f].bbox;
            let motion = (b.cx - track.bbox.cx, b.cy - track.bbox.cy);
            track.velocity =
                (0.5 * track.velocity.0 + 0.5 * motion.0, 0.5 * track.velocity.1 + 0.5 * motion.1);
            track.bbox = b;
            track.hits += 1;
            track.missed = 0;
            track.last_seen = now;
            match estimates.get(f).copied().flatten() {
                Some(estimate) => track.read(&faces[f], estimate),
                None => track.unread += 1,
            }
            if !track.confirmed && track.hits >= self.config.confirm_after {
                track.confirmed = true;
                update.confirmed.push(track.view());
            }
        }
        for (t, track) in self.tracks.iter_mut().enumerate() {
            if !seen[t] {
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
        for (f, continues) in plan.continues.iter().enumerate() {
            // A new face is always planned for reading; one left unread starts nothing.
            let (None, Some(estimate)) = (continues, estimates.get(f).copied().flatten()) else { continue };
            let confirmed = self.config.confirm_after <= 1;
            let track = Track::new(self.next_id, &faces[f], estimate, confirmed, now);
            self.next_id += 1;
            if confirmed {
                update.confirmed.push(track.view());
            }
            self.tracks.push(track);
        }
        update
    }

    /// A frame in which the detector did not run: every track moves along its motion and
    /// stays as it was otherwise (not seen, not missed).
    pub fn coast(&mut self) {
        for track in &mut self.tracks {
            track.bbox.cx += track.velocity.0;
            track.bbox.cy += track.velocity.1;
        }
    }

    /// Current tracks (confirmed or not), oldest first.
    pub fn tracks(&self) -> Vec<TrackView> {
        self.tracks.iter().map(Track::view).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::FaceReading;

    impl Tracker {
        /// Every face read in this frame: [`Tracker::plan`] then [`Tracker::apply`] with all
        /// estimates.
        fn update(&mut self, readings: &[FaceReading], now: Duration) -> TrackUpdate {
            let faces: Vec<Face> = readings.iter().map(|r| r.face.clone()).collect();
            let estimates: Vec<Option<Estimate>> = readings.iter().map(|r| Some(r.estimate)).collect();
            let plan = self.plan(&faces);
            self.apply(&plan, &faces, &estimates, now)
        }
    }
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

    /// One frame of one face through plan and apply, the face read only when the plan says;
    /// returns whether it was read.
    fn step(tracker: &mut Tracker, r: &FaceReading) -> bool {
        let faces = [r.face.clone()];
        let plan = tracker.plan(&faces);
        let read = plan.read[0];
        tracker.apply(&plan, &faces, &[read.then_some(r.estimate)], Duration::ZERO);
        read
    }

    #[test]
    fn a_settled_person_is_read_now_and_then() {
        let policy = ReadPolicy::default();
        let mut tracker = Tracker::new(TrackerConfig::default());
        let reads: Vec<bool> =
            (0..60).map(|f| step(&mut tracker, &reading(100.0 + f as f32, 30.0, 0.9))).collect();
        let first_skip = reads.iter().position(|r| !r).unwrap();
        assert_eq!(first_skip, policy.min_reads as usize, "a steady face settles after the fewest reads");
        let later: Vec<usize> = (first_skip..60).filter(|&f| reads[f]).collect();
        assert!(!later.is_empty(), "a settled face is still read now and then");
        assert!(later.windows(2).all(|w| w[1] - w[0] == policy.recheck_every as usize), "{later:?}");
        assert_eq!(tracker.tracks()[0].reading.frames, reads.iter().filter(|r| **r).count() as u32);
    }

    #[test]
    fn a_face_the_frames_disagree_on_is_read_until_the_cap() {
        let policy = ReadPolicy { recheck_every: 0, ..ReadPolicy::default() };
        let config = TrackerConfig { read: policy, ..TrackerConfig::default() };
        let mut tracker = Tracker::new(config);
        let reads = (0..40)
            .filter(|&f| step(&mut tracker, &reading(100.0, if f % 2 == 0 { 20.0 } else { 50.0 }, 0.9)))
            .count();
        assert_eq!(reads, policy.max_reads as usize);
        // Sure of the age but not of the gender: the same.
        let mut tracker = Tracker::new(TrackerConfig { read: policy, ..TrackerConfig::default() });
        let reads = (0..40).filter(|_| step(&mut tracker, &reading(100.0, 30.0, 0.6))).count();
        assert_eq!(reads, policy.max_reads as usize);
    }

    #[test]
    fn a_face_that_grows_is_read_again_and_every_frame_reads_all() {
        let policy = ReadPolicy { recheck_every: 0, ..ReadPolicy::default() };
        let mut tracker = Tracker::new(TrackerConfig { read: policy, ..TrackerConfig::default() });
        let mut face = reading(200.0, 30.0, 0.9);
        let reads = (0..20).filter(|_| step(&mut tracker, &face)).count();
        assert_eq!(reads, policy.min_reads as usize);
        face.face.bbox.w *= 1.2;
        face.face.bbox.h *= 1.2;
        assert!(!step(&mut tracker, &face), "a little larger: not yet");
        face.face.bbox.w *= 1.2;
        face.face.bbox.h *= 1.2;
        assert!(step(&mut tracker, &face), "1.44 times the side at the last reading");
        assert!(!step(&mut tracker, &face));

        let mut tracker =
            Tracker::new(TrackerConfig { read: ReadPolicy::every_frame(), ..TrackerConfig::default() });
        assert_eq!((0..50).filter(|_| step(&mut tracker, &reading(200.0, 30.0, 0.9))).count(), 50);
    }

    #[test]
    fn coasting_carries_tracks_along_without_missing_them() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut confirmed = 0;
        // Detected on even frames only, moving 10 px a frame.
        for frame in 0..40 {
            if frame % 2 == 0 {
                confirmed += tracker
                    .update(
                        &[reading(100.0 + frame as f32 * 10.0, 30.0, 0.8)],
                        Duration::from_millis(frame * 100),
                    )
                    .confirmed
                    .len();
            } else {
                tracker.coast();
            }
        }
        assert_eq!(confirmed, 1);
        let tracks = tracker.tracks();
        assert_eq!(tracks.len(), 1, "one person, never lost");
        assert!(tracks[0].seen_now);
        assert!((tracks[0].bbox.cx - 490.0).abs() < 1.0, "coasted to the last frame: {}", tracks[0].bbox.cx);
        assert!(
            (tracks[0].dwell_secs - 3.8).abs() < 1e-4,
            "seen from 0 s to frame 38: {}",
            tracks[0].dwell_secs
        );
    }

    #[test]
    fn a_moving_face_is_one_track_and_one_person() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut confirmed = 0;
        for frame in 0..20 {
            let u = tracker.update(&[reading(100.0 + frame as f32 * 15.0, 30.0, 0.8)], Duration::ZERO);
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
        let u = tracker.update(&[reading(100.0, 30.0, 0.2), reading(400.0, 50.0, 0.9)], Duration::ZERO);
        assert!(u.confirmed.is_empty());
        // The second face vanishes after one frame: never confirmed.
        for _ in 0..3 {
            tracker.update(&[reading(100.0, 30.0, 0.2)], Duration::ZERO);
        }
        let mut ended = Vec::new();
        let mut people = 0;
        for _ in 0..10 {
            let u = tracker.update(&[], Duration::ZERO);
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
            tracker.update(&[reading(200.0, age, female)], Duration::ZERO);
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
            tracker.update(&[r], Duration::ZERO);
        }
        let fused = tracker.tracks()[0].reading.bands;
        assert!((fused[3] - 0.4).abs() < 1e-5 && (fused[4] - 0.6).abs() < 1e-5, "{fused:?}");
    }
}
