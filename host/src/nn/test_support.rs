//! Helpers shared by the custom ops' and the net's tests.

use candle_core::{Device, Tensor, Var, backprop::GradStore};

use super::model::{AgeGenderNet, NetConfig};
use super::params::Params;

/// Deterministic pseudo-random values in [-1, 1] (xorshift), so a failure reproduces.
pub fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// The largest absolute element-wise difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// A net of `config` with seeded weights, and a random `[3, 4, S, S]` input batch for it.
pub fn net_and_batch(config: NetConfig, seed: u64) -> (Params, AgeGenderNet, Tensor) {
    let side = config.input_size as usize;
    let mut params = Params::new(seed, &Device::Cpu);
    let net = AgeGenderNet::new(config, &mut params).unwrap();
    (params, net, random(&[3, 4, side, side], seed))
}

/// The sum of |gradient| of `var`; panics naming `what` when it got no gradient at all.
pub fn gradient_size(grads: &GradStore, var: &Var, what: &str) -> f32 {
    let g = grads.get(var).unwrap_or_else(|| panic!("{what} gets no gradient"));
    g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
}
