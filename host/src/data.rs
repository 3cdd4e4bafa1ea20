//! Labelled face images and the split: the device library's (`faceage eval` on the board reads
//! them the same way), re-exported under the names the trainer has always used.

pub use faceage_device::labels::*;

/// Age bands are the board's: reports on both sides use the same ones.
pub use faceage_device::counts::{AGE_BANDS, age_band};

/// An independent seed for (`a`, `b`) under `seed`: every epoch's order and every batch's
/// augmentation can be drawn again on resume.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    fnv1a(seed, &[a.to_le_bytes(), b.to_le_bytes()].concat())
}

/// The faces one epoch reads, in order. With `band_balance` 0 every face once, shuffled; above
/// it, as many draws with replacement, each face weighted by its age band's share of
/// `samples` to the power `-band_balance` (1: every band drawn as often).
pub fn epoch_order(samples: &[Sample], band_balance: f64, rng: &mut impl rand::Rng) -> Vec<usize> {
    use rand::distr::Distribution;
    use rand::seq::SliceRandom;
    if band_balance <= 0.0 || samples.is_empty() {
        let mut order: Vec<usize> = (0..samples.len()).collect();
        order.shuffle(rng);
        return order;
    }
    let bands: Vec<usize> = samples.iter().map(|s| faceage_device::counts::age_band_index(s.age)).collect();
    let mut per_band = [0usize; AGE_BANDS.len()];
    bands.iter().for_each(|&b| per_band[b] += 1);
    let weights = bands.iter().map(|&b| (per_band[b] as f64 / samples.len() as f64).powf(-band_balance));
    let draw = rand::distr::weighted::WeightedIndex::new(weights).expect("positive, finite weights");
    (0..samples.len()).map(|_| draw.sample(rng)).collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// 900 faces of 20-39 and 100 of 60+.
    fn skewed() -> Vec<Sample> {
        (0..1000)
            .map(|i| Sample {
                path: format!("{i}.jpg").into(),
                age: if i < 900 { 30.0 } else { 70.0 },
                female: i % 2 == 0,
                race: None,
            })
            .collect()
    }

    fn old_share(order: &[usize]) -> f64 {
        order.iter().filter(|&&i| i >= 900).count() as f64 / order.len() as f64
    }

    #[test]
    fn an_epoch_reads_every_face_once_or_evens_out_the_age_bands() {
        let samples = skewed();
        let rng = || ChaCha8Rng::seed_from_u64(7);
        let plain = epoch_order(&samples, 0.0, &mut rng());
        let mut sorted = plain.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "every face once");
        assert_ne!(plain, sorted, "shuffled");
        assert_eq!(plain, epoch_order(&samples, 0.0, &mut rng()), "drawn again the same on resume");

        let even = epoch_order(&samples, 1.0, &mut rng());
        assert_eq!(even.len(), 1000);
        assert!((old_share(&even) - 0.5).abs() < 0.05, "both bands about as often: {}", old_share(&even));
        // Half-way: weights 0.9^-0.5 and 0.1^-0.5, the old drawn 100*3.16 / (100*3.16 + 900*1.05).
        let half = old_share(&epoch_order(&samples, 0.5, &mut rng()));
        assert!((half - 0.25).abs() < 0.04, "{half}");
        assert_eq!(even, epoch_order(&samples, 1.0, &mut rng()));
    }
}
