//! Fast convolution for candle on the CPU: im2col + gemm, forward and both gradients.
//!
//! candle 0.11's CPU conv backward runs `conv_transpose2d` as a direct loop, which dominates a
//! training step (measured: 2.4 s per batch of 64 at 64x64 for a 4-conv net). Here, for a
//! few images at a time, the input is unfolded into `cols[C*k*k, n*Ho*Wo]` and
//!
//! - forward:         `Y[:, chunk]  = W @ cols`
//! - weight gradient: `dW^T        += cols @ dY[:, chunk]^T`
//! - input gradient:  `dX[chunk]    = col2im(W^T @ dY[:, chunk])`
//!
//! Working a chunk of images at a time keeps `cols` (about a megabyte) in cache between the
//! unfolding and the gemm that reads it, and lets the chunks run in parallel, each thread
//! with its own single-threaded gemm (the `gemm` crate candle itself uses). The whole
//! convolution is one candle op, so `cols` never becomes a graph node whose gradient candle
//! would allocate and accumulate.
//!
//! Activations live in **CNHW** layout (`[C, N, H, W]`): the output `[O, N*Ho*Wo]` is then
//! already the next layer's input, with no transpose. The exported ONNX graph is ordinary
//! NCHW; the weights `[O, C, k, k]` mean the same thing in both.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_f32;

/// Geometry of a square convolution window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Window {
    pub fn out_size(&self, input: usize) -> usize {
        (input + 2 * self.pad - self.kernel) / self.stride + 1
    }
}

/// Every size of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    window: Window,
    /// Input `[c, n, h, w]`, output `[o, n, ho, wo]`.
    c: usize,
    n: usize,
    h: usize,
    w: usize,
    o: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(window: Window, (c, n, h, w): (usize, usize, usize, usize), o: usize) -> Self {
        Self { window, c, n, h, w, o, ho: window.out_size(h), wo: window.out_size(w) }
    }
    /// Rows of `cols`: C*k*k.
    fn kk(&self) -> usize {
        self.c * self.window.kernel * self.window.kernel
    }
    fn out_plane(&self) -> usize {
        self.ho * self.wo
    }
    /// Output columns of all images: N*Ho*Wo.
    fn m(&self) -> usize {
        self.n * self.out_plane()
    }
    /// Images per chunk: about 256 K floats (1 MiB) of `cols`, so they stay in cache.
    fn chunk_images(&self) -> usize {
        (262_144 / (self.kk() * self.out_plane()).max(1)).clamp(1, self.n.max(1))
    }
    /// A 1x1, stride-1 convolution: the CNHW input already is its `cols` matrix.
    fn pointwise(&self) -> bool {
        self.window == Window { kernel: 1, stride: 1, pad: 0 }
    }

    fn chunks(&self) -> Vec<Range<usize>> {
        let step = self.chunk_images();
        (0..self.n).step_by(step).map(|start| start..(start + step).min(self.n)).collect()
    }
}

