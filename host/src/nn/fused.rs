//! Fused CPU kernels for the two memory-bound layers of the net.
//!
//! Written as candle ops, batch norm + ReLU is ~10 passes over the activations forward and
//! more backward, and the reshape-and-max pool gradient several more; profiled, those passes
//! cost more than the convolutions' gemm. Here each is one parallel pass per direction (over
//! channels, or over image planes), checked against the plain candle formulation in tests.
//! On other devices the plain candle ops are used.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu_f32;

pub const BN_EPS: f32 = 1e-5;

/// `sum(f(x))` over a slice: eight f32 lanes per block of 2048 values (the compiler
/// vectorises them) and the blocks added in f64, so long channels keep their precision.
#[inline]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    xs.chunks(2048)
        .map(|block| {
            let mut lanes = [0f32; 8];
            let mut eights = block.chunks_exact(8);
            for e in &mut eights {
                for i in 0..8 {
                    lanes[i] += f(e[i]);
                }
            }
            let tail: f32 = eights.remainder().iter().map(|&v| f(v)).sum();
            lanes.iter().sum::<f32>() as f64 + tail as f64
        })
        .sum()
}

/// `sum(g * (x - mean))` in lanes, as [`lane_sum`].
#[inline]
fn lane_sum_pairs(gs: &[f32], xs: &[f32], mean: f32) -> f64 {
    gs.chunks(2048)
        .zip(xs.chunks(2048))
        .map(|(gb, xb)| {
            let mut lanes = [0f32; 8];
            let (mut g8, mut x8) = (gb.chunks_exact(8), xb.chunks_exact(8));
            for (g, x) in (&mut g8).zip(&mut x8) {
                for i in 0..8 {
                    lanes[i] += g[i] * (x[i] - mean);
                }
            }
            let tail: f32 = g8.remainder().iter().zip(x8.remainder()).map(|(g, x)| g * (x - mean)).sum();
            lanes.iter().sum::<f32>() as f64 + tail as f64
        })
        .sum()
}

/// Per-channel mean, biased variance and 1/sqrt(var + eps) (two passes, for accuracy).
fn channel_stats(x: &[f32]) -> (f32, f32, f32) {
    let m = x.len().max(1) as f64;
    let mean = (lane_sum(x, |v| v) / m) as f32;
    let var = (lane_sum(x, |v| (v - mean) * (v - mean)) / m) as f32;
    (mean, var, 1.0 / (var + BN_EPS).sqrt())
}

/// Training-mode batch norm + ReLU over `[C, M]` (args: x, gamma `[C]`, beta `[C]`).
/// The batch statistics it used are left in `stats` (mean, biased var) for the running ones.
struct BnReluTrain {
    stats: Arc<Mutex<Vec<(f32, f32)>>>,
}

/// Per-channel (mean, 1/sqrt(var + eps)) handed from the forward pass to the gradient.
fn stats_tensor(stats: &[(f32, f32)], device: &candle_core::Device) -> Result<Tensor> {
    let flat: Vec<f32> = stats.iter().flat_map(|&(mean, var)| [mean, 1.0 / (var + BN_EPS).sqrt()]).collect();
    Tensor::from_vec(flat, stats.len() * 2, device)
}

