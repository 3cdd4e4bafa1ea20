//! Post-training int8 quantization, calibrated on real crops with the runtime that will run
//! the file (tract).
//!
//! Two forms are written:
//! - **QDQ** (default): int8 weights, per output channel, symmetric, each behind a
//!   `DequantizeLinear`; activations pass through `QuantizeLinear`/`DequantizeLinear` pairs
//!   (uint8, per tensor) at every conv and head input. tract folds the weights back to f32 and
//!   runs f32 kernels: a 4x smaller file at f32 speed, with int8 rounding in every activation.
//! - **QOperator**: `QLinearConv` (int8 weights per output channel, ReLU fused by a zero
//!   point of 0) and `QLinearMatMul`, uint8 activations per tensor end to end through the
//!   trunk: integer kernels, which are slow on x86 tract and unmeasured on ARM (see README).

use anyhow::{Result, bail, ensure};
use faceage_device::ModelContract;
use faceage_device::age_gender::input_tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use super::graph::{Dim, Graph, attr_int};
use super::{
    Dense, Encoding, FoldedNet, INPUT_NAME, float_dense, float_trunk, max_pool_attributes, pool_features,
};

/// How activation ranges are chosen from the calibration crops.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Calibration {
    /// The full observed range.
    Minmax,
    /// The 99.99th percentile of each tensor's magnitudes: rare outliers are clipped so the
    /// common values get finer steps.
    Percentile,
}

const PERCENTILE: f64 = 0.9999;

/// Observed value range of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    /// uint8 scale and zero point covering this range (which always includes 0).
    pub fn uint8(&self) -> (f32, u8) {
        let (min, max) = (self.min.min(0.0), self.max.max(0.0));
        let scale = ((max - min) / 255.0).max(1e-8);
        let zero = (-min / scale).round().clamp(0.0, 255.0) as u8;
        (scale, zero)
    }
}

/// Ranges of every tensor the quantized graphs need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ranges {
    /// Input of each conv (the network input first).
    pub conv_inputs: Vec<Range>,
    /// Output of each conv after its ReLU.
    pub conv_outputs: Vec<Range>,
    /// The pooled features entering the heads.
    pub features: Range,
    /// `features @ W^T` of the age and the gender head, before the bias.
    pub age_product: Range,
    pub gender_product: Range,
}

/// Measures activation ranges by running an f32 copy of the graph, with every needed tensor
/// as an extra output, through tract on `crops`.
pub fn calibrate(
    net: &FoldedNet,
    contract: &ModelContract,
    crops: &[RgbImage],
    method: Calibration,
) -> Result<Ranges> {
    ensure!(!crops.is_empty(), "calibration needs at least one crop");
    let (proto, taps) = calibration_graph(net, contract)?;
    // One crop per run: a fixed input shape lets tract infer the extra outputs' shapes.
    let s = net.input_size as usize;
    let fact = f32::fact([1, 3, s, s]).into();
    let plan = faceage_device::onnx::runnable(&proto, Some(fact), "calibration graph")?;
    let run_all = |visit: &mut dyn FnMut(usize, &[f32])| -> Result<()> {
        for chunk in crops.chunks(1) {
            let input = input_tensor(chunk, contract)?;
            let outputs = plan.run(tvec!(input.into()))?;
            for (i, t) in outputs.iter().enumerate() {
                let view = t.to_plain_array_view::<f32>()?;
                let values: Vec<f32> = view.iter().copied().collect();
                visit(i, &values);
            }
        }
        Ok(())
    };
    let mut ranges = vec![Range { min: f32::INFINITY, max: f32::NEG_INFINITY }; taps.len()];
    run_all(&mut |i, values| {
        for &v in values {
            ranges[i].min = ranges[i].min.min(v);
            ranges[i].max = ranges[i].max.max(v);
        }
    })?;
    if method == Calibration::Percentile {
        clip_at_percentile(&mut ranges, &run_all)?;
    }
    for (r, t) in ranges.iter().zip(&taps) {
        ensure!(r.min.is_finite() && r.max.is_finite(), "calibration: tensor {t} has no finite values");
    }
    let n = net.convs.len();
    Ok(Ranges {
        conv_inputs: ranges[..n].to_vec(),
        conv_outputs: ranges[n..2 * n].to_vec(),
        features: ranges[2 * n],
        age_product: ranges[2 * n + 1],
        gender_product: ranges[2 * n + 2],
    })
}

