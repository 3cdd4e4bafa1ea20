//! The network and its training machinery, on candle.

pub mod average;
pub mod conv;
pub mod depthwise;
pub mod fused;
pub mod loss;
pub mod model;
pub mod optim;
pub mod params;
#[cfg(test)]
pub(crate) mod test_support;

use candle_core::{CpuStorage, Layout, Result, bail};

/// The f32 values of a contiguous CPU tensor, for the custom ops; `op` names it in errors.
pub(crate) fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: input must be contiguous"),
    }
}
