//! ONNX export: the trained net, batch norm folded into the convolutions, written as a
//! self-describing file (the [`ModelContract`] in `metadata_props`), then loaded back with the
//! device library and checked against candle on real crops.

pub mod from_run;
pub mod graph;
pub mod quantize;
pub mod upgrade;
pub mod verify;

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use faceage_device::files::write_atomically;
use faceage_device::{AgeGenderModel, ModelContract};
use prost::Message;
use tract_onnx::pb::ModelProto;

use crate::age_map::AgeMap;
use crate::crops::CropSet;
use crate::data::{AGE_BANDS, Split};
use crate::metrics::Prediction;
use crate::nn::model::{AgeGenderNet, AgeHead, Block, ConvKind};
use crate::trained::Model;
use graph::{Dim, Graph, attr_int, attr_ints};

pub const INPUT_NAME: &str = "faces";
pub const OUTPUT_AGE: &str = "age";
pub const OUTPUT_FEMALE: &str = "female";
pub const OUTPUT_AGE_STD: &str = "age_std";
/// `[N, 6]`: each face's age distribution summed over the board's age bands (counts use it).
pub const OUTPUT_AGE_BANDS: &str = "age_bands";
/// Inner tensors of a file with the distribution head: the age distribution `[N, bins]` with
/// both views averaged, or read once (`--no-mirror`). A teacher file hands it on.
pub const AGE_DISTRIBUTIONS: [&str; 2] = ["age.probs.averaged", "age.probs"];
const BN_EPS: f32 = 1e-5;

/// The split a model file records in `faceage.train.data`, as
/// "DATA (A train / B val / C test faces, split seed S)": `verify --data` reads the seed back
/// to measure a file on its own held-out faces, and so does `scripts/ensemble-eval.py`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordedSplit {
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub seed: u64,
}

impl RecordedSplit {
    /// `data`: the sources, as [`crate::config::describe_sources`] names them.
    pub fn describe(&self, data: &str) -> String {
        format!(
            "{} ({} train / {} val / {} test faces, split seed {})",
            data, self.train, self.val, self.test, self.seed
        )
    }

    /// None where the entry is not in `describe`'s form (a file from another tool).
    pub fn parse(train_data: &str) -> Option<Self> {
        let (_, inside) = train_data.rsplit_once(" (")?;
        let (counts, seed) = inside.strip_suffix(')')?.split_once(" faces, split seed ")?;
        let mut sizes = counts.split(" / ").map(|part| part.split_once(' '));
        let mut size = |name: &str| match sizes.next()?? {
            (n, word) if word == name => n.parse().ok(),
            _ => None,
        };
        let split =
            Self { train: size("train")?, val: size("val")?, test: size("test")?, seed: seed.parse().ok()? };
        sizes.next().is_none().then_some(split)
    }

    pub fn faces(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train,
            Split::Val => self.val,
            Split::Test => self.test,
        }
    }
}

/// A convolution with its batch norm folded in: `W' = W * g / sqrt(v + eps)`,
/// `b' = beta - mean * g / sqrt(v + eps)`.
#[derive(Clone, Debug)]
pub struct FoldedConv {
    pub name: String,
    /// `[out, in / groups, kernel, kernel]` row-major.
    pub weight: Vec<f32>,
    pub out_channels: usize,
    pub in_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    /// 1 for a full convolution, `in_channels` for a depthwise one.
    pub groups: usize,
    pub bias: Vec<f32>,
    pub pool_after: bool,
}

impl FoldedConv {
    pub fn weight_dims(&self) -> [usize; 4] {
        [self.out_channels, self.in_channels / self.groups, self.kernel, self.kernel]
    }

