//! AdamW with decoupled weight decay on weights only (not on biases or norm parameters), and
//! a state that is saved with checkpoints so `--resume` continues exactly.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::params::Params;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 5e-4 }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    /// Steps taken, for bias correction.
    pub step: u64,
}

impl AdamW {
    pub fn new(params: &Params, config: AdamWConfig) -> Result<Self> {
        let mut slots = Vec::new();
        for decay in [true, false] {
            for (name, var) in params.trainable(decay) {
                let zeros = var.zeros_like()?;
                slots.push(Slot { name, var, decay, m: zeros.clone(), v: zeros });
            }
        }
        Ok(Self { slots, config, step: 0 })
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let correct1 = 1.0 - beta1.powi(self.step as i32);
        let correct2 = 1.0 - beta2.powi(self.step as i32);
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.var) else { continue };
            // candle detaches the gradients it passes along, but not the sum it keeps for a
            // variable that feeds an op directly (candle's own conv2d, used off the CPU): that
            // sum still points into the forward graph. Kept in `m`, it would hold every step's
            // activations alive (the first GPU run ran out of 139 GB within an epoch).
            let g = g.detach();
            slot.m = ((&slot.m * beta1)? + (&g * (1.0 - beta1))?)?;
            slot.v = ((&slot.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = ((&slot.m / correct1)? / ((&slot.v / correct2)?.sqrt()? + eps)?)?;
            let decay = if slot.decay { 1.0 - lr * weight_decay } else { 1.0 };
            let next = ((slot.var.as_tensor() * decay)? - (update * lr)?)?;
            slot.var.set(&next)?;
        }
        Ok(())
    }

    /// Moments by parameter name, for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut state = HashMap::new();
        for s in &self.slots {
            state.insert(format!("m.{}", s.name), s.m.clone());
            state.insert(format!("v.{}", s.name), s.v.clone());
        }
        state
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &mut self.slots {
            s.m = state
                .get(&format!("m.{}", s.name))
                .cloned()
                .with_context(|| format!("optimizer state lacks {}", s.name))?;
            s.v = state
                .get(&format!("v.{}", s.name))
                .cloned()
                .with_context(|| format!("optimizer state lacks {}", s.name))?;
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warm-up to `peak`, then cosine decay to `peak * floor` at `total` steps.
pub fn warmup_cosine(step: u64, warmup: u64, total: u64, peak: f64, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (floor + (1.0 - floor) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::params::Role;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        assert!((warmup_cosine(0, 10, 100, 1.0, 0.01) - 0.1).abs() < 1e-9);
        assert!((warmup_cosine(9, 10, 100, 1.0, 0.01) - 1.0).abs() < 1e-9);
        assert!((warmup_cosine(10, 10, 100, 1.0, 0.01) - 1.0).abs() < 1e-9);
        assert!((warmup_cosine(100, 10, 100, 1.0, 0.01) - 0.01).abs() < 1e-9);
        assert!(warmup_cosine(55, 10, 100, 1.0, 0.01) < 0.6);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_decays_only_weights() {
        let mut params = Params::new(0, &Device::Cpu);
        let w = params.constant("w", &[2], 5.0, Role::Weight).unwrap();
        let b = params.constant("b", &[1], 0.0, Role::NoDecay).unwrap();
        let mut opt = AdamW::new(&params, AdamWConfig { weight_decay: 0.0, ..Default::default() }).unwrap();
        for _ in 0..300 {
            let loss = ((w.as_tensor() - 1.0).unwrap().sqr().unwrap().sum_all().unwrap()
                + (b.as_tensor() + 2.0).unwrap().sqr().unwrap().sum_all().unwrap())
            .unwrap();
            opt.step(&loss.backward().unwrap(), 0.05).unwrap();
        }
        let wv = w.to_vec1::<f32>().unwrap();
        assert!((wv[0] - 1.0).abs() < 0.05, "{wv:?}");
        assert!((b.to_vec1::<f32>().unwrap()[0] + 2.0).abs() < 0.05);

        // At a zero gradient, decay shrinks the weight and leaves the bias alone.
        let mut opt = AdamW::new(&params, AdamWConfig { weight_decay: 0.5, ..Default::default() }).unwrap();
        let at_rest =
            |v: &Var| (v.as_tensor() - v.as_tensor().detach()).unwrap().sqr().unwrap().sum_all().unwrap();
        let loss = (at_rest(&w) + at_rest(&b)).unwrap();
        let before_b = b.to_vec1::<f32>().unwrap()[0];
        opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        assert!(w.to_vec1::<f32>().unwrap()[0] < wv[0]);
        assert!((b.to_vec1::<f32>().unwrap()[0] - before_b).abs() < 1e-6);
    }

    #[test]
    fn optimizer_state_holds_no_graph() {
        // `w` feeds a product with a tensor that has a graph of its own, so candle leaves w's
        // gradient attached to that graph (as its CUDA conv2d does with a conv weight).
        let mut params = Params::new(0, &Device::Cpu);
        let w = params.constant("w", &[3], 0.5, Role::Weight).unwrap();
        let v = params.constant("v", &[3], 2.0, Role::Weight).unwrap();
        let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
        for _ in 0..3 {
            let x = (v.as_tensor() * 3.0).unwrap().exp().unwrap();
            let loss = w.as_tensor().mul(&x).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            assert!(
                grads.get(&w).unwrap().track_op(),
                "the case this test is about: a gradient with a graph"
            );
            opt.step(&grads, 0.01).unwrap();
        }
        assert!(
            opt.state().values().all(|t| !t.track_op()),
            "the moments must not hold a backprop graph: they would keep every step's activations alive"
        );
    }
}
