//! The multi-task CNN: a stack of convolution + batch-norm + ReLU layers (plain 3x3, or
//! MobileNet-style depthwise-separable blocks) with 2x2 max-pooling or strided convolutions,
//! pooling of the last map (a global average, or learned weights per channel and position),
//! and two heads: age (a distribution over whole years, or a single regressed value) and
//! gender (one logit for "female").
//!
//! Weights are named as the ONNX initializers will be (`conv3.weight`, `age_head.bias`...).

use anyhow::{Result, bail, ensure};
use candle_core::{D, DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::conv::conv2d_cnhw;
use super::depthwise::depthwise3x3_cnhw;
use super::params::{Params, Role};

const BN_EPS: f64 = super::fused::BN_EPS as f64;
const BN_MOMENTUM: f64 = 0.1;

/// How the age head predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AgeHead {
    /// Softmax over ages `0..=max_age` (label-distribution learning). The age read out is its
    /// median ([`median_age`]), the spread its standard deviation; training's L1 term is on its
    /// mean, which has a gradient everywhere.
    Distribution { max_age: usize },
    /// One linear output in years.
    Regression,
}

/// How the last feature map becomes the features the heads read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Global average: every position of the map counts the same.
    #[default]
    Average,
    /// One learned weight per channel and position (MobileFaceNet's "global depthwise
    /// convolution"), started at the average: a face is aligned, so where a feature fires
    /// (eyes, forehead, mouth) carries information an average throws away.
    Learned,
}

impl Pooling {
    fn is_average(&self) -> bool {
        *self == Pooling::Average
    }
}

/// One step of the trunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layer {
    /// 3x3 convolution + batch norm + ReLU.
    Conv { out: usize, stride: usize },
    /// 3x3 depthwise convolution, then 1x1 convolution, each + batch norm + ReLU (MobileNet).
    Separable { out: usize, stride: usize },
    /// 2x2 max-pool.
    Pool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    pub input_size: u32,
    /// Shorthand for plain nets (and the format of older runs): output channels of each 3x3
    /// convolution, stage by stage, each stage ending in a 2x2 max-pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Vec<usize>>,
    /// The trunk layer by layer (used when given, instead of `stages`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    /// Older runs have no field here: they pooled by average.
    #[serde(default, skip_serializing_if = "Pooling::is_average")]
    pub pooling: Pooling,
    pub age_head: AgeHead,
}

const AGES: AgeHead = AgeHead::Distribution { max_age: 100 };

impl NetConfig {
    fn plain(input_size: u32, stages: Vec<Vec<usize>>) -> Self {
        Self { input_size, stages, layers: Vec::new(), pooling: Pooling::Average, age_head: AGES }
    }

    /// MobileNet-style blocks (0.21 M parameters, 20 M multiply-adds at 96x96). Measured
    /// against [`NetConfig::standard`]: a fifth of the multiply-adds, yet slower in tract 0.23
    /// (6.6 against 3.9 ms per face on one x86 core: its depthwise and 1x1 convolutions are
    /// memory-bound) and less accurate (test MAE 6.30 against 6.08, mirrored).
    pub fn separable(input_size: u32) -> Self {
        use Layer::*;
        Self {
            input_size,
            stages: Vec::new(),
            layers: vec![
                Conv { out: 24, stride: 2 },
                Separable { out: 48, stride: 1 },
                Pool,
                Separable { out: 64, stride: 1 },
                Separable { out: 96, stride: 1 },
                Pool,
                Separable { out: 128, stride: 1 },
                Separable { out: 160, stride: 1 },
                Pool,
                Separable { out: 256, stride: 1 },
                Separable { out: 320, stride: 1 },
            ],
            pooling: Pooling::Average,
            age_head: AGES,
        }
    }

    /// The shipped design: six plain 3x3 convolutions (32-48-64-96-128-160) on a 64x64 face,
    /// 0.41 M parameters, 100 M multiply-adds.
    pub fn standard(input_size: u32) -> Self {
        Self::plain(input_size, vec![vec![32], vec![48, 64], vec![96, 128], vec![160]])
    }

    /// The standard design at twice the channels (64-96-128-192-256-320): 1.6 M parameters,
    /// 400 M multiply-adds at 64x64. A teacher, not a file for the board: its int8 file would
    /// be four times the 500 KB bar and its reading four times the time.
    pub fn wide(input_size: u32) -> Self {
        Self::plain(input_size, vec![vec![64], vec![96, 128], vec![192, 256], vec![320]])
    }

    /// A very small net for tests and smoke runs.
    pub fn tiny(input_size: u32) -> Self {
        Self::plain(input_size, vec![vec![8], vec![16], vec![16]])
    }