impl CustomOp3 for BnReluTrain {
    fn name(&self) -> &'static str {
        "bn-relu-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let gamma = cpu_f32(s2, l2, self.name())?;
        let beta = cpu_f32(s3, l3, self.name())?;
        let (c, m) = channels_and_rest(l1.shape())?;
        let mut y = vec![0f32; c * m];
        let stats: Vec<(f32, f32)> = y
            .par_chunks_mut(m)
            .enumerate()
            .map(|(ch, out)| {
                let xs = &x[ch * m..(ch + 1) * m];
                let (mean, var, inv_std) = channel_stats(xs);
                let scale = gamma[ch] * inv_std;
                let shift = beta[ch] - mean * scale;
                for (o, &v) in out.iter_mut().zip(xs) {
                    *o = (v * scale + shift).max(0.0);
                }
                (mean, var)
            })
            .collect();
        *self.stats.lock().unwrap() = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (c, m) = channels_and_rest(x.shape())?;
        let stats = stats_tensor(&self.stats.lock().unwrap(), x.device())?;
        let params = Tensor::cat(&[gamma, beta, &stats], 0)?;
        let all = x.apply_op3_no_bwd(&grad.contiguous()?, &params, &BnReluGrad)?;
        let dx = all.narrow(0, 0, c * m)?.reshape(x.shape())?;
        let dgamma = all.narrow(0, c * m, c)?;
        let dbeta = all.narrow(0, c * m + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Gradients of [`BnReluTrain`]: args x `[C, M]`, dy `[C, M]`, and gamma ‖ beta ‖
/// (mean, inv_std) per channel `[4C]`; output is dx (C*M values), then dgamma (C), then
/// dbeta (C), flat.
struct BnReluGrad;

impl CustomOp3 for BnReluGrad {
    fn name(&self) -> &'static str {
        "bn-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let dy = cpu_f32(s2, l2, self.name())?;
        let params = cpu_f32(s3, l3, self.name())?;
        let (c, m) = channels_and_rest(l1.shape())?;
        let (gamma, rest) = params.split_at(c);
        let (beta, stats) = rest.split_at(c);
        let mut out = vec![0f32; c * m + 2 * c];
        let (dx, tail) = out.split_at_mut(c * m);
        let per_channel: Vec<(f32, f32)> = dx
            .par_chunks_mut(m)
            .enumerate()
            .map(|(ch, dxs)| {
                let xs = &x[ch * m..(ch + 1) * m];
                let dys = &dy[ch * m..(ch + 1) * m];
                let (mean, inv_std) = (stats[2 * ch], stats[2 * ch + 1]);
                let scale = gamma[ch] * inv_std;
                let shift = beta[ch] - mean * scale;
                // Sums of the gradient that passes the ReLU, and of it times x-hat; the mask
                // is written into `dxs` first so both sums are plain vectorisable loops.
                for ((d, &v), &g) in dxs.iter_mut().zip(xs).zip(dys) {
                    *d = if v * scale + shift > 0.0 { g } else { 0.0 };
                }
                let dbeta = lane_sum(dxs, |g| g) as f32;
                let dgamma = (lane_sum_pairs(dxs, xs, mean) * inv_std as f64) as f32;
                let k = scale / m as f32;
                for (d, &v) in dxs.iter_mut().zip(xs) {
                    let xhat = (v - mean) * inv_std;
                    *d = k * (m as f32 * *d - dbeta - xhat * dgamma);
                }
                (dgamma, dbeta)
            })
            .collect();
        for (ch, (dgamma, dbeta)) in per_channel.into_iter().enumerate() {
            tail[ch] = dgamma;
            tail[c + ch] = dbeta;
        }
        Ok((CpuStorage::F32(out), Shape::from(c * m + 2 * c)))
    }
}

/// Batch norm (batch statistics) + ReLU of a CNHW activation on the CPU; returns the output
/// and the per-channel (mean, biased variance) used. Shapes pass through unchanged, so no
/// reshape node (and no extra gradient buffer) enters candle's graph.
pub fn bn_relu_train(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<(Tensor, Vec<(f32, f32)>)> {
    let stats = Arc::new(Mutex::new(Vec::new()));
    let y = x.contiguous()?.apply_op3(gamma, beta, BnReluTrain { stats: Arc::clone(&stats) })?;
    let stats = stats.lock().unwrap().clone();
    Ok((y, stats))
}

/// `[C, ...]` as (C, elements per channel).
fn channels_and_rest(shape: &Shape) -> Result<(usize, usize)> {
    let c = *shape.dims().first().ok_or_else(|| candle_core::Error::Msg("scalar input".into()))?;
    Ok((c, shape.elem_count() / c.max(1)))
}

/// 2x2 max-pool of the `H x W` planes of `[C, N, H, W]`.
struct MaxPool2;

impl candle_core::CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout, self.name())?;
        let (c, n, h, w) = layout.shape().dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let mut y = vec![0f32; c * n * ho * wo];
        y.par_chunks_mut(ho * wo).enumerate().for_each(|(plane, out)| {
            let src = &x[plane * h * w..(plane + 1) * h * w];
            for oy in 0..ho {
                let (r0, r1) = (&src[2 * oy * w..][..w], &src[(2 * oy + 1) * w..][..w]);
                for ox in 0..wo {
                    out[oy * wo + ox] = r0[2 * ox].max(r0[2 * ox + 1]).max(r1[2 * ox]).max(r1[2 * ox + 1]);
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((c, n, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let _ = res;
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPool2Grad)?))
    }
}

/// Routes each pooled gradient to the first maximum of its window (as PyTorch does).
struct MaxPool2Grad;

impl CustomOp2 for MaxPool2Grad {
    fn name(&self) -> &'static str {
        "max-pool-2x2-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let dy = cpu_f32(s2, l2, self.name())?;
        let (c, n, h, w) = l1.shape().dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let mut dx = vec![0f32; c * n * h * w];
        dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, out)| {
            let src = &x[plane * h * w..(plane + 1) * h * w];
            let g = &dy[plane * ho * wo..(plane + 1) * ho * wo];
            for oy in 0..ho {
                for ox in 0..wo {
                    let candidates = [
                        2 * oy * w + 2 * ox,
                        2 * oy * w + 2 * ox + 1,
                        (2 * oy + 1) * w + 2 * ox,
                        (2 * oy + 1) * w + 2 * ox + 1,
                    ];
                    let mut best = candidates[0];
                    for &i in &candidates[1..] {
                        if src[i] > src[best] {
                            best = i;
                        }
                    }
                    out[best] = g[oy * wo + ox];
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((c, n, h, w))))
    }
}

/// 2x2 max-pool of a CNHW activation on the CPU.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        bail!("max_pool_2x2 needs even sizes, got {h}x{w}");
    }
    x.contiguous()?.apply_op1(MaxPool2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_support::{max_diff, random};
    use candle_core::Var;

    /// The same layer written with plain candle ops.
    fn reference_bn_relu(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
        let (c, n, h, w) = x.dims4().unwrap();
        let flat = x.reshape((c, n * h * w)).unwrap();
        let mean = flat.mean_keepdim(1).unwrap();
        let centered = flat.broadcast_sub(&mean).unwrap();
        let var = centered.sqr().unwrap().mean_keepdim(1).unwrap();
        let xhat = centered.broadcast_div(&(var + BN_EPS as f64).unwrap().sqrt().unwrap()).unwrap();
        let y = xhat
            .broadcast_mul(&gamma.unsqueeze(1).unwrap())
            .unwrap()
            .broadcast_add(&beta.unsqueeze(1).unwrap())
            .unwrap();
        y.relu().unwrap().reshape((c, n, h, w)).unwrap()
    }

    #[test]
    fn bn_relu_matches_candle_ops_forward_and_backward() {
        let x0 = random(&[4, 3, 5, 6], 1);
        let g0 = (random(&[4], 2) + 1.5).unwrap();
        let b0 = random(&[4], 3);
        let probe = random(&[4, 3, 5, 6], 4);
        let run = |fused: bool| {
            let (x, g, b) = (
                Var::from_tensor(&x0).unwrap(),
                Var::from_tensor(&g0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let y = if fused { bn_relu_train(&x, &g, &b).unwrap().0 } else { reference_bn_relu(&x, &g, &b) };
            let grads = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y,
                grads.get(&x).unwrap().clone(),
                grads.get(&g).unwrap().clone(),
                grads.get(&b).unwrap().clone(),
            )
        };
        let (fused, plain) = (run(true), run(false));
        assert!(max_diff(&fused.0, &plain.0) < 1e-5);
        assert!(max_diff(&fused.1, &plain.1) < 1e-4, "dx {}", max_diff(&fused.1, &plain.1));
        assert!(max_diff(&fused.2, &plain.2) < 1e-4);
        assert!(max_diff(&fused.3, &plain.3) < 1e-4);
        let (_, stats) = bn_relu_train(&x0, &g0, &b0).unwrap();
        let first: Vec<f32> = x0.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mean = first.iter().sum::<f32>() / first.len() as f32;
        assert!((stats[0].0 - mean).abs() < 1e-5);
    }

    #[test]
    fn max_pool_matches_reshape_max_forward_and_backward() {
        let x0 = random(&[3, 2, 6, 4], 9);
        let probe = random(&[3, 2, 3, 2], 10);
        let x = Var::from_tensor(&x0).unwrap();
        let fused = max_pool_2x2(&x).unwrap();
        let plain = x.reshape((3, 2, 3, 2, 2, 2)).unwrap().max(5).unwrap().max(3).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-7);
        let g1 = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-7);
    }
}