/// A matrix view: element (i, j) at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl Mat {
    fn row_major(data: &[f32], rows: usize, cols: usize) -> Mat {
        assert!(data.len() >= rows * cols);
        Mat { ptr: data.as_ptr(), rows, cols, rs: cols as isize, cs: 1 }
    }
    fn t(self) -> Mat {
        Mat { ptr: self.ptr, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

/// `out = a @ b` (or `out += a @ b`), single-threaded.
///
/// gemm's microkernel wants a column-major left operand and destination; given a row-major
/// destination it transposes the problem and packs (copies) the left operand. So the product
/// is posed as `out^T = b^T @ a^T`, which makes our wide `cols`/`dY` blocks its unpacked
/// column-major left side.
///
/// # Safety
/// `out`, `a` and `b` must describe memory valid for their shapes and strides, `out` must be
/// writable and not overlap the others.
unsafe fn gemm_into(out: Mat, a: Mat, b: Mat, accumulate: bool) {
    assert!(a.cols == b.rows && out.rows == a.rows && out.cols == b.cols, "shapes");
    unsafe {
        gemm::gemm(
            out.cols,
            out.rows,
            a.cols,
            out.ptr as *mut f32,
            out.rs,
            out.cs,
            accumulate,
            b.ptr,
            b.rs,
            b.cs,
            a.ptr,
            a.rs,
            a.cs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// A pointer that chunks write through in parallel, each to its own disjoint part.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every user writes a disjoint region (one chunk of images) of the buffer.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer `offset` floats in (a method, so closures capture the whole wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer this pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// For output columns `0..wo`, the range whose input column `ox * stride + kj - pad` lies
/// inside `0..w`.
pub(crate) fn valid_columns(wo: usize, w: usize, kj: usize, stride: usize, pad: usize) -> Range<usize> {
    let first = (pad.saturating_sub(kj)).div_ceil(stride).min(wo);
    let last = ((w + pad - kj) as isize - 1).div_euclid(stride as isize) + 1;
    first..(last.max(0) as usize).min(wo).max(first)
}

/// Unfolds `images` of `x [C, N, H, W]` into `cols [C*k*k, images*Ho*Wo]`, zero padded.
fn im2col(x: &[f32], g: &Geometry, images: Range<usize>, cols: &mut [f32]) {
    let Window { kernel: k, stride, pad } = g.window;
    let (h, w, ho, wo) = (g.h, g.w, g.ho, g.wo);
    let row_len = images.len() * ho * wo;
    cols.fill(0.0);
    for (row, out) in cols.chunks_exact_mut(row_len).enumerate() {
        let (ch, ki, kj) = (row / (k * k), (row / k) % k, row % k);
        let valid = valid_columns(wo, w, kj, stride, pad);
        for (slot, img) in images.clone().enumerate() {
            let plane = &x[(ch * g.n + img) * h * w..][..h * w];
            let out = &mut out[slot * ho * wo..][..ho * wo];
            for oy in 0..ho {
                let iy = (oy * stride + ki) as isize - pad as isize;
                if iy < 0 || iy >= h as isize {
                    continue; // stays zero: padding
                }
                let src = &plane[iy as usize * w..][..w];
                let dst = &mut out[oy * wo..][..wo];
                if stride == 1 {
                    let from = valid.start + kj - pad;
                    dst[valid.clone()].copy_from_slice(&src[from..from + valid.len()]);
                } else {
                    for ox in valid.clone() {
                        dst[ox] = src[ox * stride + kj - pad];
                    }
                }
            }
        }
    }
}

/// Unfolds `images` of `x [C, N, H, W]` into patch rows `[images*Ho*Wo, C*k*k]` (the
/// transpose of [`im2col`]'s layout), zero padded. The weight gradient reads patches this way
/// round so that gemm can use them without packing a copy first.
fn im2row(x: &[f32], g: &Geometry, images: Range<usize>, rows: &mut [f32]) {
    let Window { kernel: k, stride, pad } = g.window;
    let (h, w, ho, wo, kk) = (g.h, g.w, g.ho, g.wo, g.kk());
    rows.fill(0.0);
    for (slot, img) in images.enumerate() {
        for oy in 0..ho {
            // The patches of one output row: wo x kk values, a few KiB that stay in L1.
            let block = &mut rows[(slot * ho + oy) * wo * kk..][..wo * kk];
            for ch in 0..g.c {
                let plane = &x[(ch * g.n + img) * h * w..][..h * w];
                for ki in 0..k {
                    let iy = (oy * stride + ki) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let src = &plane[iy as usize * w..][..w];
                    let offset = (ch * k + ki) * k;
                    for ox in 0..wo {
                        let dst = &mut block[ox * kk + offset..][..k];
                        let left = (ox * stride) as isize - pad as isize;
                        if left >= 0 && left as usize + k <= w {
                            // Interior: the k inputs are contiguous.
                            dst.copy_from_slice(&src[left as usize..left as usize + k]);
                        } else {
                            for (kj, d) in dst.iter_mut().enumerate() {
                                let ix = left + kj as isize;
                                if ix >= 0 && ix < w as isize {
                                    *d = src[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: scatter-adds `cols` into `images` of `dx [C, N, H, W]`.
///
/// # Safety
/// `dx` must point to a `[C, N, H, W]` buffer that no one else writes for these images.
unsafe fn col2im(cols: &[f32], g: &Geometry, images: Range<usize>, dx: SharedOut) {
    let Window { kernel: k, stride, pad } = g.window;
    let (h, w, ho, wo) = (g.h, g.w, g.ho, g.wo);
    let row_len = images.len() * ho * wo;
    for ch in 0..g.c {
        for (slot, img) in images.clone().enumerate() {
            // SAFETY: plane (ch, img) belongs to this chunk's images only.
            let plane = unsafe { std::slice::from_raw_parts_mut(dx.at((ch * g.n + img) * h * w), h * w) };
            plane.fill(0.0);
            for ki in 0..k {
                for kj in 0..k {
                    let valid = valid_columns(wo, w, kj, stride, pad);
                    let row = &cols[((ch * k + ki) * k + kj) * row_len..][..row_len];
                    let src = &row[slot * ho * wo..][..ho * wo];
                    for oy in 0..ho {
                        let iy = (oy * stride + ki) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * w..][..w];
                        let src = &src[oy * wo..][..wo];
                        if stride == 1 {
                            let from = valid.start + kj - pad;
                            for (d, v) in dst[from..from + valid.len()].iter_mut().zip(&src[valid.clone()]) {
                                *d += v;
                            }
                        } else {
                            for ox in valid.clone() {
                                dst[ox * stride + kj - pad] += src[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `Y [O, N, Ho, Wo] = conv(x, W)`.
fn conv_forward(x: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    let (kk, m, plane) = (g.kk(), g.m(), g.out_plane());
    let mut y = vec![0f32; g.o * m];
    let out = SharedOut(y.as_mut_ptr());
    g.chunks().into_par_iter().for_each(|images| {
        let cols_w = images.len() * plane;
        let mut cols = Vec::new();
        let input = if g.pointwise() {
            // The chunk's columns of the [C, N*H*W] input, read in place.
            Mat { ptr: x[images.start * plane..].as_ptr(), rows: kk, cols: cols_w, rs: m as isize, cs: 1 }
        } else {
            cols.resize(kk * cols_w, 0.0);
            im2col(x, g, images.clone(), &mut cols);
            Mat::row_major(&cols, kk, cols_w)
        };
        // Y[:, chunk] is a column block of the row-major [O, M] output.
        let dst = Mat { ptr: out.at(images.start * plane), rows: g.o, cols: cols_w, rs: m as isize, cs: 1 };
        // SAFETY: each chunk writes only its own columns of `y`; `input` lies inside `x` or `cols`.
        unsafe { gemm_into(dst, Mat::row_major(weight, g.o, kk), input, false) };
    });
    y
}

/// `dW [O, C, k, k]` from `x` and `dY`. The chunks are split into one contiguous group per
/// thread; each group accumulates its own `dW` and the groups are summed in order, so the
/// result is the same on every run with the same thread count (rayon's `fold`/`reduce` groups
/// by work stealing, and float sums in a varying order made seeded runs drift apart).
fn conv_weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (kk, m, plane, o) = (g.kk(), g.m(), g.out_plane(), g.o);
    let chunks = g.chunks();
    let per_group = chunks.len().div_ceil(rayon::current_num_threads()).max(1);
    let partials: Vec<Vec<f32>> = chunks
        .par_chunks(per_group)
        .map(|group| {
            let acc = vec![0f32; o * kk];
            for images in group {
                let cols_w = images.len() * plane;
                let mut patches = vec![0f32; cols_w * kk];
                im2row(x, g, images.clone(), &mut patches);
                let dy_chunk = Mat {
                    ptr: dy[images.start * plane..].as_ptr(),
                    rows: o,
                    cols: cols_w,
                    rs: m as isize,
                    cs: 1,
                };
                let dst = Mat::row_major(&acc, o, kk);
                // SAFETY: `acc` is this group's own [o, kk] buffer; dy_chunk lies inside `dy`.
                unsafe { gemm_into(dst, dy_chunk, Mat::row_major(&patches, cols_w, kk), true) };
            }
            acc
        })
        .collect();
    let mut sum = vec![0f32; o * kk];
    for partial in &partials {
        sum.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
    }
    sum
}

/// `dX [C, N, H, W] = col2im(W^T @ dY)`.
fn conv_input_grad(weight: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (kk, m, plane, o) = (g.kk(), g.m(), g.out_plane(), g.o);
    let mut dx = vec![0f32; g.c * g.n * g.h * g.w];
    let out = SharedOut(dx.as_mut_ptr());
    g.chunks().into_par_iter().for_each(|images| {
        let cols_w = images.len() * plane;
        let dy_chunk =
            Mat { ptr: dy[images.start * plane..].as_ptr(), rows: o, cols: cols_w, rs: m as isize, cs: 1 };
        if g.pointwise() {
            // col2im of a 1x1 convolution is the identity: write straight into dX's columns.
            let dst =
                Mat { ptr: out.at(images.start * plane), rows: kk, cols: cols_w, rs: m as isize, cs: 1 };
            // SAFETY: each chunk writes only its own columns of `dx`.
            unsafe { gemm_into(dst, Mat::row_major(weight, o, kk).t(), dy_chunk, false) };
            return;
        }
        let dcols = vec![0f32; kk * cols_w];
        // SAFETY: `dcols` is this chunk's own buffer; dy_chunk lies inside `dy`.
        unsafe {
            gemm_into(Mat::row_major(&dcols, kk, cols_w), Mat::row_major(weight, o, kk).t(), dy_chunk, false)
        };
        // SAFETY: each chunk writes only the planes of its own images.
        unsafe { col2im(&dcols, g, images, out) };
    });
    dx
}

/// The convolution: args `x [C, N, H, W]`, `w [O, C, k, k]`; output `[O, N, Ho, Wo]`.
struct ConvCnhw {
    window: Window,
}

/// Weight gradient: args `x [C, N, H, W]`, `dy [O, N, Ho, Wo]`; output `[O, C, k, k]`.
struct ConvWeightGrad {
    window: Window,
}

/// Input gradient: args `w [O, C, k, k]`, `dy [O, N, Ho, Wo]`; output `[C, N, H, W]`.
struct ConvInputGrad {
    window: Window,
    input_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for ConvCnhw {
    fn name(&self) -> &'static str {
        "conv2d-cnhw"
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
        let (o, ..) = l2.shape().dims4()?;
        let g = Geometry::new(self.window, l1.shape().dims4()?, o);
        let y = conv_forward(x, w, &g);
        Ok((CpuStorage::F32(y), Shape::from((g.o, g.n, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // The network input needs no gradient: skip the largest col2im of all.
        let dx = if x.track_op() {
            Some(w.apply_op2_no_bwd(&dy, &ConvInputGrad { window: self.window, input_dims: x.dims4()? })?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(&dy, &ConvWeightGrad { window: self.window })?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-cnhw-weight-grad"
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
        let (o, ..) = l2.shape().dims4()?;
        let g = Geometry::new(self.window, l1.shape().dims4()?, o);
        let dw = conv_weight_grad(x, dy, &g);
        let k = self.window.kernel;
        Ok((CpuStorage::F32(dw), Shape::from((g.o, g.c, k, k))))
    }
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "conv2d-cnhw-input-grad"
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
        let (o, ..) = l1.shape().dims4()?;
        let g = Geometry::new(self.window, self.input_dims, o);
        if l2.shape().dims4()? != (g.o, g.n, g.ho, g.wo) {
            bail!("conv input grad: dy {:?} does not fit", l2.shape());
        }
        let dx = conv_input_grad(w, dy, &g);
        Ok((CpuStorage::F32(dx), Shape::from((g.c, g.n, g.h, g.w))))
    }
}

/// 2-D convolution of a CNHW tensor `x [C, N, H, W]` with `weight [O, C, k, k]` (no bias),
/// giving `[O, N, Ho, Wo]`. On the CPU it is the op above; elsewhere (CUDA) it is candle's
/// own convolution between two transposes.
pub fn conv2d_cnhw(x: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (_, c, k, k2) = weight.dims4()?;
    let (xc, _, _, _) = x.dims4()?;
    if k != k2 || c != xc {
        bail!("conv2d_cnhw: weight {:?} does not fit input {:?}", weight.dims(), x.dims());
    }
    let window = Window { kernel: k, stride, pad };
    if !x.device().is_cpu() {
        let nchw = x.transpose(0, 1)?.contiguous()?;
        let y = nchw.conv2d(weight, pad, stride, 1, 1)?;
        return y.transpose(0, 1)?.contiguous();
    }
    x.contiguous()?.apply_op2(&weight.contiguous()?, ConvCnhw { window })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_support::{max_diff, random};
    use candle_core::{Device, Var};

    #[test]
    fn valid_columns_are_exactly_those_inside_the_input() {
        for (w, k, stride, pad) in [(7, 3, 1, 1), (7, 3, 2, 1), (6, 3, 1, 0), (5, 5, 2, 2), (8, 3, 3, 1)] {
            let window = Window { kernel: k, stride, pad };
            let wo = window.out_size(w);
            for kj in 0..k {
                let expected: Vec<usize> = (0..wo)
                    .filter(|&ox| {
                        let ix = (ox * stride + kj) as isize - pad as isize;
                        ix >= 0 && ix < w as isize
                    })
                    .collect();
                let got: Vec<usize> = valid_columns(wo, w, kj, stride, pad).collect();
                assert_eq!(got, expected, "w {w} k {k} stride {stride} pad {pad} kj {kj}");
            }
        }
    }

    #[test]
    fn im2row_is_the_transpose_of_im2col() {
        for (stride, pad) in [(1, 1), (2, 1), (1, 0)] {
            let g = Geometry::new(Window { kernel: 3, stride, pad }, (2, 3, 6, 5), 4);
            let x: Vec<f32> = (0..2 * 3 * 6 * 5).map(|i| i as f32).collect();
            let (kk, w) = (g.kk(), 2 * g.out_plane());
            let (mut cols, mut rows) = (vec![0f32; kk * w], vec![0f32; kk * w]);
            im2col(&x, &g, 1..3, &mut cols);
            im2row(&x, &g, 1..3, &mut rows);
            for r in 0..kk {
                for c in 0..w {
                    assert_eq!(cols[r * w + c], rows[c * kk + r], "stride {stride} pad {pad}");
                }
            }
        }
    }

    #[test]
    fn forward_matches_candle_conv2d() {
        for (k, stride, pad) in [(3, 1, 1), (3, 2, 1), (3, 1, 0), (3, 3, 2), (1, 1, 0)] {
            let x = random(&[2, 3, 9, 7], 1); // NCHW
            let w = random(&[4, 3, k, k], 2);
            let reference = x.conv2d(&w, pad, stride, 1, 1).unwrap();
            let ours =
                conv2d_cnhw(&x.transpose(0, 1).unwrap(), &w, stride, pad).unwrap().transpose(0, 1).unwrap();
            assert!(max_diff(&reference, &ours) < 1e-5, "k {k} stride {stride} pad {pad}");
        }
    }

    #[test]
    fn gradients_match_candle_for_pointwise_and_strided_convolutions() {
        for (k, stride, pad) in [(1, 1, 0), (3, 2, 1)] {
            let x0 = random(&[3, 2, 9, 7], 13); // CNHW (sizes candle's own strided backward handles)
            let w0 = random(&[5, 3, k, k], 14);
            let x = Var::from_tensor(&x0).unwrap();
            let w = Var::from_tensor(&w0).unwrap();
            let y = conv2d_cnhw(&x, &w, stride, pad).unwrap();
            let probe = random(y.dims(), 15);
            let g = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let xr = Var::from_tensor(&x0.transpose(0, 1).unwrap().contiguous().unwrap()).unwrap();
            let wr = Var::from_tensor(&w0).unwrap();
            let yr = xr.conv2d(&wr, pad, stride, 1, 1).unwrap();
            let gr = (&yr * probe.transpose(0, 1).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(g.get(&w).unwrap(), gr.get(&wr).unwrap()) < 1e-4, "dW k {k} stride {stride}");
            let gx = g.get(&x).unwrap().transpose(0, 1).unwrap();
            assert!(max_diff(&gx, gr.get(&xr).unwrap()) < 1e-4, "dX k {k} stride {stride}");
        }
    }

    #[test]
    fn the_weight_gradient_is_the_same_on_every_run() {
        // Several image chunks over two threads: the order of their sums must not vary.
        let x = Var::from_tensor(&random(&[8, 64, 16, 16], 6)).unwrap();
        let w = Var::from_tensor(&random(&[8, 8, 3, 3], 7)).unwrap();
        let probe = random(&[8, 64, 16, 16], 8);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let gradient = || -> Vec<u32> {
            pool.install(|| {
                let loss = (conv2d_cnhw(&x, &w, 1, 1).unwrap() * &probe).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                let gw = g.get(&w).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                gw.iter().map(|v| v.to_bits()).collect()
            })
        };
        let first = gradient();
        for _ in 0..10 {
            assert!(gradient() == first, "the weight gradient changed between identical runs");
        }
    }

    #[test]
    fn gradients_match_candle_and_finite_differences() {
        let x0 = random(&[3, 2, 6, 5], 3); // CNHW
        let w0 = random(&[4, 3, 3, 3], 4);
        let probe = random(&[4, 2, 6, 5], 5); // loss = sum(conv(x, w) * probe)
        let x = Var::from_tensor(&x0).unwrap();
        let w = Var::from_tensor(&w0).unwrap();
        let loss = (conv2d_cnhw(&x, &w, 1, 1).unwrap() * &probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let (gx, gw) = (grads.get(&x).unwrap(), grads.get(&w).unwrap());

        // candle's own conv2d (NCHW) as the reference gradient.
        let xr = Var::from_tensor(&x0.transpose(0, 1).unwrap().contiguous().unwrap()).unwrap();
        let wr = Var::from_tensor(&w0).unwrap();
        let lr = (xr.conv2d(&wr, 1, 1, 1, 1).unwrap() * probe.transpose(0, 1).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let gr = lr.backward().unwrap();
        assert!(max_diff(gw, gr.get(&wr).unwrap()) < 1e-4);
        assert!(max_diff(&gx.transpose(0, 1).unwrap(), gr.get(&xr).unwrap()) < 1e-4);

        // Central finite differences on a few coordinates of each argument.
        let f = |x: &Tensor, w: &Tensor| -> f64 {
            (conv2d_cnhw(x, w, 1, 1).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let eps = 1e-2f32;
        let bump = |t: &Tensor, i: usize, d: f32| -> Tensor {
            let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[i] += d;
            Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        };
        let gx_flat = gx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0, 17, 59, 100, 179] {
            let numeric = (f(&bump(&x0, i, eps), &w0) - f(&bump(&x0, i, -eps), &w0)) / (2.0 * eps as f64);
            assert!((numeric - gx_flat[i] as f64).abs() < 1e-2, "dx[{i}]: {numeric} vs {}", gx_flat[i]);
        }
        let gw_flat = gw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0, 13, 50, 107] {
            let numeric = (f(&x0, &bump(&w0, i, eps)) - f(&x0, &bump(&w0, i, -eps))) / (2.0 * eps as f64);
            assert!((numeric - gw_flat[i] as f64).abs() < 1e-2, "dw[{i}]: {numeric} vs {}", gw_flat[i]);
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Per-layer figures for the reference net (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn layer_timings() {
        for (c, o, hw) in [(3usize, 32usize, 64usize), (32, 64, 32), (64, 128, 16), (128, 128, 8)] {
            let g = Geometry::new(Window { kernel: 3, stride: 1, pad: 1 }, (c, 64, hw, hw), o);
            let x: Vec<f32> = (0..c * 64 * hw * hw).map(|i| (i % 13) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..o * g.kk()).map(|i| (i % 7) as f32 * 0.1).collect();
            let dy: Vec<f32> = (0..o * g.m()).map(|i| (i % 5) as f32 * 0.1).collect();
            let time = |f: &dyn Fn()| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..3 {
                    f();
                }
                t.elapsed() / 3
            };
            let gf = |d: std::time::Duration| 2.0 * (o * g.kk() * g.m()) as f64 / d.as_secs_f64() / 1e9;
            let (tf, tw, ti) = (
                time(&|| drop(conv_forward(&x, &w, &g))),
                time(&|| drop(conv_weight_grad(&x, &dy, &g))),
                time(&|| drop(conv_input_grad(&w, &dy, &g))),
            );
            eprintln!(
                "c{c} o{o} {hw}x{hw}: fwd {tf:?} ({:.0} GF/s) dW {tw:?} ({:.0}) dX {ti:?} ({:.0})",
                gf(tf),
                gf(tw),
                gf(ti)
            );
        }
    }
}
