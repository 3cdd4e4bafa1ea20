//! Depthwise 3x3 convolution (one filter per channel, MobileNet style) on CNHW tensors:
//! direct loops, parallel over channels, forward and both gradients. candle would run it as
//! one small convolution per channel.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::conv::{Window, valid_columns};
use super::cpu_f32;

const K: usize = 3;

#[derive(Clone, Copy, Debug)]
struct Dims {
    c: usize,
    n: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    stride: usize,
}

impl Dims {
    fn new((c, n, h, w): (usize, usize, usize, usize), stride: usize) -> Self {
        let window = Window { kernel: K, stride, pad: 1 };
        Self { c, n, h, w, ho: window.out_size(h), wo: window.out_size(w), stride }
    }

    /// Input row and output-column range for kernel offset (ki, kj) and output row oy.
    fn taps(&self, oy: usize, ki: usize, kj: usize) -> Option<(usize, std::ops::Range<usize>)> {
        let iy = (oy * self.stride + ki) as isize - 1;
        if iy < 0 || iy >= self.h as isize {
            return None;
        }
        Some((iy as usize, valid_columns(self.wo, self.w, kj, self.stride, 1)))
    }
}

/// `y = depthwise(x, w)`: args `x [C, N, H, W]`, `w [C, 1, 3, 3]`.
struct Depthwise {
    stride: usize,
}

/// Input gradient: args `w [C, 1, 3, 3]`, `dy [C, N, Ho, Wo]`; `dims` of the input.
struct DepthwiseInputGrad {
    d: Dims,
}