    /// The PyTorch reference net of DESIGN.md (4 conv 32/64/128/128), for speed comparisons.
    pub fn reference(input_size: u32) -> Self {
        Self::plain(input_size, vec![vec![32], vec![64], vec![128], vec![128]])
    }

    /// The trunk layer by layer.
    pub fn trunk(&self) -> Vec<Layer> {
        if !self.layers.is_empty() {
            return self.layers.clone();
        }
        let mut layers = Vec::new();
        for stage in &self.stages {
            layers.extend(stage.iter().map(|&out| Layer::Conv { out, stride: 1 }));
            layers.push(Layer::Pool);
        }
        layers
    }

    /// The convolutions of the trunk: (kernel, stride, depthwise, in, out) and the spatial
    /// size each works at, in order.
    fn convs(&self) -> Vec<(usize, usize, bool, usize, usize, u64)> {
        let mut out = Vec::new();
        let (mut c, mut size) = (3usize, self.input_size as u64);
        for layer in self.trunk() {
            match layer {
                Layer::Conv { out: o, stride } => {
                    size = size.div_ceil(stride as u64);
                    out.push((3, stride, false, c, o, size));
                    c = o;
                }
                Layer::Separable { out: o, stride } => {
                    size = size.div_ceil(stride as u64);
                    out.push((3, stride, true, c, c, size));
                    out.push((1, 1, false, c, o, size));
                    c = o;
                }
                Layer::Pool => size /= 2,
            }
        }
        out
    }

    pub fn validate(&self) -> Result<()> {
        let trunk = self.trunk();
        ensure!(trunk.iter().any(|l| !matches!(l, Layer::Pool)), "the net needs a convolution");
        let mut size = self.input_size;
        for layer in &trunk {
            let factor = match layer {
                Layer::Pool => 2,
                Layer::Conv { stride, .. } | Layer::Separable { stride, .. } => *stride as u32,
            };
            ensure!(
                factor >= 1 && size.is_multiple_of(factor),
                "input size {} does not divide down through {trunk:?}",
                self.input_size
            );
            size /= factor;
        }
        Ok(())
    }

    /// Side of the last feature map.
    pub fn final_size(&self) -> usize {
        self.trunk().iter().fold(self.input_size as usize, |size, layer| match layer {
            Layer::Pool => size / 2,
            Layer::Conv { stride, .. } | Layer::Separable { stride, .. } => size.div_ceil(*stride),
        })
    }

    pub fn feature_channels(&self) -> usize {
        self.convs().last().map_or(0, |c| c.4)
    }

    pub fn age_bins(&self) -> usize {
        match self.age_head {
            AgeHead::Distribution { max_age } => max_age + 1,
            AgeHead::Regression => 1,
        }
    }

    /// Multiply-accumulates of one forward pass, for throughput figures.
    pub fn macs(&self) -> u64 {
        let trunk: u64 = self
            .convs()
            .iter()
            .map(|&(k, _, depthwise, c, o, size)| {
                let per_pixel = if depthwise { c * k * k } else { o * c * k * k };
                per_pixel as u64 * size * size
            })
            .sum();
        let pooling = match self.pooling {
            Pooling::Average => 0,
            Pooling::Learned => (self.feature_channels() * self.final_size().pow(2)) as u64,
        };
        trunk + pooling + self.feature_channels() as u64 * (self.age_bins() as u64 + 1)
    }
}

/// What a convolution layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    /// `kernel x kernel` over all input channels (padding keeps the size at stride 1).
    Full { kernel: usize, stride: usize },
    /// 3x3, one filter per channel.
    Depthwise { stride: usize },
}

pub struct ConvBnRelu {
    pub name: String,
    pub kind: ConvKind,
    pub weight: Var,
    pub gamma: Var,
    pub beta: Var,
    pub running_mean: Var,
    pub running_var: Var,
}

impl ConvBnRelu {
    fn new(params: &mut Params, name: String, kind: ConvKind, inputs: usize, outputs: usize) -> Result<Self> {
        let (shape, fan_in) = match kind {
            ConvKind::Full { kernel, .. } => ([outputs, inputs, kernel, kernel], inputs * kernel * kernel),
            ConvKind::Depthwise { .. } => ([outputs, 1, 3, 3], 9),
        };
        Ok(Self {
            // He initialisation for ReLU.
            weight: params.normal(
                &format!("{name}.weight"),
                &shape,
                (2.0 / fan_in as f32).sqrt(),
                Role::Weight,
            )?,
            gamma: params.constant(&format!("{name}.bn.weight"), &[outputs], 1.0, Role::NoDecay)?,
            beta: params.constant(&format!("{name}.bn.bias"), &[outputs], 0.0, Role::NoDecay)?,
            running_mean: params.constant(
                &format!("{name}.bn.running_mean"),
                &[outputs],
                0.0,
                Role::Buffer,
            )?,
            running_var: params.constant(&format!("{name}.bn.running_var"), &[outputs], 1.0, Role::Buffer)?,
            name,
            kind,
        })
    }

