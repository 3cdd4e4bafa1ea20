//! Live figures a person reads off the kiosk, `/metrics` and Home Assistant: the frame rate
//! and who is in view, both over wall-clock time.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::live::FrameReport;

/// Frames per second over wall-clock time: the frames of the last [`FpsMeter::WINDOW`] over
/// the window. Right for sources that hand frames over in bursts (ffmpeg writes several
/// decoded frames at once): an average of each gap's rate (1/gap) read bursts of frames
/// microseconds apart as thousands of frames a second.
#[derive(Clone, Debug, Default)]
pub struct FpsMeter {
    /// Times of the frames of the last window, oldest first.
    times: VecDeque<Duration>,
    /// The first frame's time: before a whole window has passed, the rate is over the time
    /// since it.
    first: Option<Duration>,
}

impl FpsMeter {
    /// Long enough that a burst of a few frames moves the rate little (a 5-frame burst at
    /// most 5 / 3 fps), short enough to follow a change within seconds.
    pub const WINDOW: Duration = Duration::from_secs(3);
    /// Before this much time has passed since the first frame the rate is not known (0): a
    /// rate from one burst says nothing. Short, so that a page opened at the start shows a
    /// rate as soon as it shows people.
    pub const WARM_UP: Duration = Duration::from_millis(250);

    /// A frame at `now` (any clock that does not go back: time since the run started, say);
    /// returns the rate at `now`.
    pub fn tick(&mut self, now: Duration) -> f64 {
        let now = now.max(self.times.back().copied().unwrap_or_default());
        self.first.get_or_insert(now);
        self.times.push_back(now);
        while self.times.front().is_some_and(|&t| t + Self::WINDOW <= now) {
            self.times.pop_front();
        }
        self.rate(now)
    }

    /// Frames per second at `now` (the time of the last frame or later: a source that stops
    /// reads 0 a window later).
    pub fn rate(&self, now: Duration) -> f64 {
        let Some(first) = self.first else { return 0.0 };
        let since_first = now.saturating_sub(first);
        if since_first < Self::WARM_UP {
            return 0.0;
        }
        let recent = self.times.iter().filter(|&&t| t + Self::WINDOW > now).count();
        if since_first >= Self::WINDOW {
            recent as f64 / Self::WINDOW.as_secs_f64()
        } else {
            // Every frame so far is in the window: the ones after the first, over the time
            // since the first.
            recent.saturating_sub(1) as f64 / since_first.as_secs_f64()
        }
    }
}

/// Who is in view: the tracks on which a face was found within the last
/// [`InView::RECENT`]. The tracker keeps a track for a while after its face was last found
/// (carried along its motion, in case the detector missed it); such a track may be drawn,
/// marked as not found, but once the time is up it is no longer in view.
#[derive(Clone, Debug, Default)]
pub struct InView {
    /// Track id -> when its face was last found.
    last_found: HashMap<u64, Duration>,
}

impl InView {
    pub const RECENT: Duration = Duration::from_secs(1);

    /// A frame's tracks at `now`: those that matched a face in the latest detector frame were
    /// found now. Tracks that are gone are forgotten.
    pub fn update(&mut self, report: &FrameReport, now: Duration) {
        self.last_found.retain(|id, _| report.tracks.iter().any(|t| t.id == *id));
        for t in report.tracks.iter().filter(|t| t.seen_now) {
            self.last_found.insert(t.id, now);
        }
    }

    /// When the face of track `id` was last found.
    pub fn last_found(&self, id: u64) -> Option<Duration> {
        self.last_found.get(&id).copied()
    }

    /// Whether a face was found on track `id` within [`Self::RECENT`] of `now`.
    pub fn is_in_view(&self, id: u64, now: Duration) -> bool {
        self.last_found(id).is_some_and(|t| recent(t, now))
    }
}

/// Whether a face found at `found` is still in view at `now`.
pub fn recent(found: Duration, now: Duration) -> bool {
    now.saturating_sub(found) <= InView::RECENT
}

