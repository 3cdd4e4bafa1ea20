//! A monotone piecewise-linear correction of the age reading, fitted on the validation split.
//!
//! Read as the median of its distribution, the net's age is still biased *given the reading*;
//! mapping each reading to the median true age of the faces read so (post-hoc calibration of
//! a regressor, fitted by least absolute deviations: what MAE counts) lowers the MAE per face.
//!
//! It is **off unless asked for** (`eval --age-map`, `export --age-map`): it pulls readings
//! toward the crowded twenties and thirties, so per face it errs less but per age band the
//! counts drift, and counts per band are what the board logs. `train` fits the map at its end,
//! so the choice costs no second run. What it did to the shipped nets is in the model card
//! (`models/MODEL_CARD.md`, "An age map").
//!
//! Five knots (0, 20, 40, 60, 100 years) keep it smooth enough to fit on two thousand faces;
//! slopes are held between 1/4 and 4 so that it stays increasing (readings keep their order)
//! and cannot magnify the net's noise much. The same map is applied by candle (`eval`, the
//! export check) and written into the exported graph (Sub, Relu, MatMul, Add).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Knots of the map, in years of the reading.
pub const KNOTS: [f32; 5] = [0.0, 20.0, 40.0, 60.0, 100.0];
const MIN_SLOPE: f32 = 0.25;
const MAX_SLOPE: f32 = 4.0;
/// Pull of each knot toward the identity, against the data's weights (each face weighs about
/// 1/|residual|, so about 0.2): decides only where a knot has few faces near it.
const IDENTITY_PULL: f64 = 1.0;
/// Residuals below this many years weigh as this: keeps the reweighting finite.
const RESIDUAL_FLOOR: f64 = 0.5;

/// Calibrated age at each knot; linear between knots, flat beyond the ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgeMap {
    pub knots: Vec<f32>,
    pub values: Vec<f32>,
}

impl AgeMap {
    pub const FILE: &'static str = "age-map.json";

    pub fn identity() -> Self {
        Self { knots: KNOTS.to_vec(), values: KNOTS.to_vec() }
    }

    /// Least-absolute-deviation fit of `truths` on `readings` (iteratively reweighted least
    /// squares), then the slope limits.
    pub fn fit(readings: &[f32], truths: &[f32]) -> Result<Self> {
        ensure!(
            readings.len() == truths.len(),
            "age map: {} readings for {} ages",
            readings.len(),
            truths.len()
        );
        ensure!(
            readings.iter().chain(truths).all(|v| v.is_finite()),
            "age map: a reading or an age is not a finite number"
        );
        let k = KNOTS.len();
        let rows: Vec<([f64; 2], usize)> = readings.iter().map(|&r| hat_weights(r)).collect();
        let mut values: Vec<f64> = KNOTS.iter().map(|&v| v as f64).collect();
        for _ in 0..100 {
            let mut a = vec![vec![0f64; k]; k];
            let mut b = vec![0f64; k];
            for i in 0..k {
                a[i][i] = IDENTITY_PULL;
                b[i] = IDENTITY_PULL * KNOTS[i] as f64;
            }
            for (([w0, w1], j), &y) in rows.iter().zip(truths) {
                let predicted = w0 * values[*j] + w1 * values[j + 1];
                let weight = 1.0 / (y as f64 - predicted).abs().max(RESIDUAL_FLOOR);
                let (p, q) = (*j, j + 1);
                a[p][p] += weight * w0 * w0;
                a[p][q] += weight * w0 * w1;
                a[q][p] += weight * w0 * w1;
                a[q][q] += weight * w1 * w1;
                b[p] += weight * w0 * y as f64;
                b[q] += weight * w1 * y as f64;
            }
            values = solve(a, b).context("age map: singular system")?;
        }
        let mut values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
        values[0] = values[0].max(0.0);
        for i in 1..k {
            let width = KNOTS[i] - KNOTS[i - 1];
            values[i] = values[i].clamp(values[i - 1] + MIN_SLOPE * width, values[i - 1] + MAX_SLOPE * width);
        }
        Ok(Self { knots: KNOTS.to_vec(), values })
    }

    pub fn apply(&self, reading: f32) -> f32 {
        let last = self.knots.len() - 1;
        if reading <= self.knots[0] {
            return self.values[0];
        }
        if reading >= self.knots[last] {
            return self.values[last];
        }
        let j = self.knots.windows(2).position(|w| reading < w[1]).unwrap_or(last - 1);
        let t = (reading - self.knots[j]) / (self.knots[j + 1] - self.knots[j]);
        self.values[j] + t * (self.values[j + 1] - self.values[j])
    }

    /// Per segment: its start, its end and its slope (the form the graph computes).
    pub fn segments(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let w = self.knots.windows(2);
        let starts = w.clone().map(|w| w[0]).collect();
        let ends = w.map(|w| w[1]).collect();
        let slopes = (0..self.knots.len() - 1)
            .map(|i| (self.values[i + 1] - self.values[i]) / (self.knots[i + 1] - self.knots[i]))
            .collect();
        (starts, ends, slopes)
    }