    fn convolve(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.kind {
            ConvKind::Full { kernel, stride } => conv2d_cnhw(x, &self.weight, stride, kernel / 2)?,
            ConvKind::Depthwise { stride } => depthwise3x3_cnhw(x, &self.weight, stride)?,
        })
    }
}

/// A step of the built trunk.
pub enum Block {
    Conv(ConvBnRelu),
    Pool,
}

pub struct Linear {
    pub name: String,
    pub weight: Var,
    pub bias: Var,
}

impl Linear {
    fn new(params: &mut Params, name: &str, inputs: usize, outputs: usize, bias: f32) -> Result<Self> {
        let std = (1.0 / inputs as f32).sqrt();
        Ok(Self {
            name: name.to_string(),
            weight: params.normal(&format!("{name}.weight"), &[outputs, inputs], std, Role::Weight)?,
            bias: params.constant(&format!("{name}.bias"), &[outputs], bias, Role::NoDecay)?,
        })
    }

    /// `[N, inputs] -> [N, outputs]`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// What the net says about a batch.
pub struct NetOutput {
    /// `[N, bins]` logits of the age distribution (distribution head only).
    pub age_logits: Option<Tensor>,
    /// `[N, bins]` the distribution itself, their softmax (distribution head only).
    pub age_probs: Option<Tensor>,
    /// `[N]` age in years, differentiable: the distribution's mean, or the regression output.
    pub age: Tensor,
    /// `[N]` logit of "female".
    pub female_logit: Tensor,
}

impl NetOutput {
    /// `[N]` the age as the exported file reads it out (the median of the distribution), for
    /// reports; no gradient.
    pub fn age_reading(&self) -> Result<Tensor> {
        match &self.age_probs {
            Some(probs) => median_age(&probs.detach()),
            None => Ok(self.age.detach()),
        }
    }
}

/// Guards the division in [`median_age`] where a bin holds no probability.
pub const MEDIAN_EPSILON: f32 = 1e-12;

/// Median of `[N, bins]` distributions over whole years, each bin's probability spread evenly
/// over `[age - 0.5, age + 0.5]`, clamped to `0..=bins-1`. The median is the reading with the
/// least expected absolute error (the mean minimises the squared error instead): on the shipped
/// model it lowers the validation MAE from 5.54 to 5.43. Each bin contributes the part of it
/// that lies below the median, `clamp((0.5 - mass before it) / its mass, 0, 1)`: elementwise
/// operations only, so the exported graph needs no gather.
pub fn median_age(probs: &Tensor) -> Result<Tensor> {
    let (_, bins) = probs.dims2()?;
    let before = (probs.cumsum(1)? - probs)?;
    let share = (before.affine(-1.0, 0.5)? / (probs + MEDIAN_EPSILON as f64)?)?.clamp(0.0, 1.0)?;
    Ok((share.sum(1)? - 0.5)?.clamp(0.0, (bins - 1) as f64)?)
}

pub struct AgeGenderNet {
    pub config: NetConfig,
    pub blocks: Vec<Block>,
    /// `[C, S, S]` weights of [`Pooling::Learned`].
    pub pool_weight: Option<Var>,
    pub age_head: Linear,
    pub gender_head: Linear,
    /// `[bins]` ages 0..=max_age, for the expected value.
    ages: Tensor,
}

impl AgeGenderNet {
    pub fn new(config: NetConfig, params: &mut Params) -> Result<Self> {
        config.validate()?;
        let mut blocks = Vec::new();
        let mut channels = 3;
        let mut count = 0;
        let mut next_name = || {
            count += 1;
            format!("conv{count}")
        };
        for layer in config.trunk() {
            match layer {
                Layer::Conv { out, stride } => {
                    let kind = ConvKind::Full { kernel: 3, stride };
                    blocks.push(Block::Conv(ConvBnRelu::new(params, next_name(), kind, channels, out)?));
                    channels = out;
                }
                Layer::Separable { out, stride } => {
                    let dw = ConvBnRelu::new(
                        params,
                        next_name(),
                        ConvKind::Depthwise { stride },
                        channels,
                        channels,
                    )?;
                    let pw = ConvBnRelu::new(
                        params,
                        next_name(),
                        ConvKind::Full { kernel: 1, stride: 1 },
                        channels,
                        out,
                    )?;
                    blocks.extend([Block::Conv(dw), Block::Conv(pw)]);
                    channels = out;
                }
                Layer::Pool => blocks.push(Block::Pool),
            }
        }
        let features = config.feature_channels();
        let pool_weight = match config.pooling {
            Pooling::Average => None,
            Pooling::Learned => {
                let side = config.final_size();
                // Starts as the average; decay would pull it towards "no features at all".
                let average = 1.0 / (side * side) as f32;
                Some(params.constant("pool.weight", &[features, side, side], average, Role::NoDecay)?)
            }
        };
        let (bins, age_bias) = match config.age_head {
            AgeHead::Distribution { max_age } => (max_age + 1, 0.0),
            // Start near the typical age so early steps are not spent walking there.
            AgeHead::Regression => (1, 30.0),
        };
        let age_head = Linear::new(params, "age_head", features, bins, age_bias)?;
        let gender_head = Linear::new(params, "gender_head", features, 1, 0.0)?;
        let ages = Tensor::arange(0f32, bins as f32, params.device())?;
        Ok(Self { config, blocks, pool_weight, age_head, gender_head, ages })
    }