/// The f32 net with every tensor calibration measures as an output: each convolution's input
/// and activated output, the pooled features and the two heads' products, in that order.
fn calibration_graph(net: &FoldedNet, contract: &ModelContract) -> Result<(ModelProto, Vec<String>)> {
    let mut g = Graph::default();
    let s = net.input_size as i64;
    g.inputs
        .push(Graph::value_info(INPUT_NAME, &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)]));
    let f32_weight =
        |g: &mut Graph, name: &str, dims: &[usize], values: &[f32]| Ok(g.init_f32(name, dims, values));
    let same = |_: &mut Graph, t: &str, _: usize| Ok(t.to_string());
    let (features, inputs) = float_trunk(&mut g, net, INPUT_NAME, &f32_weight, &same)?;
    let mut taps: Vec<String> = inputs[..net.convs.len()].to_vec();
    taps.extend(net.convs.iter().map(|c| format!("{}.relu", c.name)));
    taps.push(features.clone());
    for head in [&net.age_head, &net.gender_head] {
        let w = g.init_f32(
            &format!("{}.weight_t", head.name),
            &[head.inputs, head.outputs],
            &transpose(&head.weight, head.outputs, head.inputs),
        );
        taps.push(g.node(
            "MatMul",
            &format!("{}.product", head.name),
            &[&features, &w],
            &[&format!("{}.product", head.name)],
            vec![],
        ));
    }
    for t in &taps {
        g.outputs.push(Graph::value_info(t, &[]));
    }
    // Shapes of extra outputs are left to tract to infer.
    for o in g.outputs.iter_mut() {
        if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
            o.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
    }
    Ok((g.into_model("calibration", contract.to_metadata()), taps))
}

/// Runs every calibration crop, handing each measured tensor (by index) to the visitor.
type RunAll<'a> = dyn Fn(&mut dyn FnMut(usize, &[f32])) -> Result<()> + 'a;