    /// The ONNX `Conv` attributes; padding keeps the size at stride 1.
    pub fn attributes(&self) -> Vec<tract_onnx::pb::AttributeProto> {
        let (k, pad) = (self.kernel as i64, (self.kernel / 2) as i64);
        vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("pads", &[pad, pad, pad, pad]),
            attr_ints("strides", &[self.stride as i64, self.stride as i64]),
            attr_int("group", self.groups as i64),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct LearnedPool {
    /// Side of the last feature map.
    pub side: usize,
    /// `[C, side, side]` row-major.
    pub weight: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Dense {
    pub name: String,
    /// `[out, in]` row-major.
    pub weight: Vec<f32>,
    pub outputs: usize,
    pub inputs: usize,
    pub bias: Vec<f32>,
}

/// The inference form of the net: plain tensors, no training state.
#[derive(Clone, Debug)]
pub struct FoldedNet {
    pub input_size: u32,
    pub convs: Vec<FoldedConv>,
    /// Learned pooling of the last map; `None`: global average.
    pub learned_pool: Option<LearnedPool>,
    pub age_head: Dense,
    pub gender_head: Dense,
    pub age_distribution: bool,
    /// Read every face twice, as is and mirrored, and average the readings (test-time
    /// augmentation: measured -0.1 years of MAE and +0.2 points of accuracy for twice the
    /// classifier's cost, still well under a millisecond per face).
    pub mirror: bool,
    /// Correction of the age reading fitted on validation ([`AgeMap`]), applied last.
    pub age_map: Option<AgeMap>,
}

fn values(t: &candle_core::Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

impl FoldedNet {
    pub fn from_net(net: &AgeGenderNet) -> Result<Self> {
        let mut convs: Vec<FoldedConv> = Vec::new();
        for block in &net.blocks {
            let conv = match block {
                Block::Conv(conv) => conv,
                Block::Pool => {
                    let last = convs.last_mut().context("the trunk starts with a pool")?;
                    last.pool_after = true;
                    continue;
                }
            };
            let (out_channels, per_group, kernel, _) = conv.weight.dims4()?;
            let (stride, groups) = match conv.kind {
                ConvKind::Full { stride, .. } => (stride, 1),
                ConvKind::Depthwise { stride } => (stride, out_channels),
            };
            let (w, gamma, beta) = (values(&conv.weight)?, values(&conv.gamma)?, values(&conv.beta)?);
            let (mean, var) = (values(&conv.running_mean)?, values(&conv.running_var)?);
            let per_out = per_group * kernel * kernel;
            let mut weight = Vec::with_capacity(w.len());
            let mut bias = Vec::with_capacity(out_channels);
            for o in 0..out_channels {
                let k = gamma[o] / (var[o] + BN_EPS).sqrt();
                weight.extend(w[o * per_out..(o + 1) * per_out].iter().map(|v| v * k));
                bias.push(beta[o] - mean[o] * k);
            }
            convs.push(FoldedConv {
                name: conv.name.clone(),
                weight,
                out_channels,
                in_channels: per_group * groups,
                kernel,
                stride,
                groups,
                bias,
                pool_after: false,
            });
        }
        let dense = |l: &crate::nn::model::Linear| -> Result<Dense> {
            let (outputs, inputs) = l.weight.dims2()?;
            Ok(Dense {
                name: l.name.clone(),
                weight: values(&l.weight)?,
                outputs,
                inputs,
                bias: values(&l.bias)?,
            })
        };
        Ok(Self {
            input_size: net.config.input_size,
            convs,
            learned_pool: match &net.pool_weight {
                Some(w) => Some(LearnedPool { side: w.dim(2)?, weight: values(w)? }),
                None => None,
            },
            age_head: dense(&net.age_head)?,
            gender_head: dense(&net.gender_head)?,
            age_distribution: matches!(net.config.age_head, AgeHead::Distribution { .. }),
            mirror: true,
            age_map: None,
        })
    }
}

/// How the network is written: plain f32, or one of the int8 forms (see [`quantize`]).
pub trait Encoding {
    /// Writes the convolutional trunk from `input` and returns the `[N, C]` f32 features.
    fn trunk(&self, g: &mut Graph, net: &FoldedNet, input: &str) -> Result<String>;
    /// Writes `input @ W^T + b` for a head and returns its f32 output.
    fn dense(&self, g: &mut Graph, d: &Dense, input: &str) -> Result<String>;
}

/// Writes a weight tensor (name, dims, values) and returns the name the graph reads it by.
pub type WeightFn<'a> = dyn Fn(&mut Graph, &str, &[usize], &[f32]) -> Result<String> + 'a;

/// Writes the f32-compute trunk (Conv, Relu, MaxPool, then the pooling), asking `weight`
/// for each conv weight tensor and `activation` for each conv input; returns the features
/// and the names of the tensors entering each conv (then the features), for calibration.
pub fn float_trunk(
    g: &mut Graph,
    net: &FoldedNet,
    input: &str,
    weight: &WeightFn,
    activation: &dyn Fn(&mut Graph, &str, usize) -> Result<String>,
) -> Result<(String, Vec<String>)> {
    let mut x = input.to_string();
    let mut taps = Vec::new();
    for (i, conv) in net.convs.iter().enumerate() {
        taps.push(x.clone());
        let conv_in = activation(g, &x, i)?;
        let w = weight(g, &format!("{}.weight", conv.name), &conv.weight_dims(), &conv.weight)?;
        let b = g.init_f32(&format!("{}.bias", conv.name), &[conv.out_channels], &conv.bias);
        let y = g.node(
            "Conv",
            &conv.name,
            &[&conv_in, &w, &b],
            &[&format!("{}.out", conv.name)],
            conv.attributes(),
        );
        x = g.node("Relu", &format!("{}.relu", conv.name), &[&y], &[&format!("{}.relu", conv.name)], vec![]);
        if conv.pool_after {
            let pooled = format!("{}.pool", conv.name);
            x = g.node("MaxPool", &pooled, &[&x], &[&pooled], max_pool_attributes());
        }
    }
    let features = pool_features(g, net, &x);
    taps.push(features.clone());
    let features = activation(g, &features, net.convs.len())?;
    Ok((features, taps))
}

/// `[N, 1]` median of the `[N, bins]` age distributions `p`, as
/// [`crate::nn::model::median_age`] computes it: each bin adds the part of it below the median,
/// `clip((0.5 - mass before it) / (its mass + eps), 0, 1)`, and the sum less half a bin is the
/// median. CumSum, elementwise ops and a MatMul: nothing the board's runtime lacks.
fn median_age(g: &mut Graph, p: &str, bins: usize) -> String {
    let axis = g.init_i64("age.median.axis", &[], &[1]);
    let half = g.init_f32("age.median.half", &[], &[0.5]);
    let epsilon = g.init_f32("age.median.epsilon", &[], &[crate::nn::model::MEDIAN_EPSILON]);
    let (zero, one) = (g.init_f32("age.median.zero", &[], &[0.0]), g.init_f32("age.median.one", &[], &[1.0]));
    let oldest = g.init_f32("age.median.oldest", &[], &[(bins - 1) as f32]);
    let ones = g.init_f32("age.median.ones", &[bins, 1], &vec![1.0; bins]);
    let before = g.node(
        "CumSum",
        "age.median.before",
        &[p, &axis],
        &["age.median.before"],
        vec![attr_int("exclusive", 1)],
    );
    let missing = g.node("Sub", "age.median.missing", &[&half, &before], &["age.median.missing"], vec![]);
    let mass = g.node("Add", "age.median.mass", &[p, &epsilon], &["age.median.mass"], vec![]);
    let share = g.node("Div", "age.median.share", &[&missing, &mass], &["age.median.share"], vec![]);
    let share = g.node(
        "Clip",
        "age.median.share_clipped",
        &[&share, &zero, &one],
        &["age.median.share_clipped"],
        vec![],
    );
    let bins_below =
        g.node("MatMul", "age.median.bins_below", &[&share, &ones], &["age.median.bins_below"], vec![]);
    let median =
        g.node("Sub", "age.median.unclipped", &[&bins_below, &half], &["age.median.unclipped"], vec![]);
    g.node("Clip", "age.median", &[&median, &zero, &oldest], &["age.median"], vec![])
}

/// `[N, 1]` readings through the age map, as [`AgeMap::apply_tensor`] computes it:
/// `values[0] + (relu(r - starts) - relu(r - ends)) @ slopes`.
/// The `age_bands` output: the `[N, bins]` age distribution `probs` summed over each of the
/// board's age bands (a MatMul with a 0/1 matrix).
pub(crate) fn band_shares(g: &mut Graph, probs: &str, bins: usize) -> String {
    let band_matrix: Vec<f32> =
        (0..bins).flat_map(|age| faceage_device::bands::one_band(age as f32)).collect();
    g.init_f32("age.band_matrix", &[bins, AGE_BANDS.len()], &band_matrix);
    g.node("MatMul", OUTPUT_AGE_BANDS, &[probs, "age.band_matrix"], &[OUTPUT_AGE_BANDS], vec![])
}

pub(crate) fn mapped_age(g: &mut Graph, map: &AgeMap, reading: &str) -> String {
    let (starts, ends, slopes) = map.segments();
    let n = starts.len();
    let starts = g.init_f32("age.map.starts", &[1, n], &starts);
    let ends = g.init_f32("age.map.ends", &[1, n], &ends);
    let slopes = g.init_f32("age.map.slopes", &[n, 1], &slopes);
    let first = g.init_f32("age.map.first", &[], &[map.values[0]]);
    let from_start =
        g.node("Sub", "age.map.from_start", &[reading, &starts], &["age.map.from_start"], vec![]);
    let from_start = g.node("Relu", "age.map.above_start", &[&from_start], &["age.map.above_start"], vec![]);
    let from_end = g.node("Sub", "age.map.from_end", &[reading, &ends], &["age.map.from_end"], vec![]);
    let from_end = g.node("Relu", "age.map.above_end", &[&from_end], &["age.map.above_end"], vec![]);
    let inside = g.node("Sub", "age.map.inside", &[&from_start, &from_end], &["age.map.inside"], vec![]);
    let rise = g.node("MatMul", "age.map.rise", &[&inside, &slopes], &["age.map.rise"], vec![]);
    g.node("Add", "age.map", &[&rise, &first], &["age.map"], vec![])
}

/// Writes the pooling of the last `[N, C, S, S]` map into the `[N, C]` features the heads
/// read: a global average, or the learned weights as a depthwise convolution spanning the map.
pub fn pool_features(g: &mut Graph, net: &FoldedNet, map: &str) -> String {
    let pooled = match &net.learned_pool {
        None => g.node("GlobalAveragePool", "gap", &[map], &["gap"], vec![]),
        Some(LearnedPool { side, weight }) => {
            let (side, channels) = (*side, weight.len() / (side * side));
            let w = g.init_f32("pool.weight", &[channels, 1, side, side], weight);
            let attributes = vec![
                attr_ints("kernel_shape", &[side as i64, side as i64]),
                attr_int("group", channels as i64),
            ];
            g.node("Conv", "pool", &[map, &w], &["pool"], attributes)
        }
    };
    g.node("Flatten", "features", &[&pooled], &["features"], vec![attr_int("axis", 1)])
}

pub fn max_pool_attributes() -> Vec<tract_onnx::pb::AttributeProto> {
    vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])]
}

/// Writes a Gemm head with the weight tensor `weight` gives.
pub fn float_dense(g: &mut Graph, d: &Dense, input: &str, weight: &WeightFn) -> Result<String> {
    let w = weight(g, &format!("{}.weight", d.name), &[d.outputs, d.inputs], &d.weight)?;
    let b = g.init_f32(&format!("{}.bias", d.name), &[d.outputs], &d.bias);
    let out = format!("{}.out", d.name);
    Ok(g.node("Gemm", &d.name, &[input, &w, &b], &[&out], vec![attr_int("transB", 1)]))
}

/// Plain f32 weights and activations.
pub struct PlainF32;

fn f32_weight(g: &mut Graph, name: &str, dims: &[usize], values: &[f32]) -> Result<String> {
    Ok(g.init_f32(name, dims, values))
}

fn unchanged(_g: &mut Graph, tensor: &str, _layer: usize) -> Result<String> {
    Ok(tensor.to_string())
}

impl Encoding for PlainF32 {
    fn trunk(&self, g: &mut Graph, net: &FoldedNet, input: &str) -> Result<String> {
        Ok(float_trunk(g, net, input, &f32_weight, &unchanged)?.0)
    }
    fn dense(&self, g: &mut Graph, d: &Dense, input: &str) -> Result<String> {
        float_dense(g, d, input, &f32_weight)
    }
}

/// Writes the network into an ONNX graph with the given encoding: the input (mirrored when the
/// net reads both views), the trunk, then the age and gender heads and their outputs.
pub fn build_model(net: &FoldedNet, contract: &ModelContract, encoding: &dyn Encoding) -> Result<ModelProto> {
    let mut g = Graph::default();
    let s = net.input_size as i64;
    g.inputs
        .push(Graph::value_info(INPUT_NAME, &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)]));
    let input = if net.mirror { mirrored_input(&mut g) } else { INPUT_NAME.to_string() };
    let features = encoding.trunk(&mut g, net, &input)?;
    let flat = g.init_i64("shape.flat", &[1], &[-1]);
    let age_out = encoding.dense(&mut g, &net.age_head, &features)?;
    if net.age_distribution {
        age_distribution_outputs(&mut g, net, &age_out, &flat);
    } else {
        age_regression_output(&mut g, net, &age_out, &flat);
    }
    let gender = encoding.dense(&mut g, &net.gender_head, &features)?;
    let p = g.node("Sigmoid", "female.sigmoid", &[&gender], &["female.probability"], vec![]);
    let p = g.node("Reshape", "female.flat", &[&p, &flat], &["female.flat"], vec![]);
    let p = average_views(&mut g, net.mirror, &p, None);
    g.node("Identity", OUTPUT_FEMALE, &[&p], &[OUTPUT_FEMALE], vec![]);

    g.outputs.push(Graph::value_info(OUTPUT_AGE, &[Dim::Named("N")]));
    g.outputs.push(Graph::value_info(OUTPUT_FEMALE, &[Dim::Named("N")]));
    if net.age_distribution {
        g.outputs.push(Graph::value_info(OUTPUT_AGE_STD, &[Dim::Named("N")]));
        g.outputs.push(Graph::value_info(
            OUTPUT_AGE_BANDS,
            &[Dim::Named("N"), Dim::Fixed(AGE_BANDS.len() as i64)],
        ));
    }
    Ok(g.into_model(&contract.name, contract.to_metadata()))
}