    /// The convolution layers in order.
    pub fn convs(&self) -> impl Iterator<Item = &ConvBnRelu> {
        self.blocks.iter().filter_map(|b| match b {
            Block::Conv(c) => Some(c),
            Block::Pool => None,
        })
    }

    /// `x`: `[3, N, S, S]` normalised input in CNHW layout. `train` uses batch statistics and
    /// updates the running ones.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<NetOutput> {
        let mut h = x.clone();
        for block in &self.blocks {
            h = match block {
                Block::Conv(conv) => batch_norm_relu(&conv.convolve(&h)?, conv, train)?,
                Block::Pool => max_pool_2x2(&h)?,
            };
        }
        // [C, N, h, w] -> [N, C]
        let pooled = match &self.pool_weight {
            Some(w) => h.broadcast_mul(&w.unsqueeze(1)?)?.sum(D::Minus1)?.sum(D::Minus1)?,
            None => h.mean(D::Minus1)?.mean(D::Minus1)?,
        };
        let features = pooled.t()?;
        let female_logit = self.gender_head.forward(&features)?.squeeze(1)?;
        match self.config.age_head {
            AgeHead::Distribution { .. } => {
                let logits = self.age_head.forward(&features)?;
                // Not `softmax_last_dim`: that fused op has no backward pass, and the L1 term
                // on this expected age would then train nothing.
                let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
                let age = probs.matmul(&self.ages.unsqueeze(1)?)?.squeeze(1)?;
                Ok(NetOutput { age_logits: Some(logits), age_probs: Some(probs), age, female_logit })
            }
            AgeHead::Regression => {
                let age = self.age_head.forward(&features)?.squeeze(1)?;
                Ok(NetOutput { age_logits: None, age_probs: None, age, female_logit })
            }
        }
    }

    /// Re-estimates every batch norm's running statistics over `batches` (CNHW inputs, as
    /// [`forward`](Self::forward) takes), replacing them: the mean and variance of what each
    /// batch norm is fed in training mode, pooled over all batches (PreciseBN, Wu & Johnson
    /// 2021). Training's running statistics are a momentum average of the last few augmented
    /// batches, so they move from epoch to epoch even when the weights hardly do, and they
    /// describe augmented faces rather than the plain crops the board reads. Returns the number
    /// of images seen.
    pub fn recalibrate_batch_norm(&self, batches: impl IntoIterator<Item = Result<Tensor>>) -> Result<usize> {
        let convs: Vec<&ConvBnRelu> = self.convs().collect();
        // Per layer and channel, in f64: the sums over batches of count x mean and of
        // count x E[x^2]; and per layer the total count.
        let mut sums: Vec<(Vec<f64>, Vec<f64>, usize)> = Vec::new();
        for conv in &convs {
            let channels = conv.running_mean.dim(0)?;
            sums.push((vec![0.0; channels], vec![0.0; channels], 0));
        }
        let mut images = 0;
        for batch in batches {
            let mut h = batch?.detach();
            images += h.dim(1)?;
            let mut layer = 0;
            for block in &self.blocks {
                h = match block {
                    Block::Conv(conv) => {
                        let (y, stats) = batch_norm_relu_batch_stats(&conv.convolve(&h)?, conv)?;
                        let (mean_sums, square_sums, count) = &mut sums[layer];
                        let means = stats.mean.to_vec1::<f32>()?;
                        let vars = stats.biased_var.to_vec1::<f32>()?;
                        let weight = stats.count as f64;
                        for (k, (&m, &v)) in means.iter().zip(&vars).enumerate() {
                            mean_sums[k] += weight * m as f64;
                            square_sums[k] += weight * (v as f64 + m as f64 * m as f64);
                        }
                        *count += stats.count;
                        layer += 1;
                        y.detach()
                    }
                    Block::Pool => max_pool_2x2(&h)?,
                };
            }
        }
        ensure!(images > 0, "no images to re-estimate the batch-norm statistics on");
        for (conv, (mean_sums, square_sums, count)) in convs.iter().zip(sums) {
            let n = count as f64;
            let means: Vec<f32> = mean_sums.iter().map(|s| (s / n) as f32).collect();
            // Unbiased, as training keeps it.
            let vars: Vec<f32> = mean_sums
                .iter()
                .zip(&square_sums)
                .map(|(s, q)| ((q / n - (s / n).powi(2)).max(0.0) * n / (n - 1.0).max(1.0)) as f32)
                .collect();
            let device = conv.running_mean.device();
            conv.running_mean.set(&Tensor::new(means, device)?)?;
            conv.running_var.set(&Tensor::new(vars, device)?)?;
        }
        Ok(images)
    }

