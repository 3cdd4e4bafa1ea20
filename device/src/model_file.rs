//! The model-file contract between trainer and board.
//!
//! Every fact the board needs to use a model travels in the ONNX file's `metadata_props`
//! under `faceage.*` keys, versioned by `faceage.schema`. The host writes them with
//! [`ModelContract::to_metadata`]; the board reads them with [`ModelContract::from_metadata`]
//! and refuses a file whose schema it does not know.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::align::{CROP_METHOD, CropGeometry};

pub const SCHEMA_KEY: &str = "faceage.schema";
pub const SCHEMA_VERSION: u32 = 1;
/// Optional: a board that predates it reads the shares untempered, as before.
pub const BAND_TEMPERATURE_KEY: &str = "faceage.output.age_bands.temperature";
/// Optional, six positive numbers "w0,...,w5" in band order: a board that predates it reads
/// the shares unweighted.
pub const BAND_WEIGHTS_KEY: &str = "faceage.output.age_bands.weights";

/// How a model's weights and activations are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantFormat {
    /// Plain f32.
    None,
    /// QuantizeLinear/DequantizeLinear pairs around f32 ops: small file, f32 kernels.
    Int8Qdq,
    /// QLinearConv/QLinearMatMul: integer kernels end to end.
    Int8Qoperator,
}

impl QuantFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Int8Qdq => "int8-qdq",
            Self::Int8Qoperator => "int8-qoperator",
        }
    }
}

impl FromStr for QuantFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "int8-qdq" => Ok(Self::Int8Qdq),
            "int8-qoperator" => Ok(Self::Int8Qoperator),
            other => bail!("unknown quantization format {other:?}"),
        }
    }
}

/// Everything the board must know to feed a model and read its answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelContract {
    /// Short human name, e.g. "faceage-cnn64".
    pub name: String,
    /// Input tensor name; layout is NCHW with a dynamic batch: `[N, 3, size, size]`.
    pub input_name: String,
    pub input_size: u32,
    /// Per channel (R, G, B): `x = (pixel / 255 - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub crop: CropGeometry,
    /// The detector whose boxes the crops were trained on (e.g. "blazeface-back-256").
    pub detector: String,
    /// Output with the age in years, shape `[N]`.
    pub output_age: String,
    /// Output with the probability that the face is female, shape `[N]`.
    pub output_female: String,
    /// Optional output with the age spread (one standard deviation, years), shape `[N]`.
    pub output_age_std: Option<String>,
    /// Optional output with each face's probability mass in each of the board's age bands
    /// ([`crate::bands::AGE_BANDS`]), shape `[N, 6]`: counts per band are summed from it.
    pub output_age_bands: Option<String>,
    /// The temperature the board puts on the band shares ([`crate::bands::tempered`]),
    /// fitted on the validation split so that the counts' ±2 sigma hold the true count 95
    /// times in 100 (`faceage eval`'s coverage); absent: the shares as the net gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band_temperature: Option<f32>,
    /// The weights the board puts on the tempered band shares ([`crate::bands::weighted`]),
    /// fitted with the temperature so that each band's mean share is how often faces are in
    /// it; absent: unweighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band_weights: Option<[f32; 6]>,
    pub quant_format: QuantFormat,
    /// How the quantization was calibrated, in words.
    pub quant_details: String,
    pub train_data: String,
    pub train_license: String,
    pub train_command: String,
    /// The seed of the train/validation/test split the model was trained on (`labels::split_of`),
    /// so tools can measure it on its own held-out faces.
    pub split_seed: Option<u64>,
    /// Validation and test metrics measured at export, e.g. `{"test.age_mae": 4.9}`.
    pub metrics: BTreeMap<String, f64>,
}