/// [`recent`] on the wall clock.
pub fn recent_instant(found: std::time::Instant, now: std::time::Instant) -> bool {
    now.saturating_duration_since(found) <= InView::RECENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::age_gender::{Estimate, Gender};
    use crate::geometry::BBox;
    use crate::track::{FusedReading, TrackView};

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Frame times of a source at `fps` handing frames over in bursts of `burst`, each burst's
    /// frames 1 ms apart, for `seconds`.
    fn bursty(fps: u64, burst: u64, seconds: u64) -> Vec<Duration> {
        let period = 1000 * burst / fps;
        (0..fps * seconds / burst).flat_map(|b| (0..burst).map(move |k| ms(b * period + k))).collect()
    }

    #[test]
    fn bursts_of_frames_read_as_the_frames_per_second_they_make() {
        // 15 frames a second in 3 bursts of 5.
        let mut meter = FpsMeter::default();
        let mut readings = Vec::new();
        for t in bursty(15, 5, 10) {
            readings.push((t, meter.tick(t)));
        }
        for (t, fps) in readings.iter().filter(|(t, _)| *t >= FpsMeter::WINDOW) {
            assert!((fps - 15.0).abs() <= 2.25, "{fps} fps at {t:?}");
        }
        // Asked between frames (a kiosk request), too.
        let last = readings.last().unwrap().0;
        for after in [100, 200, 300] {
            let fps = meter.rate(last + ms(after));
            assert!((fps - 15.0).abs() <= 2.25, "{fps} fps {after} ms after the last frame");
        }
        // What ffmpeg did to the old meter: bursts of 2 frames 100 us apart at 15 fps.
        let mut meter = FpsMeter::default();
        let mut fps = 0.0;
        for b in 0..75u64 {
            for k in 0..2u64 {
                fps = meter.tick(Duration::from_micros(b * 133_333 + k * 100));
            }
        }
        assert!((fps - 15.0).abs() < 1.0, "{fps}");
        // One frame every 2 s.
        let mut meter = FpsMeter::default();
        for s in 0..10 {
            fps = meter.tick(Duration::from_secs(2 * s));
        }
        assert!((fps - 0.5).abs() < 0.2, "{fps}");
    }

    #[test]
    fn a_steady_rate_reads_right_from_the_first_second_and_falls_when_frames_stop() {
        let mut meter = FpsMeter::default();
        assert_eq!(meter.rate(ms(500)), 0.0, "no frames, no rate");
        assert_eq!(meter.tick(ms(0)), 0.0);
        let mut last = 0.0;
        for i in 1..=60u64 {
            last = meter.tick(ms(i * 100));
            if i < 3 {
                assert_eq!(last, 0.0, "not known in the first quarter second");
            } else {
                assert!((last - 10.0).abs() < 0.5, "{last} fps at frame {i}");
            }
        }
        assert!((last - 10.0).abs() < 0.4);
        // The source stalls: the rate falls, to nothing a window on.
        assert!(meter.rate(ms(6000 + 1500)) < 6.0);
        assert_eq!(meter.rate(ms(6000) + FpsMeter::WINDOW), 0.0);
        // A clock that steps back counts the frame at the last time.
        let mut meter = FpsMeter::default();
        meter.tick(ms(2000));
        assert_eq!(meter.tick(ms(1000)), 0.0);
    }

    fn view(id: u64, seen_now: bool) -> TrackView {
        TrackView {
            id,
            bbox: BBox { cx: 40.0, cy: 30.0, w: 20.0, h: 24.0 },
            reading: FusedReading {
                age: 33.4,
                age_spread: 4.0,
                female: 0.9,
                gender: Gender::Female,
                bands: [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
                frames: 5,
            },
            frame_estimate: Estimate { age: 33.0, female: 0.9, age_std: None, age_bands: None },
            confirmed: true,
            seen_now,
            dwell_secs: 1.0,
        }
    }

    #[test]
    fn a_person_is_in_view_for_a_second_after_their_face_was_last_found() {
        let mut in_view = InView::default();
        let frame = |tracks| FrameReport { tracks, ..Default::default() };
        in_view.update(&frame(vec![view(1, true), view(2, true)]), ms(0));
        // Track 1's face is missed from here on; the tracker keeps it a while.
        for t in (100..=1500).step_by(100) {
            in_view.update(&frame(vec![view(1, false), view(2, true)]), ms(t));
            assert_eq!(in_view.is_in_view(1, ms(t)), t <= 1000, "track 1 at {t} ms");
            assert!(in_view.is_in_view(2, ms(t)));
        }
        assert_eq!(in_view.last_found(1), Some(ms(0)));
        // Frames stop: nobody is in view a second after the last.
        assert!(!in_view.is_in_view(2, ms(2600)));
        // A track the tracker ended is forgotten.
        in_view.update(&frame(vec![view(2, true)]), ms(1600));
        assert_eq!(in_view.last_found(1), None);
        assert!(!in_view.is_in_view(7, ms(0)), "an unknown track is not in view");
    }
}
