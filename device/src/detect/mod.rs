//! Face detection: a trait so a user can bring their own detector, and the shipped BlazeFace.

mod blazeface;
mod framing;

pub use blazeface::{BlazeFace, BlazeFaceVariant};
pub use framing::{FramedDetector, Framing};

use std::path::Path;

use anyhow::Result;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::geometry::{BBox, Point};

/// Landmarks in MediaPipe order, as seen from the subject: right eye, left eye, nose tip,
/// mouth centre, right ear, left ear.
pub const LANDMARK_NAMES: [&str; 6] = ["right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear"];

/// One detected face in frame pixel coordinates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Face {
    pub bbox: BBox,
    pub landmarks: [Point; 6],
    pub score: f32,
}

impl Face {
    pub fn right_eye(&self) -> Point {
        self.landmarks[0]
    }
    pub fn left_eye(&self) -> Point {
        self.landmarks[1]
    }
}

/// Finds faces in a frame. Implementations own their model and any scratch buffers.
pub trait FaceDetector: Send {
    /// Every face of `frame`, each with landmarks good enough to crop and read it.
    fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Face>>;

    /// The cheap part of [`FaceDetector::detect`]: faces placed well enough to follow them
    /// from frame to frame. A face that is to be read goes through [`FaceDetector::refine`]
    /// first; `refine` over every face `locate` gives is what `detect` gives.
    fn locate(&mut self, frame: &RgbImage) -> Result<Vec<Face>> {
        self.detect(frame)
    }

    /// A face from [`FaceDetector::locate`], made as [`FaceDetector::detect`] would give it.
    fn refine(&mut self, _frame: &RgbImage, face: Face) -> Result<Face> {
        Ok(face)
    }
}

/// The board's face detector: BlazeFace at `path`, framed so faces of every size are found
/// and landmarked alike ([`FramedDetector`]). The trainer makes its crops with this too.
pub fn load_board_detector(path: &Path, min_score: f32) -> Result<FramedDetector<BlazeFace>> {
    let mut blazeface = BlazeFace::load(path)?;
    blazeface.min_score = min_score;
    Ok(FramedDetector::new(blazeface))
}

/// Two faces whose boxes overlap by at least this IoU are one face seen twice (by two of the
/// framed detector's looks, or two of BlazeFace's anchors that its own merge left apart).
pub const DUPLICATE_IOU: f32 = 0.3;

/// Two boxes of which the smaller lies at least this share inside the larger are one face: a
/// fragment of it (an eye region, a chin at the picture's edge), or the face in a loose box.
pub const FRAGMENT_INSIDE: f32 = 0.6;

/// One face per face: the best-scoring face is kept, with its own box, and every face that
/// overlaps a kept one by [`DUPLICATE_IOU`], or nests with it ([`FRAGMENT_INSIDE`]), is dropped.
/// Output is sorted by score. Unlike [`blend_overlapping`] (one detector pass's anchors,
/// averaged), this runs over whole faces from several looks, so it keeps a box, never a mean.
pub fn one_face_per_face(mut faces: Vec<Face>) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Face> = Vec::with_capacity(faces.len());
    for face in faces {
        let same_face = kept.iter().any(|k| {
            k.bbox.iou(&face.bbox) >= DUPLICATE_IOU
                || k.bbox.intersection(&face.bbox) >= FRAGMENT_INSIDE * k.bbox.area().min(face.bbox.area())
        });
        if !same_face {
            kept.push(face);
        }
    }
    kept
}