    /// Inference as the exported file does it: age and p(female), each `[N]`. With `mirror`,
    /// every face is also read mirrored and the two readings' probabilities averaged
    /// (test-time augmentation).
    pub fn infer(&self, x: &Tensor, mirror: bool) -> Result<(Tensor, Tensor)> {
        if matches!(self.config.age_head, AgeHead::Distribution { .. }) {
            let (probs, female) = self.infer_distribution(x, mirror)?;
            return Ok((median_age(&probs)?, female));
        }
        let n = x.dim(1)?;
        let input = if mirror { with_mirror_images(x)? } else { x.clone() };
        let copies = if mirror { 2 } else { 1 };
        let out = self.forward(&input, false)?;
        let female = candle_nn::ops::sigmoid(&out.female_logit)?.reshape((copies, n))?.mean(0)?;
        Ok((out.age.reshape((copies, n))?.mean(0)?, female))
    }

    /// The age distribution `[N, bins]` and p(female) `[N]` that [`Self::infer`] reads, for a
    /// net with the distribution head (what a teacher hands on in distillation).
    pub fn infer_distribution(&self, x: &Tensor, mirror: bool) -> Result<(Tensor, Tensor)> {
        let n = x.dim(1)?;
        let input = if mirror { with_mirror_images(x)? } else { x.clone() };
        let copies = if mirror { 2 } else { 1 };
        let out = self.forward(&input, false)?;
        let female = candle_nn::ops::sigmoid(&out.female_logit)?.reshape((copies, n))?.mean(0)?;
        let probs =
            out.age_probs.as_ref().ok_or_else(|| anyhow::anyhow!("the net has no age distribution head"))?;
        Ok((probs.reshape((copies, n, probs.dim(1)?))?.mean(0)?, female))
    }
}

/// Batch norm over (N, H, W) per channel, then ReLU, on a CNHW tensor. Training uses the
/// batch statistics and folds them into the running ones.
fn batch_norm_relu(x: &Tensor, conv: &ConvBnRelu, train: bool) -> Result<Tensor> {
    if train {
        let (y, stats) = batch_norm_relu_batch_stats(x, conv)?;
        update_running(conv, &stats.mean, &stats.biased_var, stats.count)?;
        return Ok(y);
    }
    let (mean, var) = (conv.running_mean.unsqueeze(1)?, conv.running_var.unsqueeze(1)?);
    normalise_relu(x, &mean, &var, conv)
}

/// `relu(gamma (x - mean) / sqrt(var + eps) + beta)` per channel of a CNHW tensor, with
/// `mean` and `var` as `[C, 1]`.
fn normalise_relu(x: &Tensor, mean: &Tensor, var: &Tensor, conv: &ConvBnRelu) -> Result<Tensor> {
    let (c, n, h, w) = x.dims4()?;
    let flat = x.reshape((c, n * h * w))?;
    let scale = (conv.gamma.unsqueeze(1)? / (var + BN_EPS)?.sqrt()?)?;
    let shift = (conv.beta.unsqueeze(1)? - mean.broadcast_mul(&scale)?)?;
    let y = flat.broadcast_mul(&scale)?.broadcast_add(&shift)?.relu()?;
    Ok(y.reshape((c, n, h, w))?)
}

