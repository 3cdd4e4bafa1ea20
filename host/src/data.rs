//! Labelled face images and the split: the device library's (`faceage eval` on the board reads
//! them the same way), re-exported under the names the trainer has always used.

pub use faceage_device::labels::*;

/// Age bands are the board's: reports on both sides use the same ones.
pub use faceage_device::bands::{AGE_BANDS, age_band};

/// An independent seed for (`a`, `b`) under `seed`: every epoch's order and every batch's
/// augmentation can be drawn again on resume.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    fnv1a(seed, &[a.to_le_bytes(), b.to_le_bytes()].concat())
}

/// The faces one epoch reads, in order. With both balances 0 every face once, shuffled; above
/// it, as many draws with replacement, each face weighted by
/// - its age band's share of `samples` to the power `-band_balance` (1: every band drawn as
///   often), and
/// - (its band's share over all faces / its band's share within its race group) to the power
///   `race_age_balance` (1: every race group's faces drawn with the same age mix; faces with no
///   race label weigh 1). At 1 the draws keep both the age bands' and the race groups' shares
///   of the data and make the two independent: UTKFace's Asian faces are 8% 40-59 against 24%
///   of its White ones, which could let a net learn "this group, so young" (the model card
///   measures what it changed: little).
///
/// With several sources (`source_weights[s]` for [`Sample::source`] `s`, 1 where not given),
/// each source's faces are drawn on their own, `weight` times its count of them (a fraction:
/// a fresh seeded choice of that many each epoch), the balances within each source, and all
/// the draws shuffled together.
pub fn epoch_order(
    samples: &[Sample],
    source_weights: &[f64],
    band_balance: f64,
    race_age_balance: f64,
    rng: &mut impl rand::Rng,
) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let weight = |source: u8| source_weights.get(source as usize).copied().unwrap_or(1.0);
    if samples.iter().all(|s| weight(s.source) == 1.0) {
        let all: Vec<usize> = (0..samples.len()).collect();
        return draws(samples, &all, samples.len(), band_balance, race_age_balance, rng);
    }
    let sources = samples.iter().map(|s| s.source as usize + 1).max().unwrap_or(0);
    let mut order = Vec::new();
    for source in 0..sources {
        let of_source: Vec<usize> =
            (0..samples.len()).filter(|&i| samples[i].source as usize == source).collect();
        let count = (weight(source as u8) * of_source.len() as f64).round() as usize;
        order.extend(draws(samples, &of_source, count, band_balance, race_age_balance, rng));
    }
    order.shuffle(rng);
    order
}

/// How many faces an [`epoch_order`] holds.
pub fn epoch_len(samples: &[Sample], source_weights: &[f64]) -> usize {
    let sources = samples.iter().map(|s| s.source as usize + 1).max().unwrap_or(0);
    (0..sources)
        .map(|source| {
            let n = samples.iter().filter(|s| s.source as usize == source).count();
            (source_weights.get(source).copied().unwrap_or(1.0) * n as f64).round() as usize
        })
        .sum()
}

