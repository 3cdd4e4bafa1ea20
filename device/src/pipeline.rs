//! One frame in, readings out: detect -> align and crop -> classify.

use std::time::{Duration, Instant};

use anyhow::Result;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::age_gender::{AgeGenderModel, Estimate};
use crate::detect::{Face, FaceDetector};

/// A face and what the model reads from it in one frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceReading {
    pub face: Face,
    pub estimate: Estimate,
}

/// A reading as printed for people and scripts: box corner and size in pixels, detector
/// score, age (years, with its spread when the model gives one), gender letter and p(female).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceSummary {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    pub score: f32,
    pub age: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_std: Option<f32>,
    pub gender: crate::age_gender::Gender,
    pub female: f32,
}

impl From<&FaceReading> for FaceSummary {
    fn from(r: &FaceReading) -> Self {
        let b = &r.face.bbox;
        let round1 = |v: f32| (v * 10.0).round() / 10.0;
        let round2 = |v: f32| (v * 100.0).round() / 100.0;
        let round3 = |v: f32| (v * 1000.0).round() / 1000.0;
        FaceSummary {
            x: round1(b.x0()),
            y: round1(b.y0()),
            w: round1(b.w),
            h: round1(b.h),
            score: round3(r.face.score),
            age: round2(r.estimate.age),
            age_std: r.estimate.age_std.map(round2),
            gender: r.estimate.gender(),
            female: round3(r.estimate.female),
        }
    }
}

/// Time spent in each stage of [`Pipeline::analyze`], summed over calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub detect: Duration,
    pub crop: Duration,
    pub classify: Duration,
    pub faces: usize,
}

/// Faces whose box is smaller than this (pixels) are too small to read reliably.
pub const MIN_FACE_PX: f32 = 24.0;

/// The faces of `frame` the board reads: detected (with the board's [`FramedDetector`]
/// framing when `detector` is [`load_board_detector`]'s), those under `min_face_px` dropped,
/// best score first. The trainer finds its faces with this very function.
///
/// [`FramedDetector`]: crate::detect::FramedDetector
/// [`load_board_detector`]: crate::detect::load_board_detector
pub fn find_faces(detector: &mut dyn FaceDetector, frame: &RgbImage, min_face_px: f32) -> Result<Vec<Face>> {
    let mut faces: Vec<Face> =
        detector.detect(frame)?.into_iter().filter(|f| f.bbox.w.max(f.bbox.h) >= min_face_px).collect();
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(faces)
}

/// The face a one-person photo is about (a labelled image, an ID photo): the best-scoring one.
/// `faceage eval` and the trainer pick the same.
pub fn primary_face(faces: &[Face]) -> Option<&Face> {
    faces.iter().max_by(|a, b| a.score.total_cmp(&b.score))
}

pub struct Pipeline {
    pub detector: Box<dyn FaceDetector>,
    pub model: AgeGenderModel,
    /// Faces whose box is smaller than this (pixels) are too small to read reliably.
    pub min_face_px: f32,
}

impl Pipeline {
    pub fn new(detector: Box<dyn FaceDetector>, model: AgeGenderModel) -> Self {
        Self { detector, model, min_face_px: MIN_FACE_PX }
    }

    pub fn analyze(&mut self, frame: &RgbImage) -> Result<Vec<FaceReading>> {
        self.analyze_timed(frame, &mut StageTimes::default())
    }

    pub fn analyze_timed(&mut self, frame: &RgbImage, times: &mut StageTimes) -> Result<Vec<FaceReading>> {
        let start = Instant::now();
        let faces = find_faces(self.detector.as_mut(), frame, self.min_face_px)?;
        let detected = Instant::now();
        let crops: Vec<RgbImage> = faces.iter().map(|f| self.model.crop(frame, f)).collect();
        let cropped = Instant::now();
        let estimates = self.model.predict(&crops)?;
        let classified = Instant::now();
        times.detect += detected - start;
        times.crop += cropped - detected;
        times.classify += classified - cropped;
        times.faces += faces.len();
        Ok(faces.into_iter().zip(estimates).map(|(face, estimate)| FaceReading { face, estimate }).collect())
    }
}