/// The batch of faces followed by their mirror images: `[N, 3, S, S]` -> `[2N, 3, S, S]`.
fn mirrored_input(g: &mut Graph) -> String {
    let starts = g.init_i64("mirror.starts", &[1], &[-1]);
    let ends = g.init_i64("mirror.ends", &[1], &[i64::MIN]);
    let axes = g.init_i64("mirror.axes", &[1], &[3]);
    let steps = g.init_i64("mirror.steps", &[1], &[-1]);
    let flipped =
        g.node("Slice", "mirror", &[INPUT_NAME, &starts, &ends, &axes, &steps], &["faces.mirrored"], vec![]);
    g.node("Concat", "faces.both", &[INPUT_NAME, &flipped], &["faces.both"], vec![attr_int("axis", 0)])
}

/// `[2N, ...]` -> `[N, ...]`: the mean of each face's two readings (`tensor` as it is when the
/// net does not mirror). `width`: the size of a row, for `[2N, width]` tensors.
fn average_views(g: &mut Graph, mirror: bool, tensor: &str, width: Option<usize>) -> String {
    if !mirror {
        return tensor.to_string();
    }
    let shape: Vec<i64> = match width {
        Some(w) => vec![2, -1, w as i64],
        None => vec![2, -1],
    };
    let shape_name = g.init_i64(&format!("{tensor}.views_shape"), &[shape.len()], &shape);
    let views = g.node(
        "Reshape",
        &format!("{tensor}.views"),
        &[tensor, &shape_name],
        &[&format!("{tensor}.views")],
        vec![],
    );
    g.node(
        "ReduceMean",
        &format!("{tensor}.averaged"),
        &[&views],
        &[&format!("{tensor}.averaged")],
        vec![attr_ints("axes", &[0]), attr_int("keepdims", 0)],
    )
}

