//! A training run's folder: its files, its configuration and its per-epoch record.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_age_mae: f64,
    pub train_gender_accuracy: f64,
    pub val_loss: f64,
    pub val_age_mae: f64,
    pub val_gender_accuracy: f64,
    /// Model selection score: MAE/5 + error%/5, 2.0 exactly at the quality bars; lower is better.
    pub val_score: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Files of a run folder.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("train.json")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.0.join("best.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    pub fn rejected(&self) -> PathBuf {
        self.0.join("rejected.txt")
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn read_config(&self) -> Result<TrainConfig> {
        let path = self.config();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: no training run here (train.json missing)", self.0.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: unreadable", path.display()))
    }

    pub fn read_metrics(&self) -> Result<Vec<EpochRecord>> {
        let text = std::fs::read_to_string(self.metrics()).unwrap_or_default();
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
    }
}
