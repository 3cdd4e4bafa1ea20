//! Reading ONNX files with clear errors: a truncated, foreign or empty file is named and
//! explained before tract ever sees it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

/// Decodes the ONNX protobuf in `bytes`; `label` names the source in errors.
pub fn decode_model(bytes: &[u8], label: &str) -> Result<ModelProto> {
    if bytes.is_empty() {
        bail!("{label}: empty file, not an ONNX model");
    }
    let proto = onnx()
        .proto_model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("{label}: not a readable ONNX model (truncated or not ONNX protobuf)"))?;
    let Some(graph) = proto.graph.as_ref() else {
        bail!("{label}: ONNX file holds no graph");
    };
    if graph.node.is_empty() || graph.input.is_empty() || graph.output.is_empty() {
        bail!("{label}: ONNX graph is empty (no nodes, inputs or outputs): not a model file");
    }
    Ok(proto)
}

/// Refuses weights that cannot be right: non-finite f32 initializers, and quantization scales
/// that are not positive (a corrupt or hand-edited file would otherwise load and give quietly
/// wrong readings, since ReLU and max-pool can swallow NaN).
pub fn check_initializers(proto: &ModelProto, label: &str) -> Result<()> {
    use tract_onnx::pb::tensor_proto::DataType;
    let Some(graph) = proto.graph.as_ref() else { return Ok(()) };
    // Inputs that are scales: position(s) per operator.
    let mut scales = std::collections::HashSet::new();
    for node in &graph.node {
        let positions: &[usize] = match node.op_type.as_str() {
            "QuantizeLinear" | "DequantizeLinear" => &[1],
            "QLinearConv" | "QLinearMatMul" => &[1, 4, 6],
            _ => &[],
        };
        for &p in positions {
            if let Some(name) = node.input.get(p) {
                scales.insert(name.as_str());
            }
        }
    }
    for t in &graph.initializer {
        if t.data_type != DataType::Float as i32 {
            continue;
        }
        let values = f32_values(t);
        if values.iter().any(|v| !v.is_finite()) {
            bail!(
                "{label}: tensor {} holds non-finite values: corrupt weights or quantization scales?",
                t.name
            );
        }
        if scales.contains(t.name.as_str()) && values.iter().any(|v| *v <= 0.0) {
            bail!(
                "{label}: quantization scale {} is not positive: corrupt weights or quantization scales?",
                t.name
            );
        }
    }
    Ok(())
}

/// The values of an f32 initializer, stored as raw little-endian bytes or as `float_data`.
pub fn f32_values(t: &tract_onnx::pb::TensorProto) -> Vec<f32> {
    if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// Reads and decodes an ONNX file.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode_model(&bytes, &path.display().to_string())
}

/// The file's `metadata_props` as a sorted map.
pub fn metadata(proto: &ModelProto) -> BTreeMap<String, String> {
    proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect()
}

/// Builds an optimised, runnable tract plan from a decoded proto.
pub fn runnable(
    proto: &ModelProto,
    input_fact: Option<InferenceFact>,
    label: &str,
) -> Result<Arc<TypedRunnableModel>> {
    let mut model = onnx()
        .model_for_proto_model(proto)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("{label}: tract cannot load this ONNX graph"))?;
    if let Some(fact) = input_fact {
        model = model.with_input_fact(0, fact).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    }
    let plan = model.into_optimized().and_then(|m| m.into_runnable()).map_err(|e| {
        let text = format!("{e:#}");
        // tract parses operators it does not know as `Unimplemented(Op)` and fails later;
        // name the operator instead of the translation step.
        match text.split("Unimplemented(").nth(1).and_then(|rest| rest.split(')').next()) {
            Some(op) => anyhow::anyhow!(
                "{label}: tract cannot load this ONNX graph: operator {op} is not supported ({text})"
            ),
            None => anyhow::anyhow!("{label}: tract cannot optimise this ONNX graph: {text}"),
        }
    })?;
    Ok(plan)
}
