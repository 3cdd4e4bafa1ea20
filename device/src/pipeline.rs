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
    /// Frames the detector looked at.
    pub detector_frames: usize,
    /// Faces detected.
    pub faces: usize,
    /// Faces read by the model (every face, or fewer under a [`crate::track::ReadPolicy`]).
    pub reads: usize,
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
    Ok(readable(detector.detect(frame)?, min_face_px))
}

/// `faces` of at least `min_face_px`, best score first.
fn readable(faces: Vec<Face>, min_face_px: f32) -> Vec<Face> {
    let mut faces: Vec<Face> = faces.into_iter().filter(|f| f.bbox.w.max(f.bbox.h) >= min_face_px).collect();
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    faces
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

    /// Detect, crop and read every face of `frame`, adding each stage's time to `times`.
    pub fn analyze_timed(&mut self, frame: &RgbImage, times: &mut StageTimes) -> Result<Vec<FaceReading>> {
        let faces = self.detect_timed(frame, times)?;
        let estimates = self.read_timed(frame, &faces.iter().collect::<Vec<_>>(), times)?;
        Ok(faces.into_iter().zip(estimates).map(|(face, estimate)| FaceReading { face, estimate }).collect())
    }

    /// The faces of `frame` ([`find_faces`]), timed.
    pub fn detect_timed(&mut self, frame: &RgbImage, times: &mut StageTimes) -> Result<Vec<Face>> {
        let start = Instant::now();
        let faces = find_faces(self.detector.as_mut(), frame, self.min_face_px)?;
        times.detect += start.elapsed();
        times.detector_frames += 1;
        times.faces += faces.len();
        Ok(faces)
    }

    /// The faces of `frame` as [`FaceDetector::locate`] places them (enough to track them),
    /// filtered and ordered as [`find_faces`] does, timed.
    pub fn locate_timed(&mut self, frame: &RgbImage, times: &mut StageTimes) -> Result<Vec<Face>> {
        let start = Instant::now();
        let faces = readable(self.detector.locate(frame)?, self.min_face_px);
        times.detect += start.elapsed();
        times.detector_frames += 1;
        times.faces += faces.len();
        Ok(faces)
    }

    /// A located face made ready to read ([`FaceDetector::refine`]), timed as detection.
    pub fn refine_timed(&mut self, frame: &RgbImage, face: &Face, times: &mut StageTimes) -> Result<Face> {
        let start = Instant::now();
        let face = self.detector.refine(frame, face.clone())?;
        times.detect += start.elapsed();
        Ok(face)
    }

    /// The model's reading of each of `faces` in `frame`, cropping and classifying timed.
    pub fn read_timed(
        &self,
        frame: &RgbImage,
        faces: &[&Face],
        times: &mut StageTimes,
    ) -> Result<Vec<Estimate>> {
        let start = Instant::now();
        let crops: Vec<RgbImage> = faces.iter().map(|f| self.model.crop(frame, f)).collect();
        let cropped = Instant::now();
        let estimates = self.model.predict(&crops)?;
        times.crop += cropped - start;
        times.classify += cropped.elapsed();
        times.reads += faces.len();
        Ok(estimates)
    }
}