/// Merges overlapping candidates the way MediaPipe does ("weighted NMS"): the best candidate
/// absorbs every candidate overlapping it by at least `iou_threshold`, and the result is their
/// score-weighted mean, which steadies box and landmarks. Output is sorted by score.
pub fn blend_overlapping(mut candidates: Vec<Face>, iou_threshold: f32) -> Vec<Face> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut taken = vec![false; candidates.len()];
    let mut faces = Vec::new();
    for i in 0..candidates.len() {
        if taken[i] {
            continue;
        }
        let best = &candidates[i];
        let mut weight = 0.0f32;
        let mut bbox = [0f32; 4];
        let mut marks = [Point::default(); 6];
        for j in i..candidates.len() {
            let absorbed = j == i || candidates[i].bbox.iou(&candidates[j].bbox) >= iou_threshold;
            if taken[j] || !absorbed {
                continue;
            }
            taken[j] = true;
            let c = &candidates[j];
            let s = c.score;
            weight += s;
            bbox[0] += s * c.bbox.cx;
            bbox[1] += s * c.bbox.cy;
            bbox[2] += s * c.bbox.w;
            bbox[3] += s * c.bbox.h;
            for (m, p) in marks.iter_mut().zip(c.landmarks.iter()) {
                m.x += s * p.x;
                m.y += s * p.y;
            }
        }
        for m in marks.iter_mut() {
            m.x /= weight;
            m.y /= weight;
        }
        faces.push(Face {
            bbox: BBox {
                cx: bbox[0] / weight,
                cy: bbox[1] / weight,
                w: bbox[2] / weight,
                h: bbox[3] / weight,
            },
            landmarks: marks,
            score: best.score,
        });
    }
    faces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(cx: f32, score: f32) -> Face {
        Face { bbox: BBox { cx, cy: 50.0, w: 40.0, h: 40.0 }, landmarks: [Point::new(cx, 50.0); 6], score }
    }

    #[test]
    fn overlapping_candidates_merge_into_their_weighted_mean() {
        let faces = blend_overlapping(vec![face(100.0, 0.6), face(104.0, 0.9), face(300.0, 0.7)], 0.3);
        assert_eq!(faces.len(), 2);
        assert_eq!(faces[0].score, 0.9);
        let expected = (100.0 * 0.6 + 104.0 * 0.9) / 1.5;
        assert!((faces[0].bbox.cx - expected).abs() < 1e-4);
        assert!((faces[0].landmarks[2].x - expected).abs() < 1e-4);
        assert_eq!(faces[1].bbox.cx, 300.0);
    }

    fn boxed(x0: f32, y0: f32, x1: f32, y1: f32, score: f32) -> Face {
        let bbox = BBox::from_corners(x0, y0, x1, y1);
        Face { bbox, landmarks: [bbox.centre(); 6], score }
    }

    #[test]
    fn one_face_seen_by_two_looks_is_kept_once_with_its_best_box() {
        // The two boxes `classify` gave for one 200x200 chip before faces were merged.
        let faces = one_face_per_face(vec![
            boxed(-7.0, 4.0, 187.0, 187.0, 0.86),
            boxed(-16.0, -9.0, 202.0, 202.0, 0.93),
        ]);
        assert_eq!(faces.len(), 1);
        assert_eq!(faces[0].score, 0.93);
        assert_eq!(faces[0].bbox, BBox::from_corners(-16.0, -9.0, 202.0, 202.0), "the best box, not a mean");
    }

    #[test]
    fn fragments_inside_a_larger_face_are_dropped() {
        // A chip's face and two 106 px "faces" at its edge, inside the face's box.
        let faces = one_face_per_face(vec![
            boxed(94.0, 0.0, 200.0, 106.0, 0.56),
            boxed(-16.0, -9.0, 202.0, 202.0, 0.93),
            boxed(0.0, 94.0, 106.0, 200.0, 0.51),
        ]);
        assert_eq!(faces.len(), 1);
        assert_eq!(faces[0].score, 0.93);
    }

    #[test]
    fn neighbours_and_a_face_partly_behind_another_are_kept() {
        let faces = one_face_per_face(vec![
            boxed(100.0, 100.0, 160.0, 160.0, 0.9),
            boxed(170.0, 100.0, 230.0, 160.0, 0.8),
            // Half of it behind the first face's box: a person in the row behind.
            boxed(130.0, 60.0, 190.0, 120.0, 0.7),
            // A stronger small face is never a fragment of a weaker large one's box.
            boxed(300.0, 300.0, 340.0, 340.0, 0.95),
            boxed(250.0, 250.0, 450.0, 450.0, 0.6),
        ]);
        assert_eq!(faces.len(), 4, "{faces:?}");
        let scores: Vec<f32> = faces.iter().map(|f| f.score).collect();
        assert_eq!(scores, vec![0.95, 0.9, 0.8, 0.7], "sorted by score; the large weak box goes");
    }

    #[test]
    fn no_candidates_no_faces() {
        assert!(one_face_per_face(Vec::new()).is_empty());
        assert!(blend_overlapping(Vec::new(), 0.3).is_empty());
    }
}
