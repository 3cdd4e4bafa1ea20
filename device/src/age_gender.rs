//! The age and gender model: load a faceage ONNX file, check its contract, run face crops.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::detect::Face;
use crate::model_file::ModelContract;

/// One face's reading as the model gives it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Age in years.
    pub age: f32,
    /// Probability that the face is female, 0..1.
    pub female: f32,
    /// One standard deviation of the age estimate, years, when the model gives one.
    pub age_std: Option<f32>,
    /// Probability mass in each of [`crate::bands::AGE_BANDS`], when the model gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_bands: Option<BandShares>,
}

pub use crate::bands::BandShares;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gender {
    #[serde(rename = "F")]
    Female,
    #[serde(rename = "M")]
    Male,
}

impl Gender {
    pub fn of(female: bool) -> Gender {
        if female { Gender::Female } else { Gender::Male }
    }

    pub fn letter(self) -> char {
        match self {
            Gender::Female => 'F',
            Gender::Male => 'M',
        }
    }
}

/// How sure a gender reading with probability `female` is, 0 (a coin toss) to 1 (certain):
/// what the overlay's bar and the kiosk's `confidence` show.
pub fn gender_certainty(female: f32) -> f32 {
    (2.0 * (female - 0.5).abs()).min(1.0)
}

impl Estimate {
    pub fn gender(&self) -> Gender {
        Gender::of(self.female >= 0.5)
    }

    /// How sure the gender reading is ([`gender_certainty`]).
    pub fn gender_certainty(&self) -> f32 {
        gender_certainty(self.female)
    }

    /// How this face counts in each age band: the model's probability mass per band when it
    /// gives one (summed over faces, this counts each band without the pull toward the
    /// crowded twenties and thirties that the single reading has), else all in the band of
    /// the reading.
    pub fn band_shares(&self) -> BandShares {
        self.age_bands.unwrap_or_else(|| crate::bands::one_band(self.age))
    }
}

pub struct AgeGenderModel {
    plan: Arc<TypedRunnableModel>,
    contract: ModelContract,
    label: String,
    /// Positions of the outputs among the plan's.
    outputs: OutputPositions,
    file_size: u64,
}

impl AgeGenderModel {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read model", path.display()))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Loads a model from the bytes of an ONNX file; `label` names it in errors.
    pub fn from_bytes(bytes: &[u8], label: &str) -> Result<Self> {
        let proto = crate::onnx::decode_model(bytes, label)?;
        let contract = ModelContract::from_metadata(&crate::onnx::metadata(&proto), label)?;
        crate::onnx::check_initializers(&proto, label)?;
        let outputs = output_positions(&proto, &contract, label)?;
        check_input(&proto, &contract, label)?;
        let plan = crate::onnx::runnable(&proto, None, label)?;
        let model = Self { plan, contract, label: label.to_string(), outputs, file_size: bytes.len() as u64 };
        // A model that cannot turn a plain grey face into finite numbers (a corrupt scale, a
        // broken graph) is refused now rather than in front of a camera.
        let grey = RgbImage::from_pixel(model.input_size(), model.input_size(), Rgb([128, 128, 128]));
        let probe = model
            .predict(&[grey.clone(), grey])
            .with_context(|| format!("{label}: model fails on a test input"))?;
        for e in &probe {
            ensure!(
                e.age.is_finite() && e.female.is_finite() && (0.0..=1.0).contains(&e.female),
                "{label}: model gives invalid output on a test input (age {}, female {}): corrupt weights or quantization scales?",
                e.age,
                e.female
            );
        }
        Ok(model)
    }