/// Weight gradient: args `x [C, N, H, W]`, `dy [C, N, Ho, Wo]`.
struct DepthwiseWeightGrad {
    stride: usize,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise3x3-cnhw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let w = cpu_f32(s2, l2, self.name())?;
        let d = Dims::new(l1.shape().dims4()?, self.stride);
        if l2.shape().dims4()? != (d.c, 1, K, K) {
            bail!("depthwise: weight {:?} does not fit {} channels", l2.shape(), d.c);
        }
        let mut y = vec![0f32; d.c * d.n * d.ho * d.wo];
        y.par_chunks_mut(d.ho * d.wo).enumerate().for_each(|(plane, out)| {
            let ch = plane / d.n;
            let src = &x[plane * d.h * d.w..][..d.h * d.w];
            let taps = &w[ch * K * K..][..K * K];
            for oy in 0..d.ho {
                let row = &mut out[oy * d.wo..][..d.wo];
                for ki in 0..K {
                    for kj in 0..K {
                        let Some((iy, valid)) = d.taps(oy, ki, kj) else { continue };
                        let weight = taps[ki * K + kj];
                        let line = &src[iy * d.w..][..d.w];
                        if d.stride == 1 {
                            let from = valid.start + kj - 1;
                            for (o, v) in row[valid.clone()].iter_mut().zip(&line[from..from + valid.len()]) {
                                *o += weight * v;
                            }
                        } else {
                            for ox in valid {
                                row[ox] += weight * line[ox * d.stride + kj - 1];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((d.c, d.n, d.ho, d.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            let d = Dims::new(x.dims4()?, self.stride);
            Some(w.apply_op2_no_bwd(&dy, &DepthwiseInputGrad { d })?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(&dy, &DepthwiseWeightGrad { stride: self.stride })?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "depthwise3x3-cnhw-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = cpu_f32(s1, l1, self.name())?;
        let dy = cpu_f32(s2, l2, self.name())?;
        let d = self.d;
        let mut dx = vec![0f32; d.c * d.n * d.h * d.w];
        dx.par_chunks_mut(d.h * d.w).enumerate().for_each(|(plane, out)| {
            let ch = plane / d.n;
            let g = &dy[plane * d.ho * d.wo..][..d.ho * d.wo];
            let taps = &w[ch * K * K..][..K * K];
            for oy in 0..d.ho {
                let grad = &g[oy * d.wo..][..d.wo];
                for ki in 0..K {
                    for kj in 0..K {
                        let Some((iy, valid)) = d.taps(oy, ki, kj) else { continue };
                        let weight = taps[ki * K + kj];
                        let line = &mut out[iy * d.w..][..d.w];
                        if d.stride == 1 {
                            let from = valid.start + kj - 1;
                            for (o, v) in line[from..from + valid.len()].iter_mut().zip(&grad[valid.clone()])
                            {
                                *o += weight * v;
                            }
                        } else {
                            for ox in valid {
                                line[ox * d.stride + kj - 1] += weight * grad[ox];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((d.c, d.n, d.h, d.w))))
    }
}

impl CustomOp2 for DepthwiseWeightGrad {
    fn name(&self) -> &'static str {
        "depthwise3x3-cnhw-weight-grad"
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
        let d = Dims::new(l1.shape().dims4()?, self.stride);
        let mut dw = vec![0f32; d.c * K * K];
        dw.par_chunks_mut(K * K).enumerate().for_each(|(ch, taps)| {
            let mut acc = [0f64; K * K];
            for img in 0..d.n {
                let plane = ch * d.n + img;
                let src = &x[plane * d.h * d.w..][..d.h * d.w];
                let g = &dy[plane * d.ho * d.wo..][..d.ho * d.wo];
                for oy in 0..d.ho {
                    let grad = &g[oy * d.wo..][..d.wo];
                    for ki in 0..K {
                        for kj in 0..K {
                            let Some((iy, valid)) = d.taps(oy, ki, kj) else { continue };
                            let line = &src[iy * d.w..][..d.w];
                            let mut sum = 0f32;
                            if d.stride == 1 {
                                let from = valid.start + kj - 1;
                                for (a, b) in grad[valid.clone()].iter().zip(&line[from..from + valid.len()])
                                {
                                    sum += a * b;
                                }
                            } else {
                                for ox in valid {
                                    sum += grad[ox] * line[ox * d.stride + kj - 1];
                                }
                            }
                            acc[ki * K + kj] += sum as f64;
                        }
                    }
                }
            }
            for (t, a) in taps.iter_mut().zip(acc) {
                *t = a as f32;
            }
        });
        Ok((CpuStorage::F32(dw), Shape::from((d.c, 1, K, K))))
    }
}

/// Depthwise 3x3 convolution (padding 1) of `x [C, N, H, W]` with `weight [C, 1, 3, 3]`.
/// On devices other than the CPU it is candle's grouped convolution between two transposes.
pub fn depthwise3x3_cnhw(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (c, ..) = x.dims4()?;
    if weight.dims4()? != (c, 1, K, K) {
        bail!("depthwise3x3_cnhw: weight {:?} does not fit input {:?}", weight.dims(), x.dims());
    }
    if !x.device().is_cpu() {
        let nchw = x.transpose(0, 1)?.contiguous()?;
        let y = nchw.conv2d(weight, 1, stride, 1, c)?;
        return y.transpose(0, 1)?.contiguous();
    }
    x.contiguous()?.apply_op2(&weight.contiguous()?, Depthwise { stride })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_support::{max_diff, random};
    use candle_core::Var;

    #[test]
    fn matches_candle_grouped_convolution_forward_and_backward() {
        for stride in [1, 2] {
            let x0 = random(&[4, 2, 9, 7], 1 + stride as u64); // CNHW (sizes candle's own strided backward handles)
            let w0 = random(&[4, 1, 3, 3], 7);
            let x = Var::from_tensor(&x0).unwrap();
            let w = Var::from_tensor(&w0).unwrap();
            let y = depthwise3x3_cnhw(&x, &w, stride).unwrap();
            let probe = random(y.dims(), 11);
            let g = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();

            let xr = Var::from_tensor(&x0.transpose(0, 1).unwrap().contiguous().unwrap()).unwrap();
            let wr = Var::from_tensor(&w0).unwrap();
            let yr = xr.conv2d(&wr, 1, stride, 1, 4).unwrap();
            assert!(max_diff(&y.transpose(0, 1).unwrap(), &yr) < 1e-5, "forward, stride {stride}");
            let gr = (&yr * probe.transpose(0, 1).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(g.get(&w).unwrap(), gr.get(&wr).unwrap()) < 1e-4, "dW, stride {stride}");
            let gx = g.get(&x).unwrap().transpose(0, 1).unwrap();
            assert!(max_diff(&gx, gr.get(&xr).unwrap()) < 1e-4, "dX, stride {stride}");
        }
    }
}