    /// `[N]` readings to `[N]` ages: `values[0] + sum(slope * (relu(r - start) - relu(r - end)))`.
    pub fn apply_tensor(&self, readings: &Tensor) -> Result<Tensor> {
        let device = readings.device();
        let (starts, ends, slopes) = self.segments();
        let segments = starts.len();
        let r = readings.unsqueeze(1)?;
        let row = |v: Vec<f32>| Tensor::from_vec(v, (1, segments), device);
        let inside = (r.broadcast_sub(&row(starts)?)?.relu()? - r.broadcast_sub(&row(ends)?)?.relu()?)?;
        let mapped = inside.matmul(&Tensor::from_vec(slopes, (segments, 1), device)?)?.squeeze(1)?;
        Ok((mapped + self.values[0] as f64)?)
    }

    pub fn load(run_dir: &Path) -> Result<Option<Self>> {
        let path = run_dir.join(Self::FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("{}: unreadable", path.display()))?;
        let map: Self =
            serde_json::from_str(&text).with_context(|| format!("{}: not an age map", path.display()))?;
        ensure!(
            map.knots.len() >= 2
                && map.knots.len() == map.values.len()
                && map.knots.windows(2).all(|w| w[0] < w[1])
                && map.values.iter().all(|v| v.is_finite()),
            "{}: knots must rise and pair with finite values",
            path.display()
        );
        Ok(Some(map))
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(Self::FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("{}: cannot write", path.display()))
    }
}

/// The two knots around `reading` and its weights on them.
fn hat_weights(reading: f32) -> ([f64; 2], usize) {
    let r = reading.clamp(KNOTS[0], KNOTS[KNOTS.len() - 1]);
    let j = KNOTS.windows(2).position(|w| r < w[1]).unwrap_or(KNOTS.len() - 2);
    let t = ((r - KNOTS[j]) / (KNOTS[j + 1] - KNOTS[j])) as f64;
    ([1.0 - t, t], j)
}

/// Gaussian elimination with partial pivoting (the system is 5x5).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (x, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0f64; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|c| a[row][c] * x[c]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn fit_recovers_a_known_map_through_heavy_tailed_noise() {
        let truth = AgeMap { knots: KNOTS.to_vec(), values: vec![1.0, 22.0, 36.0, 52.0, 90.0] };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let readings: Vec<f32> = (0..3000).map(|_| rng.random_range(0.0..100.0)).collect();
        // Symmetric noise with outliers: the median, not the mean, is what the fit must find.
        let ages: Vec<f32> = readings
            .iter()
            .map(|&r| {
                let noise = if rng.random_bool(0.1) {
                    rng.random_range(-40.0..40.0)
                } else {
                    rng.random_range(-3.0..3.0)
                };
                truth.apply(r) + noise
            })
            .collect();
        let fitted = AgeMap::fit(&readings, &ages).unwrap();
        for (f, t) in fitted.values.iter().zip(&truth.values) {
            assert!((f - t).abs() < 1.0, "fitted {:?}, true {:?}", fitted.values, truth.values);
        }
        assert!(AgeMap::fit(&[1.0, f32::NAN], &[1.0, 2.0]).is_err(), "a diverged net's readings are refused");
    }

    #[test]
    fn knots_without_faces_stay_near_the_identity_and_slopes_stay_bounded() {
        // Every face is read between 20 and 40 and is 10 years older than read: the map
        // shifts that segment, leaves the far knots near themselves, and stays increasing.
        let readings: Vec<f32> = (0..200).map(|i| 20.0 + i as f32 * 0.1).collect();
        let ages: Vec<f32> = readings.iter().map(|r| r + 10.0).collect();
        let map = AgeMap::fit(&readings, &ages).unwrap();
        assert!((map.apply(30.0) - 40.0).abs() < 1.0, "{map:?}");
        assert!((map.values[4] - 100.0).abs() < 15.0, "{map:?}");
        let (_, _, slopes) = map.segments();
        assert!(slopes.iter().all(|s| (MIN_SLOPE - 1e-4..=MAX_SLOPE + 1e-4).contains(s)), "{slopes:?}");
    }

    #[test]
    fn tensor_form_matches_the_scalar_form_inside_and_beyond_the_knots() {
        let map = AgeMap { knots: KNOTS.to_vec(), values: vec![2.0, 21.0, 37.0, 55.0, 96.0] };
        let readings = vec![-3.0f32, 0.0, 7.5, 20.0, 33.3, 59.9, 60.0, 85.0, 100.0, 120.0];
        let mapped = map
            .apply_tensor(&Tensor::new(readings.clone(), &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (r, m) in readings.iter().zip(&mapped) {
            assert!((map.apply(*r) - m).abs() < 1e-4, "reading {r}: {} vs {m}", map.apply(*r));
        }
        assert_eq!(AgeMap::identity().apply(42.5), 42.5);
    }

    #[test]
    fn a_damaged_map_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(AgeMap::load(dir.path()).unwrap(), None, "no file: no map");
        std::fs::write(dir.path().join(AgeMap::FILE), r#"{"knots":[0,50,40],"values":[0,1,2]}"#).unwrap();
        let err = format!("{:#}", AgeMap::load(dir.path()).unwrap_err());
        assert!(err.contains(AgeMap::FILE) && err.contains("rise"), "{err}");
        std::fs::write(dir.path().join(AgeMap::FILE), "{").unwrap();
        assert!(format!("{:#}", AgeMap::load(dir.path()).unwrap_err()).contains("not an age map"));
    }
}