/// `count` draws from `indices` (see [`epoch_order`]): with both balances 0, each face once per
/// whole pass and a seeded choice of the rest, shuffled; else weighted, with replacement.
fn draws(
    samples: &[Sample],
    indices: &[usize],
    count: usize,
    band_balance: f64,
    race_age_balance: f64,
    rng: &mut impl rand::Rng,
) -> Vec<usize> {
    use rand::distr::Distribution;
    use rand::seq::SliceRandom;
    if indices.is_empty() {
        return Vec::new();
    }
    if band_balance <= 0.0 && race_age_balance <= 0.0 {
        let mut order = Vec::with_capacity(count);
        while order.len() < count {
            let mut pass = indices.to_vec();
            pass.shuffle(rng);
            pass.truncate(count - order.len());
            order.extend(pass);
        }
        if count > indices.len() {
            order.shuffle(rng);
        }
        return order;
    }
    let bands: Vec<usize> =
        indices.iter().map(|&i| faceage_device::bands::age_band_index(samples[i].age)).collect();
    let mut per_band = [0usize; AGE_BANDS.len()];
    bands.iter().for_each(|&b| per_band[b] += 1);
    let mut per_race_band = [[0usize; AGE_BANDS.len()]; RACE_NAMES.len()];
    for (&i, &b) in indices.iter().zip(&bands) {
        if let Some(r) = samples[i].race {
            per_race_band[r as usize][b] += 1;
        }
    }
    let share = |count: usize, of: usize| count as f64 / of as f64;
    let weights = indices.iter().zip(&bands).map(|(&i, &b)| {
        let overall = share(per_band[b], indices.len());
        let race_age = samples[i].race.map_or(1.0, |r| {
            let counts = &per_race_band[r as usize];
            (overall / share(counts[b], counts.iter().sum())).powf(race_age_balance)
        });
        overall.powf(-band_balance) * race_age
    });
    let draw = rand::distr::weighted::WeightedIndex::new(weights).expect("positive, finite weights");
    (0..count).map(|_| indices[draw.sample(rng)]).collect()
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
                age_group: None,
                source: 0,
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
        let plain = epoch_order(&samples, &[], 0.0, 0.0, &mut rng());
        let mut sorted = plain.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "every face once");
        assert_ne!(plain, sorted, "shuffled");
        assert_eq!(plain, epoch_order(&samples, &[], 0.0, 0.0, &mut rng()), "drawn again the same on resume");

        let even = epoch_order(&samples, &[], 1.0, 0.0, &mut rng());
        assert_eq!(even.len(), 1000);
        assert!((old_share(&even) - 0.5).abs() < 0.05, "both bands about as often: {}", old_share(&even));
        // Half-way: weights 0.9^-0.5 and 0.1^-0.5, the old drawn 100*3.16 / (100*3.16 + 900*1.05).
        let half = old_share(&epoch_order(&samples, &[], 0.5, 0.0, &mut rng()));
        assert!((half - 0.25).abs() < 0.04, "{half}");
        assert_eq!(even, epoch_order(&samples, &[], 1.0, 0.0, &mut rng()));
    }

    #[test]
    fn race_age_balance_gives_every_race_group_the_same_age_mix() {
        // Group 0: 600 young, 200 old; group 2: 190 young, 10 old. All: 79% young, 21% old.
        let face = |i: usize, age: f32, race: u8| Sample {
            path: format!("{i}.jpg").into(),
            age,
            female: i.is_multiple_of(2),
            race: Some(race),
            age_group: None,
            source: 0,
        };
        let mut samples: Vec<Sample> = (0..600).map(|i| face(i, 30.0, 0)).collect();
        samples.extend((600..800).map(|i| face(i, 50.0, 0)));
        samples.extend((800..990).map(|i| face(i, 30.0, 2)));
        samples.extend((990..1000).map(|i| face(i, 50.0, 2)));
        let old_share_of = |order: &[usize], race: u8| {
            let of_race: Vec<&usize> = order.iter().filter(|&&i| samples[i].race == Some(race)).collect();
            of_race.iter().filter(|&&&i| samples[i].age > 40.0).count() as f64 / of_race.len() as f64
        };
        let mut draws = Vec::new();
        for seed in 0..20 {
            draws.extend(epoch_order(&samples, &[], 0.0, 1.0, &mut ChaCha8Rng::seed_from_u64(seed)));
        }
        assert_eq!(draws.len(), 20_000);
        // As drawn, both groups' old share comes close to the overall 21% (5% and 25% before).
        let (white, asian) = (old_share_of(&draws, 0), old_share_of(&draws, 2));
        assert!((asian - 0.21).abs() < 0.03, "the rare old faces of group 2 drawn more: {asian}");
        assert!((white - 0.21).abs() < 0.03, "{white}");
        // Half-way: group 2's old weighed (0.21 / 0.05)^0.5 = 2.05, its young (0.79 / 0.95)^0.5.
        let half = epoch_order(&samples, &[], 0.0, 0.5, &mut ChaCha8Rng::seed_from_u64(1));
        let asian_half = old_share_of(&half, 2);
        assert!(asian_half > 0.06 && asian_half < 0.18, "{asian_half}");
    }

    #[test]
    fn each_source_is_read_its_weight_times_an_epoch() {
        // 1000 faces of source 0, 600 of source 1.
        let mut samples = skewed();
        samples.extend((0..600).map(|i| Sample {
            path: format!("f{i}.jpg").into(),
            source: 1,
            ..skewed()[0].clone()
        }));
        let of = |order: &[usize], source: u8| order.iter().filter(|&&i| samples[i].source == source).count();
        let rng = || ChaCha8Rng::seed_from_u64(3);
        let order = epoch_order(&samples, &[1.0, 0.5], 0.0, 0.0, &mut rng());
        assert_eq!((of(&order, 0), of(&order, 1)), (1000, 300));
        assert_eq!(epoch_len(&samples, &[1.0, 0.5]), order.len());
        let mut firsts: Vec<usize> = order.iter().copied().filter(|&i| i < 1000).collect();
        firsts.sort();
        assert_eq!(firsts, (0..1000).collect::<Vec<_>>(), "weight 1: each face of the source once");
        let mut halves: Vec<usize> = order.iter().copied().filter(|&i| i >= 1000).collect();
        halves.sort();
        halves.dedup();
        assert_eq!(halves.len(), 300, "weight 0.5: half of them, none twice");
        assert_ne!(order[..50].iter().filter(|&&i| i >= 1000).count(), 0, "the sources shuffled together");
        assert_eq!(order, epoch_order(&samples, &[1.0, 0.5], 0.0, 0.0, &mut rng()), "seeded");

        let twice = epoch_order(&samples, &[1.0, 2.0], 0.0, 0.0, &mut rng());
        assert_eq!(of(&twice, 1), 1200);
        let balanced = epoch_order(&samples, &[0.5, 1.0], 1.0, 0.0, &mut rng());
        assert_eq!((of(&balanced, 0), of(&balanced, 1)), (500, 600), "balances draw within each source");
    }
}