/// A distribution head: the softmax over ages, averaged over views, gives the age (its median,
/// through the age map when there is one), its spread, and the shares per age band.
fn age_distribution_outputs(g: &mut Graph, net: &FoldedNet, logits: &str, flat: &str) {
    let bins = net.age_head.outputs;
    let ages: Vec<f32> = (0..bins).map(|a| a as f32).collect();
    let squares: Vec<f32> = ages.iter().map(|a| a * a).collect();
    g.init_f32("age.bins", &[bins, 1], &ages);
    g.init_f32("age.bins_squared", &[bins, 1], &squares);
    let p = g.node("Softmax", "age.softmax", &[logits], &["age.probs"], vec![attr_int("axis", -1)]);
    let p = average_views(g, net.mirror, &p, Some(bins));
    let mean = g.node("MatMul", "age.mean", &[&p, "age.bins"], &["age.mean"], vec![]);
    let second =
        g.node("MatMul", "age.second_moment", &[&p, "age.bins_squared"], &["age.second_moment"], vec![]);
    let square = g.node("Mul", "age.mean_squared", &[&mean, &mean], &["age.mean_squared"], vec![]);
    let var = g.node("Sub", "age.variance", &[&second, &square], &["age.variance"], vec![]);
    let var = g.node("Relu", "age.variance_clamped", &[&var], &["age.variance_clamped"], vec![]);
    let std = g.node("Sqrt", "age.std", &[&var], &["age.std"], vec![]);
    band_shares(g, &p, bins);
    let median = median_age(g, &p, bins);
    let age = match &net.age_map {
        Some(map) => mapped_age(g, map, &median),
        None => median,
    };
    g.node("Reshape", OUTPUT_AGE, &[&age, flat], &[OUTPUT_AGE], vec![]);
    g.node("Reshape", OUTPUT_AGE_STD, &[&std, flat], &[OUTPUT_AGE_STD], vec![]);
}

