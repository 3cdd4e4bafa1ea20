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

/// Time spent in each stage of [`Pipeline::analyze`], summed over calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub detect: Duration,
    pub crop: Duration,
    pub classify: Duration,
    pub faces: usize,
}

pub struct Pipeline {
    pub detector: Box<dyn FaceDetector>,
    pub model: AgeGenderModel,
    /// Faces whose box is smaller than this (pixels) are too small to read reliably.
    pub min_face_px: f32,
}

impl Pipeline {
    pub fn new(detector: Box<dyn FaceDetector>, model: AgeGenderModel) -> Self {
        Self { detector, model, min_face_px: 24.0 }
    }

    pub fn analyze(&mut self, frame: &RgbImage) -> Result<Vec<FaceReading>> {
        self.analyze_timed(frame, &mut StageTimes::default())
    }

    pub fn analyze_timed(&mut self, frame: &RgbImage, times: &mut StageTimes) -> Result<Vec<FaceReading>> {
        let start = Instant::now();
        let faces: Vec<Face> = self
            .detector
            .detect(frame)?
            .into_iter()
            .filter(|f| f.bbox.w.max(f.bbox.h) >= self.min_face_px)
            .collect();
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