    pub fn contract(&self) -> &ModelContract {
        &self.contract
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    pub fn input_size(&self) -> u32 {
        self.contract.input_size
    }

    /// The model's input crop of `face`, made the way the model was trained.
    pub fn crop(&self, frame: &RgbImage, face: &Face) -> RgbImage {
        self.contract.crop.crop(frame, face, self.input_size())
    }

    /// Normalised `[N, 3, S, S]` input for `crops` (each `S x S`).
    pub fn input_tensor(&self, crops: &[RgbImage]) -> Result<Tensor> {
        input_tensor(crops, &self.contract)
    }

    /// Runs the model on a batch of crops.
    pub fn predict(&self, crops: &[RgbImage]) -> Result<Vec<Estimate>> {
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let input = self.input_tensor(crops)?;
        self.predict_tensor(input)
    }

    /// Runs the model on an already normalised `[N, 3, S, S]` tensor.
    pub fn predict_tensor(&self, input: Tensor) -> Result<Vec<Estimate>> {
        let n = input.shape()[0];
        let outputs = self
            .plan
            .run(tvec!(input.into()))
            .with_context(|| format!("{}: inference failed", self.label))?;
        let values = |i: usize, per_face: usize| -> Result<Vec<f32>> {
            let t = outputs.get(i).context("missing output")?;
            let values: Vec<f32> = t.to_plain_array_view::<f32>()?.iter().copied().collect();
            ensure!(
                values.len() == n * per_face,
                "{}: output {i} has {} values for {n} faces",
                self.label,
                values.len()
            );
            Ok(values)
        };
        let at = &self.outputs;
        let ages = values(at.age, 1)?;
        let female = values(at.female, 1)?;
        let spread = at.age_std.map(|i| values(i, 1)).transpose()?;
        let bands = at.age_bands.map(|i| values(i, 6)).transpose()?;
        Ok((0..n)
            .map(|i| Estimate {
                age: ages[i],
                female: female[i],
                age_std: spread.as_ref().map(|s| s[i]),
                age_bands: bands.as_ref().map(|b| {
                    let shares = std::array::from_fn(|k| b[i * 6 + k]);
                    let c = &self.contract;
                    crate::bands::calibrated(&shares, c.band_temperature, c.band_weights.as_ref())
                }),
            })
            .collect())
    }
}

/// Normalised `[N, 3, S, S]` input for `crops` (each `S x S`) as the contract says:
/// `x = (pixel / 255 - mean) / std` per RGB channel.
pub fn input_tensor(crops: &[RgbImage], contract: &ModelContract) -> Result<Tensor> {
    let s = contract.input_size as usize;
    let plane = s * s;
    let mut data = vec![0f32; crops.len() * 3 * plane];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * contract.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| contract.mean[c] / contract.std[c]);
    for (n, crop) in crops.iter().enumerate() {
        ensure!(
            crop.dimensions() == (s as u32, s as u32),
            "crop is {:?}, model wants {s}x{s}",
            crop.dimensions()
        );
        let base = n * 3 * plane;
        for (i, px) in crop.pixels().enumerate() {
            for c in 0..3 {
                data[base + c * plane + i] = px.0[c] as f32 * scale[c] - shift[c];
            }
        }
    }
    Tensor::from_shape(&[crops.len(), 3, s, s], &data)
}

/// Where each named output of the contract is among the graph's outputs.
struct OutputPositions {
    age: usize,
    female: usize,
    age_std: Option<usize>,
    age_bands: Option<usize>,
}

fn output_positions(proto: &ModelProto, contract: &ModelContract, label: &str) -> Result<OutputPositions> {
    let graph = proto.graph.as_ref().context("no graph")?;
    let names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let find = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .with_context(|| format!("{label}: the contract names output {name:?}, the graph has {names:?}"))
    };
    Ok(OutputPositions {
        age: find(&contract.output_age)?,
        female: find(&contract.output_female)?,
        age_std: contract.output_age_std.as_deref().map(find).transpose()?,
        age_bands: contract.output_age_bands.as_deref().map(find).transpose()?,
    })
}

fn check_input(proto: &ModelProto, contract: &ModelContract, label: &str) -> Result<()> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto::Value as TypeValue;
    let graph = proto.graph.as_ref().context("no graph")?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).collect();
    let [input] = inputs.as_slice() else {
        bail!("{label}: model must have exactly one input, it has {}", inputs.len());
    };
    if input.name != contract.input_name {
        bail!("{label}: the contract names input {:?}, the graph's is {:?}", contract.input_name, input.name);
    }
    let dims: Vec<Option<i64>> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let s = contract.input_size as i64;
    match dims.as_slice() {
        [_, Some(3), Some(h), Some(w)] if *h == s && *w == s => Ok(()),
        other => bail!("{label}: input shape {other:?} does not match the contract [N, 3, {s}, {s}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gender_certainty_runs_from_a_coin_toss_to_sure_either_way() {
        assert_eq!(gender_certainty(0.5), 0.0);
        assert_eq!(gender_certainty(1.0), 1.0);
        assert_eq!(gender_certainty(0.0), 1.0);
        assert!((gender_certainty(0.8) - 0.6).abs() < 1e-6 && (gender_certainty(0.2) - 0.6).abs() < 1e-6);
        let e = Estimate { age: 30.0, female: 0.9, age_std: None, age_bands: None };
        assert!((e.gender_certainty() - 0.8).abs() < 1e-6);
    }
}
