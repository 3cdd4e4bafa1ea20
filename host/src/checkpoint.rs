//! Checkpoints: one safetensors file holding the weights, the optimiser moments, the weight
//! average (with `--ema`) and, in its metadata, where training stood. safetensors writes
//! through a temporary file and renames it, so a killed run leaves the previous checkpoint
//! intact.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Where training stands; stored in checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Next epoch to run (0-based) and next batch within it.
    pub epoch: usize,
    pub batch: usize,
    pub optimizer_step: u64,
    pub best_score: Option<f64>,
    pub best_epoch: Option<usize>,
    pub stale_epochs: usize,
}

const STATE_KEY: &str = "faceage.train_state";
const OPTIM_PREFIX: &str = "optim.";
const AVERAGE_PREFIX: &str = "average.";

pub struct Checkpoint {
    pub params: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    /// The weight average ([`crate::nn::average`]); empty when the run keeps none.
    pub averaged: HashMap<String, Tensor>,
    pub state: Option<TrainState>,
}

pub fn save(
    path: &Path,
    params: &HashMap<String, Tensor>,
    optimizer: Option<&HashMap<String, Tensor>>,
    averaged: Option<&HashMap<String, Tensor>>,
    state: &impl Serialize,
) -> Result<()> {
    let mut all: Vec<(String, Tensor)> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (prefix, tensors) in [(OPTIM_PREFIX, optimizer), (AVERAGE_PREFIX, averaged)] {
        all.extend(tensors.into_iter().flatten().map(|(k, v)| (format!("{prefix}{k}"), v.clone())));
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    safetensors::serialize_to_file(all, Some(metadata), path)
        .with_context(|| format!("{}: cannot write checkpoint", path.display()))
}

pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{}: not a safetensors checkpoint", path.display()))?;
    let state = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .map(|json| serde_json::from_str::<TrainState>(json))
        .transpose()
        .with_context(|| format!("{}: unreadable training state", path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("{}: unreadable tensors", path.display()))?;
    let (mut params, mut optimizer, mut averaged) = (HashMap::new(), HashMap::new(), HashMap::new());
    for (name, t) in tensors {
        if let Some(rest) = name.strip_prefix(OPTIM_PREFIX) {
            optimizer.insert(rest.to_string(), t);
        } else if let Some(rest) = name.strip_prefix(AVERAGE_PREFIX) {
            averaged.insert(rest.to_string(), t);
        } else {
            params.insert(name, t);
        }
    }
    Ok(Checkpoint { params, optimizer, averaged, state })
}
