//! Exponential moving average of the weights (Polyak averaging, as in timm's `ModelEma`).
//!
//! Each optimiser step moves the weights by a noisy amount; the validation figures of the last
//! weights of an epoch jump by a few tenths of a year from one epoch to the next. The average
//! over the last ~`1 / (1 - decay)` steps sits nearer the middle of that noise. It is what the
//! run evaluates, keeps as best and exports; training itself goes on with the plain weights.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use candle_core::Tensor;

use super::params::Params;

pub struct WeightAverage {
    decay: f64,
    /// One averaged tensor per parameter, batch-norm running statistics included.
    averaged: BTreeMap<String, Tensor>,
}

impl WeightAverage {
    /// Starts at the current weights.
    pub fn new(decay: f64, params: &Params) -> Result<Self> {
        let averaged =
            params.tensors().into_iter().map(|(k, t)| Ok((k, t.detach().copy()?))).collect::<Result<_>>()?;
        Ok(Self { decay, averaged })
    }

    /// The decay at optimiser step `step` (1-based): short at first, so the average does not
    /// drag the random initial weights along for thousands of steps.
    pub fn decay_at(&self, step: u64) -> f64 {
        self.decay.min((1 + step) as f64 / (10 + step) as f64)
    }

    /// Folds the weights after optimiser step `step` into the average.
    pub fn update(&mut self, params: &Params, step: u64) -> Result<()> {
        let d = self.decay_at(step);
        for (name, current) in params.tensors() {
            let averaged = self.averaged.get_mut(&name).with_context(|| format!("no average of {name}"))?;
            // Detached: arithmetic on a variable records its inputs for backprop, so each new
            // average would hold the previous one and the chain would grow by the whole model
            // every step (24 GB by epoch 18 before this).
            *averaged = (averaged.affine(d, 0.0)? + current.detach().affine(1.0 - d, 0.0)?)?;
        }
        Ok(())
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.averaged.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Replaces the average (from a checkpoint); every parameter must be there.
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>, label: &str) -> Result<()> {
        for (name, averaged) in &mut self.averaged {
            let t = tensors.get(name).with_context(|| format!("{label}: no averaged weights of {name}"))?;
            *averaged = t.clone();
        }
        Ok(())
    }

    /// Runs `f` with the averaged weights in `params`, then puts the trained ones back.
    pub fn with_averaged<T>(&self, params: &Params, f: impl FnOnce() -> Result<T>) -> Result<T> {
        // Deep copies: `assign` writes into the variables' storage, which `tensors()` shares.
        let trained: HashMap<String, Tensor> =
            params.tensors().into_iter().map(|(k, t)| Ok((k, t.detach().copy()?))).collect::<Result<_>>()?;
        params.assign(&self.tensors(), "weight average")?;
        let result = f();
        params.assign(&trained, "trained weights")?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::params::Role;
    use candle_core::Device;

    fn values(params: &Params) -> Vec<f32> {
        params.get("w").unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn the_average_follows_the_weights_and_is_swapped_in_and_out() {
        let mut params = Params::new(0, &Device::Cpu);
        let w = params.constant("w", &[2], 0.0, Role::Weight).unwrap();
        let mut average = WeightAverage::new(0.9, &params).unwrap();
        assert_eq!(average.decay_at(1), 2.0 / 11.0, "short memory at first");
        assert_eq!(average.decay_at(1000), 0.9);

        w.set(&Tensor::new(&[10f32, -10.0], &Device::Cpu).unwrap()).unwrap();
        average.update(&params, 1000).unwrap();
        w.set(&Tensor::new(&[20f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        average.update(&params, 1001).unwrap();
        // 0.9 * (0.9 * 0 + 0.1 * 10) + 0.1 * 20 = 2.9; 0.9 * -1 + 0 = -0.9
        let expected = [2.9f32, -0.9];
        let got = average.tensors()["w"].to_vec1::<f32>().unwrap();
        assert!(got.iter().zip(expected).all(|(g, e)| (g - e).abs() < 1e-5), "{got:?}");

        assert!(
            average.tensors().values().all(|t| !t.track_op()),
            "the average must not hold a backprop graph: it would keep every earlier average alive"
        );

        let inside = average.with_averaged(&params, || Ok(values(&params))).unwrap();
        assert_eq!(inside, got, "the model sees the average inside");
        assert_eq!(values(&params), vec![20.0, 0.0], "and its own weights again after");
    }
}
