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
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("{label}: tract cannot optimise this ONNX graph"))?;
    Ok(plan)
}
