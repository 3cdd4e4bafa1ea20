//! `bench-train`: the time of one training step on synthetic batches.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::augment::Augment;
use crate::config::{BnStats, TrainConfig};
use crate::crops::CropSettings;
use crate::nn::loss::AgeLoss;
use crate::nn::model::NetConfig;
use crate::nn::optim::AdamW;
use crate::trained::Model;

/// Figures of `bench-train`.
pub struct TrainBench {
    pub step_seconds: Vec<f64>,
    pub images_per_step: usize,
    pub macs_per_image: u64,
}

impl TrainBench {
    pub fn median(&self) -> f64 {
        let mut v = self.step_seconds.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

/// Times forward + backward + optimiser step on synthetic batches.
pub fn bench_steps(net: NetConfig, batch: usize, steps: usize, device: &Device) -> Result<TrainBench> {
    let config = TrainConfig {
        crop: CropSettings {
            input_size: net.input_size,
            margin: 1.0,
            geometry: Default::default(),
            in_scene: false,
        },
        net: net.clone(),
        epochs: 1,
        batch_size: batch,
        augment: Augment::none(),
        age_loss: AgeLoss::Ldl,
        bn_stats: BnStats::Momentum,
        ..TrainConfig::default()
    };
    let model = Model::new(&config, device)?;
    let mut optimizer = AdamW::new(&model.params, config.adamw)?;
    let s = net.input_size as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let pixels: Vec<f32> =
        (0..3 * batch * s * s).map(|_| crate::nn::params::standard_normal(&mut rng)).collect();
    let x = Tensor::from_vec(pixels, (3, batch, s, s), device)?;
    let ages = Tensor::from_vec((0..batch).map(|i| (i * 7 % 90) as f32).collect::<Vec<_>>(), batch, device)?;
    let female = Tensor::from_vec((0..batch).map(|i| (i % 2) as f32).collect::<Vec<_>>(), batch, device)?;
    let mut times = Vec::new();
    for step in 0..steps + 1 {
        let started = Instant::now();
        let out = model.net.forward(&x, true)?;
        let loss = model.loss.compute(&out, &ages, &[], &female)?;
        let grads = loss.total.backward()?;
        optimizer.step(&grads, 1e-3)?;
        let _ = loss.total.to_scalar::<f32>()?; // wait for the device
        if step > 0 {
            times.push(started.elapsed().as_secs_f64()); // step 0 warms caches and allocators
        }
    }
    Ok(TrainBench { step_seconds: times, images_per_step: batch, macs_per_image: net.macs() })
}