/// A regression head: the age, averaged over views, through the age map when there is one.
fn age_regression_output(g: &mut Graph, net: &FoldedNet, age_out: &str, flat: &str) {
    let age = g.node("Reshape", "age.flat", &[age_out, flat], &["age.flat"], vec![]);
    let age = average_views(g, net.mirror, &age, None);
    let age = match &net.age_map {
        Some(map) => {
            let column = g.init_i64("shape.column", &[2], &[-1, 1]);
            let age = g.node("Reshape", "age.column", &[&age, &column], &["age.column"], vec![]);
            mapped_age(g, map, &age)
        }
        None => age,
    };
    g.node("Reshape", OUTPUT_AGE, &[&age, flat], &[OUTPUT_AGE], vec![]);
}

/// Writes the model file; returns its bytes.
pub fn write(model: &ModelProto, path: &Path) -> Result<Vec<u8>> {
    let bytes = model.encode_to_vec();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    // Whole or not at all: a board never finds half a model where a model was.
    write_atomically(path, |out| Ok(out.write_all(&bytes)?))?;
    Ok(bytes)
}

/// Largest differences between two sets of predictions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Agreement {
    pub max_age_diff: f32,
    pub max_female_diff: f32,
    pub faces: usize,
}

pub fn compare(a: &[Prediction], b: &[Prediction]) -> Agreement {
    let mut agreement = Agreement { faces: a.len().min(b.len()), ..Default::default() };
    for (x, y) in a.iter().zip(b) {
        agreement.max_age_diff = agreement.max_age_diff.max((x.age - y.age).abs());
        agreement.max_female_diff = agreement.max_female_diff.max((x.female - y.female).abs());
    }
    agreement
}