/// One batch's per-channel statistics (outside the gradient).
struct BatchStats {
    mean: Tensor,
    biased_var: Tensor,
    /// Values per channel they were taken over (N x H x W).
    count: usize,
}

/// Training-mode batch norm + ReLU: normalises with the batch's own statistics (the gradient
/// flows through them) and returns them.
fn batch_norm_relu_batch_stats(x: &Tensor, conv: &ConvBnRelu) -> Result<(Tensor, BatchStats)> {
    let (c, n, h, w) = x.dims4()?;
    let count = n * h * w;
    if x.device().is_cpu() {
        let (y, stats) = super::fused::bn_relu_train(x, &conv.gamma, &conv.beta)?;
        let means: Vec<f32> = stats.iter().map(|s| s.0).collect();
        let vars: Vec<f32> = stats.iter().map(|s| s.1).collect();
        let stats = BatchStats {
            mean: Tensor::new(means, x.device())?,
            biased_var: Tensor::new(vars, x.device())?,
            count,
        };
        return Ok((y, stats));
    }
    let flat = x.reshape((c, count))?;
    let mean = flat.mean_keepdim(1)?;
    let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
    let y = normalise_relu(x, &mean, &var, conv)?;
    let stats = BatchStats { mean: mean.detach().squeeze(1)?, biased_var: var.detach().squeeze(1)?, count };
    Ok((y, stats))
}