impl ModelContract {
    /// The `faceage.*` metadata entries for this contract, schema first.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let list = |v: &[f32; 3]| v.map(|x| x.to_string()).join(",");
        let mut props = vec![
            (SCHEMA_KEY, SCHEMA_VERSION.to_string()),
            ("faceage.name", self.name.clone()),
            ("faceage.input.name", self.input_name.clone()),
            ("faceage.input.layout", "NCHW".into()),
            ("faceage.input.size", self.input_size.to_string()),
            ("faceage.input.color", "RGB".into()),
            ("faceage.input.mean", list(&self.mean)),
            ("faceage.input.std", list(&self.std)),
            ("faceage.crop.method", CROP_METHOD.into()),
            ("faceage.crop.scale", self.crop.scale.to_string()),
            ("faceage.crop.shift_down", self.crop.shift_down.to_string()),
            ("faceage.crop.max_roll_deg", self.crop.max_roll_deg.to_string()),
            ("faceage.crop.detector", self.detector.clone()),
            ("faceage.output.age", self.output_age.clone()),
            ("faceage.output.female", self.output_female.clone()),
            ("faceage.quant.format", self.quant_format.as_str().into()),
            ("faceage.quant.details", self.quant_details.clone()),
            ("faceage.train.data", self.train_data.clone()),
            ("faceage.train.license", self.train_license.clone()),
            ("faceage.train.command", self.train_command.clone()),
            ("faceage.metrics", serde_json::to_string(&self.metrics).unwrap_or_default()),
        ];
        if let Some(std) = &self.output_age_std {
            props.push(("faceage.output.age_std", std.clone()));
        }
        if let Some(seed) = self.split_seed {
            props.push(("faceage.train.split_seed", seed.to_string()));
        }
        if let Some(bands) = &self.output_age_bands {
            props.push(("faceage.output.age_bands", bands.clone()));
            props.push(("faceage.output.age_bands.from", band_starts()));
            if let Some(t) = self.band_temperature {
                props.push((BAND_TEMPERATURE_KEY, t.to_string()));
            }
            if let Some(w) = &self.band_weights {
                props.push((BAND_WEIGHTS_KEY, band_weights_text(w)));
            }
        }
        props.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Reads and checks the contract; `label` names the file in errors.
    pub fn from_metadata(props: &BTreeMap<String, String>, label: &str) -> Result<Self> {
        let m = Metadata { props, label };
        m.check_schema()?;
        for (key, want) in [
            ("faceage.input.layout", "NCHW"),
            ("faceage.input.color", "RGB"),
            ("faceage.crop.method", CROP_METHOD),
        ] {
            let got = m.get(key)?;
            ensure!(got == want, "{label}: metadata {key}={got:?} is not supported (expected {want:?})");
        }
        let input_size = m.number("faceage.input.size")? as u32;
        ensure!(
            (16..=512).contains(&input_size),
            "{label}: metadata faceage.input.size={input_size} is out of range 16..=512"
        );
        let std = m.triple("faceage.input.std")?;
        ensure!(
            std.iter().all(|s| s.is_finite() && *s > 0.0),
            "{label}: metadata faceage.input.std must be positive"
        );
        let crop = CropGeometry {
            scale: m.number("faceage.crop.scale")?,
            shift_down: m.number("faceage.crop.shift_down")?,
            max_roll_deg: m.number("faceage.crop.max_roll_deg")?,
        };
        ensure!(
            crop.scale.is_finite() && crop.scale > 0.0,
            "{label}: metadata faceage.crop.scale must be positive"
        );
        Ok(ModelContract {
            name: m.text("faceage.name"),
            input_name: m.get("faceage.input.name")?.to_string(),
            input_size,
            mean: m.triple("faceage.input.mean")?,
            std,
            crop,
            detector: m.text("faceage.crop.detector"),
            output_age: m.get("faceage.output.age")?.to_string(),
            output_female: m.get("faceage.output.female")?.to_string(),
            output_age_std: props.get("faceage.output.age_std").cloned(),
            output_age_bands: m.age_bands_output()?,
            band_temperature: m.band_temperature()?,
            band_weights: m.band_weights()?,
            quant_format: m
                .get("faceage.quant.format")?
                .parse()
                .with_context(|| format!("{label}: metadata faceage.quant.format"))?,
            quant_details: m.text("faceage.quant.details"),
            train_data: m.text("faceage.train.data"),
            train_license: m.text("faceage.train.license"),
            train_command: m.text("faceage.train.command"),
            split_seed: m.split_seed()?,
            metrics: match props.get("faceage.metrics") {
                Some(json) => serde_json::from_str(json)
                    .with_context(|| format!("{label}: metadata faceage.metrics is not a JSON object"))?,
                None => BTreeMap::new(),
            },
        })
    }
}

/// A model file's metadata entries, read with errors that name the file and the key.
struct Metadata<'a> {
    props: &'a BTreeMap<String, String>,
    label: &'a str,
}