/// Second pass: a histogram of magnitudes per tensor, then both ends clipped at the
/// percentile (the network input, tensor 0, keeps its exact, known range).
fn clip_at_percentile(ranges: &mut [Range], run_all: &RunAll) -> Result<()> {
    const BINS: usize = 4096;
    let limits: Vec<f32> = ranges.iter().map(|r| r.min.abs().max(r.max.abs()).max(1e-12)).collect();
    let mut hist = vec![vec![0u64; BINS]; ranges.len()];
    run_all(&mut |i, values| {
        for &v in values {
            let bin = ((v.abs() / limits[i]) * (BINS - 1) as f32) as usize;
            hist[i][bin.min(BINS - 1)] += 1;
        }
    })?;
    for (i, r) in ranges.iter_mut().enumerate().skip(1) {
        let total: u64 = hist[i].iter().sum();
        let mut seen = 0;
        let mut cut = BINS - 1;
        for (b, &n) in hist[i].iter().enumerate() {
            seen += n;
            if seen as f64 >= PERCENTILE * total as f64 {
                cut = b;
                break;
            }
        }
        let clip = limits[i] * (cut + 1) as f32 / BINS as f32;
        r.min = r.min.max(-clip);
        r.max = r.max.min(clip);
    }
    Ok(())
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Symmetric int8 quantization of `values` in `groups` equal groups (one per output channel,
/// or one for the whole tensor): the scales and the int8 values.
pub fn quantize_symmetric(values: &[f32], groups: usize) -> (Vec<f32>, Vec<i8>) {
    let per = values.len() / groups.max(1);
    let mut scales = Vec::with_capacity(groups);
    let mut q = Vec::with_capacity(values.len());
    for chunk in values.chunks(per.max(1)) {
        let max = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(chunk.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
    }
    (scales, q)
}

fn scalar_f32(g: &mut Graph, name: &str, v: f32) -> String {
    g.init_f32(name, &[], &[v])
}

/// QuantizeLinear + DequantizeLinear of an activation, uint8 per tensor.
fn fake_quantize(g: &mut Graph, tensor: &str, range: &Range) -> String {
    let (scale, zero) = range.uint8();
    let s = scalar_f32(g, &format!("{tensor}.scale"), scale);
    let z = g.init_u8(&format!("{tensor}.zero_point"), &[], &[zero]);
    let q = g.node(
        "QuantizeLinear",
        &format!("{tensor}.quantize"),
        &[tensor, &s, &z],
        &[&format!("{tensor}.q")],
        vec![],
    );
    g.node(
        "DequantizeLinear",
        &format!("{tensor}.dequantize"),
        &[&q, &s, &z],
        &[&format!("{tensor}.dq")],
        vec![],
    )
}

/// int8 weights per output channel behind a DequantizeLinear.
fn per_channel_weight(g: &mut Graph, name: &str, dims: &[usize], values: &[f32]) -> Result<String> {
    let channels = dims[0];
    let (scales, q) = quantize_symmetric(values, channels);
    let qn = g.init_i8(&format!("{name}.q"), dims, &q);
    let s = g.init_f32(&format!("{name}.scale"), &[channels], &scales);
    let z = g.init_i8(&format!("{name}.zero_point"), &[channels], &vec![0; channels]);
    Ok(g.node(
        "DequantizeLinear",
        &format!("{name}.dequantize"),
        &[&qn, &s, &z],
        &[name],
        vec![attr_int("axis", 0)],
    ))
}

/// The QDQ form.
pub struct Qdq {
    pub ranges: Ranges,
}

impl Encoding for Qdq {
    fn trunk(&self, g: &mut Graph, net: &FoldedNet, input: &str) -> Result<String> {
        let ranges = &self.ranges;
        let activation = |g: &mut Graph, t: &str, layer: usize| -> Result<String> {
            let range =
                if layer < ranges.conv_inputs.len() { &ranges.conv_inputs[layer] } else { &ranges.features };
            Ok(fake_quantize(g, t, range))
        };
        Ok(float_trunk(g, net, input, &per_channel_weight, &activation)?.0)
    }

    fn dense(&self, g: &mut Graph, d: &Dense, input: &str) -> Result<String> {
        float_dense(g, d, input, &per_channel_weight)
    }
}

/// The QOperator form.
pub struct QOperator {
    pub ranges: Ranges,
}

impl QOperator {
    fn product_range(&self, d: &Dense) -> Result<&Range> {
        match d.name.as_str() {
            "age_head" => Ok(&self.ranges.age_product),
            "gender_head" => Ok(&self.ranges.gender_product),
            other => bail!("no calibrated range for head {other}"),
        }
    }
}

impl Encoding for QOperator {
    fn trunk(&self, g: &mut Graph, net: &FoldedNet, input: &str) -> Result<String> {
        let r = &self.ranges;
        let (s_in, z_in) = r.conv_inputs[0].uint8();
        let s = scalar_f32(g, "faces.scale", s_in);
        let z = g.init_u8("faces.zero_point", &[], &[z_in]);
        let mut x = g.node("QuantizeLinear", "faces.quantize", &[input, &s, &z], &["faces.q"], vec![]);
        let (mut x_scale, mut x_zero) = (s, z);
        let mut x_scale_value = s_in;
        for (i, conv) in net.convs.iter().enumerate() {
            // Weights per output channel: a depthwise filter's range differs a lot from its
            // neighbours', and one scale for all of them rounds the small ones to nothing.
            let channels = conv.out_channels;
            let (scales, q) = quantize_symmetric(&conv.weight, channels);
            let w = g.init_i8(&format!("{}.weight.q", conv.name), &conv.weight_dims(), &q);
            let w_s = g.init_f32(&format!("{}.weight.scale", conv.name), &[channels], &scales);
            let w_z = g.init_i8(&format!("{}.weight.zero_point", conv.name), &[channels], &vec![0; channels]);
            // Bias in int32 at scale x_scale * w_scale, as QLinearConv wants.
            let bias: Vec<i32> = conv
                .bias
                .iter()
                .zip(&scales)
                .map(|(b, w_scale)| (b / (x_scale_value * w_scale)).round() as i32)
                .collect();
            let b = g.init_i32(&format!("{}.bias.q", conv.name), &[channels], &bias);
            // Output zero point 0 over [0, max]: negative outputs clamp to 0, which is the ReLU.
            let (y_scale_value, _) = Range { min: 0.0, max: r.conv_outputs[i].max }.uint8();
            let y_s = scalar_f32(g, &format!("{}.out.scale", conv.name), y_scale_value);
            let y_z = g.init_u8(&format!("{}.out.zero_point", conv.name), &[], &[0]);
            x = g.node(
                "QLinearConv",
                &conv.name,
                &[&x, &x_scale, &x_zero, &w, &w_s, &w_z, &y_s, &y_z, &b],
                &[&format!("{}.relu.q", conv.name)],
                conv.attributes(),
            );
            if conv.pool_after {
                let pooled = format!("{}.pool.q", conv.name);
                x = g.node("MaxPool", &pooled, &[&x], &[&pooled], max_pool_attributes());
            }
            (x_scale, x_zero, x_scale_value) = (y_s, y_z, y_scale_value);
        }
        let dq =
            g.node("DequantizeLinear", "trunk.dequantize", &[&x, &x_scale, &x_zero], &["trunk.dq"], vec![]);
        Ok(pool_features(g, net, &dq))
    }

    fn dense(&self, g: &mut Graph, d: &Dense, input: &str) -> Result<String> {
        let (f_scale, f_zero) = self.ranges.features.uint8();
        let a_s = scalar_f32(g, &format!("{}.in.scale", d.name), f_scale);
        let a_z = g.init_u8(&format!("{}.in.zero_point", d.name), &[], &[f_zero]);
        let a = g.node(
            "QuantizeLinear",
            &format!("{}.in.quantize", d.name),
            &[input, &a_s, &a_z],
            &[&format!("{}.in.q", d.name)],
            vec![],
        );
        let (scales, q) = quantize_symmetric(&transpose(&d.weight, d.outputs, d.inputs), 1);
        let b = g.init_i8(&format!("{}.weight_t.q", d.name), &[d.inputs, d.outputs], &q);
        let b_s = scalar_f32(g, &format!("{}.weight_t.scale", d.name), scales[0]);
        let b_z = g.init_i8(&format!("{}.weight_t.zero_point", d.name), &[], &[0]);
        let (y_scale, y_zero) = self.product_range(d)?.uint8();
        let y_s = scalar_f32(g, &format!("{}.product.scale", d.name), y_scale);
        let y_z = g.init_u8(&format!("{}.product.zero_point", d.name), &[], &[y_zero]);
        let y = g.node(
            "QLinearMatMul",
            &format!("{}.product", d.name),
            &[&a, &a_s, &a_z, &b, &b_s, &b_z, &y_s, &y_z],
            &[&format!("{}.product.q", d.name)],
            vec![],
        );
        let y = g.node(
            "DequantizeLinear",
            &format!("{}.product.dequantize", d.name),
            &[&y, &y_s, &y_z],
            &[&format!("{}.product.dq", d.name)],
            vec![],
        );
        let bias = g.init_f32(&format!("{}.bias", d.name), &[d.outputs], &d.bias);
        Ok(g.node("Add", &d.name, &[&y, &bias], &[&format!("{}.out", d.name)], vec![]))
    }
}

/// A one-line description of a quantized file, for its contract.
pub fn describe(format: faceage_device::QuantFormat, method: Calibration, crops: usize) -> String {
    let weights = match format {
        faceage_device::QuantFormat::Int8Qdq => "int8 weights per output channel (symmetric)",
        _ => "int8 conv weights per output channel, head weights per tensor (symmetric)",
    };
    format!(
        "{weights}; uint8 activations per tensor, ranges from {} over {crops} training crops run through tract",
        match method {
            Calibration::Minmax => "min/max".to_string(),
            Calibration::Percentile => format!("the {:.2}th percentile", PERCENTILE * 100.0),
        }
    )
}

/// Guards against writing a quantized file that is mostly not int8 (a regression that would
/// silently ship an f32-sized file).
pub fn check_size(bytes: usize, parameters: usize) -> Result<()> {
    ensure!(
        bytes < parameters * 2 + 64 * 1024,
        "quantized file is {bytes} bytes for {parameters} parameters: weights were not stored as int8"
    );
    Ok(())
}

/// Loads calibration crops (the exact board crops) from a crop set.
pub fn calibration_crops(set: &crate::crops::CropSet, count: usize) -> Result<Vec<RgbImage>> {
    ensure!(!set.is_empty(), "no crops to calibrate on");
    let step = (set.len() / count.max(1)).max(1);
    Ok((0..set.len()).step_by(step).take(count).map(|i| set.model_crop(i)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_quantization_round_trips_within_half_a_step() {
        let values = [0.5f32, -1.0, 0.25, 0.0, 2.0, -0.1];
        let (scales, q) = quantize_symmetric(&values, 2);
        assert_eq!(scales.len(), 2);
        assert!((scales[0] - 1.0 / 127.0).abs() < 1e-7 && (scales[1] - 2.0 / 127.0).abs() < 1e-7);
        for (i, (&v, &qi)) in values.iter().zip(&q).enumerate() {
            let back = qi as f32 * scales[i / 3];
            assert!((back - v).abs() <= scales[i / 3] / 2.0 + 1e-7, "{v} -> {back}");
        }
        assert_eq!(q[1], -127);
    }

    #[test]
    fn uint8_parameters_cover_the_range_and_zero_exactly() {
        let (scale, zero) = Range { min: 0.0, max: 6.0 }.uint8();
        assert_eq!(zero, 0);
        assert!((scale * 255.0 - 6.0).abs() < 1e-5);
        let (scale, zero) = Range { min: -2.0, max: 2.0 }.uint8();
        assert!((zero as f32 * scale - 2.0).abs() < scale);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        assert_eq!(transpose(&[1., 2., 3., 4., 5., 6.], 2, 3), vec![1., 4., 2., 5., 3., 6.]);
    }
}