/// Runs `crops` through an exported file with the board's own code.
pub fn predict_with_device(model: &AgeGenderModel, set: &CropSet) -> Result<Vec<Prediction>> {
    let mut out = Vec::with_capacity(set.len());
    for crops in set.model_crop_batches(64) {
        out.extend(model.predict(&crops)?.into_iter().map(|e| Prediction { age: e.age, female: e.female }));
    }
    Ok(out)
}

/// Loads the written file back with the device library and checks that tract and candle agree
/// on the crops of `set` within `tolerance`.
pub fn verify_against_candle(
    bytes: &[u8],
    label: &str,
    model: &Model,
    mirror: bool,
    set: &CropSet,
    device: &Device,
    tolerance: f32,
) -> Result<Agreement> {
    let exported = AgeGenderModel::from_bytes(bytes, label)?;
    let ours = model.predict_mirrored(set, device, mirror)?;
    let theirs = predict_with_device(&exported, set)?;
    let agreement = compare(&ours, &theirs);
    if agreement.max_age_diff > tolerance || agreement.max_female_diff > tolerance {
        bail!(
            "{label}: tract and candle disagree on {} crops: max |age diff| {:.2e}, max |p(female) diff| {:.2e} (limit {tolerance:.0e})",
            agreement.faces,
            agreement.max_age_diff,
            agreement.max_female_diff
        );
    }
    Ok(agreement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_split_reads_back_what_it_writes() {
        let split = RecordedSplit { train: 16945, val: 2157, test: 2221, seed: 7 };
        // A data path may itself hold brackets and the words the entry uses.
        let data = "/data/UTK (copy, split seed 3)/faces + /data/fairface/train.csv:0.5";
        assert_eq!(RecordedSplit::parse(&split.describe(data)), Some(split));
        assert_eq!(split.faces(Split::Val), 2157);
    }

    #[test]
    fn recorded_split_refuses_other_entries() {
        for entry in [
            "",
            "UTKFace",
            "UTKFace (16945 train / 2157 val / 2221 test faces)",
            "UTKFace (16945 train / 2157 val faces, split seed 1)",
            "UTKFace (16945 train / 2157 val / 2221 test / 5 extra faces, split seed 1)",
            "UTKFace (x train / 2157 val / 2221 test faces, split seed 1)",
            "UTKFace (16945 train / 2157 val / 2221 test faces, split seed -1)",
        ] {
            assert_eq!(RecordedSplit::parse(entry), None, "{entry:?}");
        }
    }
}