impl Metadata<'_> {
    fn get(&self, key: &str) -> Result<&str> {
        let label = self.label;
        self.props.get(key).map(String::as_str).with_context(|| format!("{label}: metadata {key} is missing"))
    }

    /// An entry that may be absent (descriptions).
    fn text(&self, key: &str) -> String {
        self.props.get(key).cloned().unwrap_or_default()
    }

    fn number(&self, key: &str) -> Result<f32> {
        let v = self.get(key)?;
        v.trim().parse().with_context(|| format!("{}: metadata {key}={v:?} is not a number", self.label))
    }

    fn triple(&self, key: &str) -> Result<[f32; 3]> {
        let v = self.get(key)?;
        let bad = || format!("{}: metadata {key}={v:?} is not three numbers", self.label);
        let parts: Vec<f32> =
            v.split(',').map(|p| p.trim().parse::<f32>()).collect::<Result<_, _>>().with_context(bad)?;
        parts.try_into().map_err(|_| anyhow::anyhow!(bad()))
    }

    /// A faceage file, of the schema this build reads.
    fn check_schema(&self) -> Result<()> {
        let label = self.label;
        let Some(schema) = self.props.get(SCHEMA_KEY) else {
            bail!(
                "{label}: not a faceage model file (no {SCHEMA_KEY} metadata); \
                 export one with `faceage-host export`"
            );
        };
        match schema.trim().parse::<u32>() {
            Ok(SCHEMA_VERSION) => Ok(()),
            Ok(v) => bail!(
                "{label}: model schema {v} is not understood by this faceage \
                 (it reads schema {SCHEMA_VERSION}); update faceage or re-export the model"
            ),
            Err(_) => bail!("{label}: {SCHEMA_KEY}={schema:?} is not a schema number"),
        }
    }

    /// The band-shares output, when the file has one: its bands must be the board's.
    fn age_bands_output(&self) -> Result<Option<String>> {
        let Some(output) = self.props.get("faceage.output.age_bands") else { return Ok(None) };
        let from = self.get("faceage.output.age_bands.from")?;
        ensure!(
            from == band_starts(),
            "{}: the model's age bands start at {from:?}, this faceage counts bands starting at {:?}; \
             re-export the model with this faceage",
            self.label,
            band_starts()
        );
        Ok(Some(output.clone()))
    }

    fn band_temperature(&self) -> Result<Option<f32>> {
        if !self.props.contains_key(BAND_TEMPERATURE_KEY) {
            return Ok(None);
        }
        let t = self.number(BAND_TEMPERATURE_KEY)?;
        ensure!(
            t.is_finite() && t > 0.0,
            "{}: metadata {BAND_TEMPERATURE_KEY}={t} must be a positive number",
            self.label
        );
        Ok(Some(t))
    }

    fn band_weights(&self) -> Result<Option<[f32; 6]>> {
        let Some(text) = self.props.get(BAND_WEIGHTS_KEY) else { return Ok(None) };
        parse_band_weights(text)
            .map(Some)
            .with_context(|| format!("{}: metadata {BAND_WEIGHTS_KEY}", self.label))
    }

    /// The split seed: its own key, or, in files before it, the words of the data entry
    /// ("... (A train / B val / C test faces, split seed S)").
    fn split_seed(&self) -> Result<Option<u64>> {
        match self.props.get("faceage.train.split_seed") {
            Some(v) => Ok(Some(v.trim().parse().with_context(|| {
                format!("{}: metadata faceage.train.split_seed={v:?} is not a number", self.label)
            })?)),
            None => Ok(self
                .props
                .get("faceage.train.data")
                .and_then(|d| d.rsplit_once("split seed "))
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .and_then(|seed| seed.parse().ok())),
        }
    }
}

/// Band weights as the metadata (and `faceage-host upgrade --band-weights`) write them:
/// six numbers, comma-separated, in band order.
pub fn band_weights_text(weights: &[f32; 6]) -> String {
    weights.map(|w| w.to_string()).join(",")
}

/// Reads [`band_weights_text`]: exactly six positive numbers.
pub fn parse_band_weights(text: &str) -> Result<[f32; 6]> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>().with_context(|| format!("{text:?}: {v:?} is not a number")))
        .collect::<Result<_>>()?;
    let weights: [f32; 6] = values.try_into().map_err(|v: Vec<f32>| {
        anyhow::anyhow!("{text:?}: {} numbers, expected one per age band (6)", v.len())
    })?;
    ensure!(
        weights.iter().all(|w| w.is_finite() && *w > 0.0),
        "{text:?}: every weight must be a positive number"
    );
    Ok(weights)
}

