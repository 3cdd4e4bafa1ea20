//! Named parameters: seeded initialisation, safetensors save and load.
//!
//! candle's CPU device cannot be seeded, so weights are drawn here from a seeded ChaCha RNG
//! to make runs reproducible.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Whether the optimiser updates a parameter, and whether weight decay applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Conv and linear weights: trained, decayed.
    Weight,
    /// Biases and norm scales/shifts: trained, never decayed.
    NoDecay,
    /// Running statistics: saved with the model, not trained.
    Buffer,
}

pub struct Params {
    vars: BTreeMap<String, (Var, Role)>,
    rng: ChaCha8Rng,
    device: Device,
}

impl Params {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self { vars: BTreeMap::new(), rng: ChaCha8Rng::seed_from_u64(seed), device: device.clone() }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn insert(&mut self, name: &str, values: Vec<f32>, shape: &[usize], role: Role) -> Result<Var> {
        if self.vars.contains_key(name) {
            bail!("parameter {name} defined twice");
        }
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)?;
        self.vars.insert(name.to_string(), (var.clone(), role));
        Ok(var)
    }

    /// Normal(0, std) values.
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f32, role: Role) -> Result<Var> {
        let n: usize = shape.iter().product();
        let values = (0..n).map(|_| std * standard_normal(&mut self.rng)).collect();
        self.insert(name, values, shape, role)
    }

    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32, role: Role) -> Result<Var> {
        let n: usize = shape.iter().product();
        self.insert(name, vec![value; n], shape, role)
    }

    pub fn trainable(&self, decayed: bool) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .filter(|(_, (_, role))| match role {
                Role::Weight => decayed,
                Role::NoDecay => !decayed,
                Role::Buffer => false,
            })
            .map(|(name, (var, _))| (name.clone(), var.clone()))
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.vars
            .get(name)
            .map(|(v, _)| v.as_tensor().clone())
            .with_context(|| format!("no parameter {name}"))
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.vars.keys()
    }

    pub fn count_trainable(&self) -> usize {
        self.vars.values().filter(|(_, r)| *r != Role::Buffer).map(|(v, _)| v.elem_count()).sum()
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars.iter().map(|(k, (v, _))| (k.clone(), v.as_tensor().clone())).collect()
    }

    /// Overwrites every parameter from `tensors`; a missing name or another shape is an error.
    pub fn assign(&self, tensors: &HashMap<String, Tensor>, label: &str) -> Result<()> {
        for (name, (var, _)) in &self.vars {
            let t = tensors.get(name).with_context(|| format!("{label}: no tensor {name}"))?;
            if t.dims() != var.dims() {
                bail!("{label}: {name} has shape {:?}, the model wants {:?}", t.dims(), var.dims());
            }
            var.set(&t.to_device(&self.device)?)?;
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.tensors(), path)
            .with_context(|| format!("{}: cannot write", path.display()))
    }

    pub fn load(&self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &self.device)
            .with_context(|| format!("{}: not a readable safetensors checkpoint", path.display()))?;
        self.assign(&tensors, &path.display().to_string())
    }
}

/// Box-Muller standard normal sample.
pub fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_round_trip_through_safetensors() {
        let make = |seed| {
            let mut p = Params::new(seed, &Device::Cpu);
            p.normal("w", &[4, 3], 1.0, Role::Weight).unwrap();
            p.constant("b", &[4], 0.0, Role::NoDecay).unwrap();
            p
        };
        let (a, b, c) = (make(1), make(1), make(2));
        let va = a.get("w").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(va, b.get("w").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(va, c.get("w").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(a.trainable(true).len(), 1);
        assert_eq!(a.count_trainable(), 16);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.safetensors");
        a.save(&file).unwrap();
        c.load(&file).unwrap();
        assert_eq!(va, c.get("w").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
