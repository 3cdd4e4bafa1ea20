//! Fine-tuning: a run that starts from a model file's weights (`train --init FILE.onnx`)
//! instead of random ones. The shipped net learnt from eight teachers over ten hours; adapting
//! it to new crops or new augmentation costs a few epochs, where training again costs all.
//!
//! A file holds the inference form of the net: each batch norm folded into its convolution
//! (`W' = W g / sqrt(v + eps)`, bias `b'`). Unfolding sets the convolution to `W'` and its batch
//! norm to the identity on what `W'` produces: `gamma = sqrt(var + eps)`, `beta = mean + b'`,
//! with `mean` and `var` the statistics of `W' x` over plain training crops. In evaluation mode
//! that reads exactly as the file does whatever the statistics; in training mode, where each
//! batch is normalised by its own statistics, it reads as the file does when the statistics are
//! the ones training sees, so they are measured layer after layer (each pass makes one more
//! layer's input right).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor, Var};
use faceage_device::{AgeGenderModel, ModelContract};

use crate::config::{TrainConfig, ensure_same_split, file_split_seed};
use crate::crops::CropSet;
use crate::export::{compare, predict_with_device};
use crate::nn::fused::BN_EPS;
use crate::trained::Model;

/// Readings of the unfolded net and of the file may differ by this much (years and
/// probability): float rounding, nothing more.
const AGREEMENT: f32 = 2e-3;

/// What [`start_from_file`] did, for the log.
#[derive(Debug)]
pub struct WarmStart {
    pub tensors: usize,
    /// Faces the unfolded net and the file were compared on, and how far apart they read.
    pub faces: usize,
    pub max_age_diff: f32,
    pub max_female_diff: f32,
}

/// Loads the weights of the f32 model file `path` into `model` (a fresh net of `config`),
/// its batch norms unfolded on `bn_crops` (plain training crops), and checks that the net then
/// reads `bn_crops` as the file does through the board's own library.
pub fn start_from_file(
    model: &Model,
    path: &Path,
    config: &TrainConfig,
    bn_crops: &CropSet,
    device: &Device,
) -> Result<WarmStart> {
    let label = format!("--init {}", path.display());
    let bytes = std::fs::read(path).with_context(|| format!("{label}: cannot read"))?;
    let proto = faceage_device::onnx::decode_model(&bytes, &label)?;
    let contract = ModelContract::from_metadata(&faceage_device::onnx::metadata(&proto), &label)?;
    ensure_same_split(&label, file_split_seed(&contract, &label)?, config.seed)?;
    ensure!(
        contract.input_size == config.net.input_size,
        "{label}: reads {0}x{0} faces, this run's net {1}x{1} (--size)",
        contract.input_size,
        config.net.input_size
    );
    let graph = proto.graph.as_ref().with_context(|| format!("{label}: the file holds no graph"))?;
    let tensors: HashMap<&str, Vec<f32>> = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == tract_onnx::pb::tensor_proto::DataType::Float as i32)
        .map(|t| (t.name.as_str(), faceage_device::onnx::f32_values(t)))
        .collect();
    let mirrored = reads_mirrored(graph);
    let has_age_map = tensors.keys().any(|name| name.starts_with("age.map."));
    let take = |name: &str, like: &Var| -> Result<Tensor> {
        let values = tensors.get(name).with_context(|| {
            format!(
                "{label}: no f32 tensor {name}: not a file of this net (--net, --pooling), or an \
                 int8 file (start from the f32 one)"
            )
        })?;
        ensure!(
            values.len() == like.elem_count(),
            "{label}: {name} holds {} values, this run's net has {} there (--net, --pooling, --size)",
            values.len(),
            like.elem_count()
        );
        Ok(Tensor::from_vec(values.clone(), like.shape(), device)?)
    };

    let convs: Vec<_> = model.net.convs().collect();
    let mut folded_bias = Vec::with_capacity(convs.len());
    for conv in &convs {
        conv.weight.set(&take(&format!("{}.weight", conv.name), &conv.weight)?)?;
        let bias = take(&format!("{}.bias", conv.name), &conv.beta)?;
        // The identity in evaluation mode until the statistics are measured.
        let channels = bias.elem_count();
        conv.gamma.set(&Tensor::ones(channels, candle_core::DType::F32, device)?)?;
        conv.running_mean.set(&Tensor::zeros(channels, candle_core::DType::F32, device)?)?;
        conv.running_var.set(&Tensor::full(1.0 - BN_EPS, channels, device)?)?;
        conv.beta.set(&bias)?;
        folded_bias.push(bias);
    }
    for head in [&model.net.age_head, &model.net.gender_head] {
        head.weight.set(&take(&format!("{}.weight", head.name), &head.weight)?)?;
        head.bias.set(&take(&format!("{}.bias", head.name), &head.bias)?)?;
    }
    if let Some(pool) = &model.net.pool_weight {
        pool.set(&take("pool.weight", pool)?)?;
    }
    let loaded = 2 * convs.len() + 4 + usize::from(model.net.pool_weight.is_some());
    for _ in &convs {
        model.recalibrate_batch_norm(bn_crops, device)?;
        for (conv, bias) in convs.iter().zip(&folded_bias) {
            conv.gamma.set(&(conv.running_var.as_tensor() + BN_EPS as f64)?.sqrt()?)?;
            conv.beta.set(&(conv.running_mean.as_tensor() + bias)?)?;
        }
    }

    let file = AgeGenderModel::from_bytes(&bytes, &label)?;
    let sample = bn_crops.subset(&(0..bn_crops.len().min(64)).collect::<Vec<_>>());
    let ours = model.predict_mirrored(&sample, device, mirrored)?;
    let theirs = predict_with_device(&file, &sample)?;
    let agreement = compare(&ours, &theirs);
    // A file with an age map reads the net's age through it; the net starts without one (the
    // run fits its own), so only p(female) can be compared there.
    let age_off = !has_age_map && agreement.max_age_diff > AGREEMENT;
    if age_off || agreement.max_female_diff > AGREEMENT {
        bail!(
            "{label}: the unfolded net does not read as the file does (max |age diff| {:.2e}, max \
             |p(female) diff| {:.2e} on {} crops): not a file this trainer wrote for this net",
            agreement.max_age_diff,
            agreement.max_female_diff,
            agreement.faces
        );
    }
    Ok(WarmStart {
        tensors: loaded,
        faces: agreement.faces,
        max_age_diff: if has_age_map { f32::NAN } else { agreement.max_age_diff },
        max_female_diff: agreement.max_female_diff,
    })
}

/// Whether the file reads each face twice, as is and mirrored (the exporter's `mirror` node).
fn reads_mirrored(graph: &tract_onnx::pb::GraphProto) -> bool {
    graph.node.iter().any(|n| n.name == "mirror" && n.op_type == "Slice")
}