/// The first age of each of the board's bands, as written in a model file: "0,3,13,20,40,60".
pub fn band_starts() -> String {
    crate::bands::AGE_BANDS.iter().map(|(_, from, _)| from.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn example() -> ModelContract {
        ModelContract {
            name: "test".into(),
            input_name: "faces".into(),
            input_size: 64,
            mean: [0.5, 0.5, 0.5],
            std: [0.25, 0.25, 0.25],
            crop: CropGeometry::default(),
            detector: "blazeface-back-256".into(),
            output_age: "age".into(),
            output_female: "female".into(),
            output_age_std: Some("age_std".into()),
            output_age_bands: Some("age_bands".into()),
            band_temperature: Some(0.8),
            band_weights: Some([0.5, 0.25, 1.5, 1.0, 1.375, 2.25]),
            quant_format: QuantFormat::None,
            quant_details: String::new(),
            train_data: "UTKFace".into(),
            train_license: "non-commercial research only".into(),
            train_command: "faceage-host train".into(),
            split_seed: Some(7),
            metrics: BTreeMap::from([("test.age_mae".to_string(), 4.5)]),
        }
    }

    fn props(c: &ModelContract) -> BTreeMap<String, String> {
        c.to_metadata().into_iter().collect()
    }

    #[test]
    fn contract_round_trips_through_metadata() {
        let c = example();
        assert_eq!(ModelContract::from_metadata(&props(&c), "m.onnx").unwrap(), c);
    }

    #[test]
    fn the_band_temperature_is_optional_and_must_be_positive() {
        let mut p = props(&example());
        assert_eq!(p.get(BAND_TEMPERATURE_KEY).map(String::as_str), Some("0.8"));
        p.remove(BAND_TEMPERATURE_KEY);
        assert_eq!(ModelContract::from_metadata(&p, "m.onnx").unwrap().band_temperature, None, "older files");
        for bad in ["0", "-1", "warm", "NaN"] {
            p.insert(BAND_TEMPERATURE_KEY.into(), bad.into());
            let err = format!("{:#}", ModelContract::from_metadata(&p, "m.onnx").unwrap_err());
            assert!(err.contains("m.onnx") && err.contains(BAND_TEMPERATURE_KEY), "{bad}: {err}");
        }
    }

    #[test]
    fn the_band_weights_are_optional_and_must_be_six_positive_numbers() {
        let mut p = props(&example());
        assert_eq!(p.get(BAND_WEIGHTS_KEY).map(String::as_str), Some("0.5,0.25,1.5,1,1.375,2.25"));
        p.remove(BAND_WEIGHTS_KEY);
        assert_eq!(ModelContract::from_metadata(&p, "m.onnx").unwrap().band_weights, None, "older files");
        for bad in
            ["1,1,1,1,1", "1,1,1,1,1,1,1", "1,1,0,1,1,1", "1,1,-2,1,1,1", "1,1,x,1,1,1", "", "1,1,1,1,1,inf"]
        {
            p.insert(BAND_WEIGHTS_KEY.into(), bad.into());
            let err = format!("{:#}", ModelContract::from_metadata(&p, "m.onnx").unwrap_err());
            assert!(err.contains("m.onnx") && err.contains(BAND_WEIGHTS_KEY), "{bad}: {err}");
        }
        assert_eq!(parse_band_weights(" 1, 2,3,4,5,6 ").unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn files_before_the_split_seed_key_give_it_in_words() {
        let mut p = props(&example());
        p.remove("faceage.train.split_seed");
        p.insert(
            "faceage.train.data".into(),
            "UTKFace (16945 train / 2157 val / 2221 test faces, split seed 3)".into(),
        );
        assert_eq!(ModelContract::from_metadata(&p, "m.onnx").unwrap().split_seed, Some(3));
        p.insert("faceage.train.data".into(), "somewhere".into());
        assert_eq!(ModelContract::from_metadata(&p, "m.onnx").unwrap().split_seed, None);
    }

    #[test]
    fn missing_schema_is_refused_with_a_hint() {
        let mut p = props(&example());
        p.remove(SCHEMA_KEY);
        let err = ModelContract::from_metadata(&p, "m.onnx").unwrap_err().to_string();
        assert!(err.contains("m.onnx") && err.contains("not a faceage model"), "{err}");
    }

    #[test]
    fn unknown_schema_and_bad_values_are_refused() {
        let mut p = props(&example());
        p.insert(SCHEMA_KEY.into(), "2".into());
        let err = ModelContract::from_metadata(&p, "m.onnx").unwrap_err().to_string();
        assert!(err.contains("schema 2"), "{err}");

        let mut p = props(&example());
        p.insert("faceage.input.std".into(), "1,2".into());
        let err = format!("{:#}", ModelContract::from_metadata(&p, "m.onnx").unwrap_err());
        assert!(err.contains("faceage.input.std"), "{err}");

        let mut p = props(&example());
        p.insert("faceage.output.age_bands.from".into(), "0,5,18,65".into());
        let err = ModelContract::from_metadata(&p, "m.onnx").unwrap_err().to_string();
        assert!(err.contains("age bands"), "{err}");

        let mut p = props(&example());
        p.insert("faceage.crop.method".into(), "dlib-68".into());
        let err = ModelContract::from_metadata(&p, "m.onnx").unwrap_err().to_string();
        assert!(err.contains("faceage.crop.method"), "{err}");
    }
}
