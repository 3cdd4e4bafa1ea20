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

    #[test]
    fn no_candidates_no_faces() {
        assert!(blend_overlapping(Vec::new(), 0.3).is_empty());
    }
}