/// Running statistics are bookkeeping outside the gradient; the variance kept is unbiased.
fn update_running(conv: &ConvBnRelu, mean: &Tensor, biased_var: &Tensor, m: usize) -> Result<()> {
    let unbiased = (biased_var * (m as f64 / (m.max(2) - 1) as f64))?;
    let rm = ((conv.running_mean.as_tensor() * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?;
    let rv = ((conv.running_var.as_tensor() * (1.0 - BN_MOMENTUM))? + (unbiased * BN_MOMENTUM)?)?;
    conv.running_mean.set(&rm)?;
    conv.running_var.set(&rv)?;
    Ok(())
}

/// 2x2 max-pool of a CNHW tensor: a fused kernel on the CPU, reshape-and-max elsewhere.
/// (candle 0.11's `max_pool2d` backward returns gradients 1/k^2 too small; both forms here
/// have exact gradients, tested against each other.)
fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (c, n, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        bail!("max_pool_2x2 needs even sizes, got {h}x{w}");
    }
    if x.device().is_cpu() {
        return Ok(super::fused::max_pool_2x2(x)?);
    }
    Ok(x.reshape((c, n, h / 2, 2, w / 2, 2))?.max(5)?.max(3)?)
}

/// `[C, N, H, W]` -> `[C, 2N, H, W]`: the N images, then each mirrored left to right.
pub fn with_mirror_images(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(3)?;
    let reversed = Tensor::new((0..w as u32).rev().collect::<Vec<u32>>(), x.device())?;
    Ok(Tensor::cat(&[x, &x.index_select(&reversed, 3)?], 1)?)
}

/// Converts an NCHW batch into the net's CNHW layout.
pub fn to_cnhw(x: &Tensor) -> Result<Tensor> {
    Ok(x.transpose(0, 1)?.contiguous()?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_support::{gradient_size, max_diff, net_and_batch, random};
    use candle_core::Device;

    #[test]
    fn forward_shapes_and_parameter_budget() {
        let mut params = Params::new(0, &Device::Cpu);
        let net = AgeGenderNet::new(NetConfig::tiny(32), &mut params).unwrap();
        let x = Tensor::zeros((3, 5, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let out = net.forward(&x, true).unwrap();
        assert_eq!(out.age.dims(), &[5]);
        assert_eq!(out.female_logit.dims(), &[5]);
        assert_eq!(out.age_logits.unwrap().dims(), &[5, 101]);

        let mut params = Params::new(0, &Device::Cpu);
        let net = AgeGenderNet::new(NetConfig::standard(64), &mut params).unwrap();
        let n = params.count_trainable();
        assert!(n < 450_000, "standard net has {n} parameters, over the int8 file budget");
        let x = Tensor::zeros((3, 2, 64, 64), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x, true).unwrap().age.dims(), &[2]);

        let mut params = Params::new(0, &Device::Cpu);
        let net = AgeGenderNet::new(NetConfig::separable(96), &mut params).unwrap();
        assert_eq!(params.count_trainable(), 210_134);
        let x = Tensor::zeros((3, 2, 96, 96), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x, true).unwrap().age.dims(), &[2]);
        assert_eq!(NetConfig::separable(96).macs(), 20_133_888);

        // The teacher: about four times the standard net's parameters and multiply-adds.
        let mut params = Params::new(0, &Device::Cpu);
        let net = AgeGenderNet::new(NetConfig::wide(64), &mut params).unwrap();
        let n = params.count_trainable();
        assert!((1_500_000..1_800_000).contains(&n), "wide net has {n} parameters");
        let ratio = NetConfig::wide(64).macs() as f64 / NetConfig::standard(64).macs() as f64;
        assert!((3.5..4.2).contains(&ratio), "wide net has {ratio:.2} times the work");
        let x = Tensor::zeros((3, 2, 64, 64), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x, true).unwrap().age.dims(), &[2]);
    }

    /// The median found by walking the piecewise-uniform CDF bin by bin.
    fn walked_median(p: &[f32]) -> f32 {
        let mut below = 0.0;
        for (age, &mass) in p.iter().enumerate() {
            if below + mass >= 0.5 {
                return age as f32 - 0.5 + (0.5 - below) / mass;
            }
            below += mass;
        }
        p.len() as f32 - 0.5
    }

    #[test]
    fn the_median_age_is_the_middle_of_the_distribution() {
        let bins = 101;
        let mut rows = vec![vec![0f32; bins]; 4];
        rows[0][30] = 1.0; // all at 30: 30
        (rows[1][10], rows[1][11]) = (0.5, 0.5); // even over [9.5, 11.5]: 10.5
        rows[2][0] = 1.0; // clamped at 0, not -0.5 + 0.5
        // Skewed: a random smooth distribution with a long tail to the old side, where the
        // mean lies more than a year above the median.
        let mut state = 7u32;
        let raw: Vec<f32> = (0..bins)
            .map(|a| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let jitter = 1.0 + (state >> 8) as f32 / (1u32 << 24) as f32;
                jitter * (-((a as f32 - 25.0) / if a < 25 { 4.0 } else { 20.0 }).powi(2)).exp()
            })
            .collect();
        let total: f32 = raw.iter().sum();
        rows[3] = raw.iter().map(|v| v / total).collect();
        let probs = Tensor::new(rows.clone(), &Device::Cpu).unwrap();
        let got = median_age(&probs).unwrap().to_vec1::<f32>().unwrap();
        assert!((got[0] - 30.0).abs() < 1e-4, "{}", got[0]);
        assert!((got[1] - 10.5).abs() < 1e-4, "{}", got[1]);
        assert_eq!(got[2], 0.0);
        let walked = walked_median(&rows[3]);
        assert!((got[3] - walked).abs() < 1e-3, "{} vs {walked}", got[3]);
        let mean: f32 = rows[3].iter().enumerate().map(|(a, p)| a as f32 * p).sum();
        assert!(mean - got[3] > 1.0, "the test distribution is skewed: mean {mean}, median {}", got[3]);
    }

    #[test]
    fn the_expected_age_passes_gradients_to_the_age_head() {
        // The L1 term of LDL is on the expected age; without a gradient through the softmax
        // it would be reported in the loss and train nothing (candle's fused
        // `softmax_last_dim` has no backward pass).
        let (_, net, x) = net_and_batch(NetConfig::tiny(16), 3);
        let out = net.forward(&x, true).unwrap();
        let grads = out.age.sum_all().unwrap().backward().unwrap();
        assert!(gradient_size(&grads, &net.age_head.weight, "the age head") > 0.0);
    }

    #[test]
    fn learned_pooling_starts_as_the_average_and_then_learns() {
        let with = |pooling| net_and_batch(NetConfig { pooling, ..NetConfig::tiny(32) }, 7);
        let (average_params, average, x) = with(Pooling::Average);
        let (learned_params, learned, _) = with(Pooling::Learned);
        // One weight per channel (16) and position of the last 4x4 map.
        assert_eq!(learned_params.count_trainable(), average_params.count_trainable() + 16 * 4 * 4);
        let a = average.forward(&x, false).unwrap();
        let l = learned.forward(&x, false).unwrap();
        let diff = max_diff(&a.age, &l.age);
        assert!(diff < 1e-4, "learned pooling starts {diff} years away from the average");

        let grads = l.age.sum_all().unwrap().backward().unwrap();
        let pool = learned.pool_weight.as_ref().unwrap();
        assert!(gradient_size(&grads, pool, "the pooling weights") > 0.0);
    }

    #[test]
    fn runs_from_before_learned_pooling_read_as_average_pooling() {
        let mut config = serde_json::to_value(NetConfig::standard(64)).unwrap();
        assert!(config.get("pooling").is_none(), "average pooling is written as before");
        let old: NetConfig = serde_json::from_value(config.clone()).unwrap();
        assert_eq!(old.pooling, Pooling::Average);
        config["pooling"] = "learned".into();
        let new: NetConfig = serde_json::from_value(config).unwrap();
        assert_eq!(new.pooling, Pooling::Learned);
        assert_eq!(new.final_size(), 4);
        assert_eq!(new.macs() - NetConfig::standard(64).macs(), 160 * 4 * 4);
    }

    #[test]
    fn max_pool_gradient_goes_to_the_maximum_only() {
        let x = Var::from_tensor(
            &Tensor::from_vec(
                vec![1f32, 5., 2., 0., 3., 4., 9., 8., 7., 6., 1., 1., 0., 0., 0., 2.],
                (1, 1, 4, 4),
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        let y = max_pool_2x2(&x).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5., 9., 7., 2.]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, vec![0., 1., 0., 0., 0., 0., 1., 0., 1., 0., 0., 0., 0., 0., 0., 1.]);
    }

    #[test]
    fn recalibrated_statistics_are_the_pooled_ones_of_all_batches() {
        let (_, net, _) = net_and_batch(NetConfig::tiny(16), 3);
        let convs: Vec<&ConvBnRelu> = net.convs().collect();
        // Stale statistics first: the result must not depend on them.
        for conv in &convs {
            let c = conv.running_mean.dim(0).unwrap();
            conv.running_mean.set(&Tensor::full(7f32, c, &Device::Cpu).unwrap()).unwrap();
            conv.running_var.set(&Tensor::full(9f32, c, &Device::Cpu).unwrap()).unwrap();
        }
        // Two batches of unlike faces: pooling them is not averaging their variances.
        let a = random(&[3, 6, 16, 16], 11);
        let b = ((random(&[3, 4, 16, 16], 12) * 3.0).unwrap() + 1.0).unwrap();
        let images = net.recalibrate_batch_norm([Ok(a.clone()), Ok(b.clone())]).unwrap();
        assert_eq!(images, 10);

        // The first layer sees the images themselves: its statistics are those of its
        // convolution over all ten, per channel, the variance unbiased.
        let first = convs[0];
        let y = first.convolve(&Tensor::cat(&[&a, &b], 1).unwrap()).unwrap();
        let (c, n, h, w) = y.dims4().unwrap();
        let flat = y.reshape((c, n * h * w)).unwrap();
        let mean = flat.mean(1).unwrap();
        let var = (flat.broadcast_sub(&mean.unsqueeze(1).unwrap()).unwrap().sqr().unwrap().sum(1).unwrap()
            / (n * h * w - 1) as f64)
            .unwrap();
        assert!(max_diff(&mean, first.running_mean.as_tensor()) < 1e-5);
        assert!(max_diff(&var, first.running_var.as_tensor()) < 1e-4);
        for conv in &convs[1..] {
            let m = conv.running_mean.to_vec1::<f32>().unwrap();
            assert!(m.iter().all(|&v| v != 7.0 && v.is_finite()), "{}: {m:?}", conv.name);
        }

        // On a single batch, eval mode then reads it as training mode does (the same
        // statistics, but for the unbiased variance's n / (n - 1)).
        net.recalibrate_batch_norm([Ok(b.clone())]).unwrap();
        let eval = net.forward(&b, false).unwrap();
        let train = net.forward(&b, true).unwrap();
        let diff = max_diff(&train.female_logit, &eval.female_logit);
        assert!(diff < 2e-2, "eval vs training mode on the batch the statistics came from: {diff}");
        let none = std::iter::empty::<Result<Tensor>>();
        assert!(net.recalibrate_batch_norm(none).is_err(), "no images is an error, not NaN statistics");
    }

    #[test]
    fn batch_norm_normalises_in_training_and_tracks_running_statistics() {
        let mut params = Params::new(0, &Device::Cpu);
        let net = AgeGenderNet::new(NetConfig::tiny(8), &mut params).unwrap();
        let conv = net.convs().next().unwrap();
        let x = (Tensor::arange(0f32, 8.0 * 2.0 * 4.0 * 4.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 2, 4, 4))
            .unwrap()
            * 0.1)
            .unwrap();
        let y = batch_norm_relu(&x, conv, true).unwrap();
        // ReLU of a standardised channel: half the values are zero, the max is about 1.7.
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&a| a >= 0.0));
        let zeros = v[..32].iter().filter(|&&a| a == 0.0).count();
        assert_eq!(zeros, 16);
        let rm = conv.running_mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(rm[0] > 0.0, "running mean moved towards the batch mean");
    }
}
