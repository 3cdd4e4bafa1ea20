//! The age bands of every count, report and model file, and the band of an age.
//!
//! Below `counts`, `age_gender` and `model_file`, which all use them and none of which the
//! bands need: the bands were in `counts`, which imports `age_gender`, which used them back.

/// Age bands of every count and report: (name, from, to) in years, `to` exclusive.
pub const AGE_BANDS: [(&str, f32, f32); 6] = [
    ("0-2", 0.0, 3.0),
    ("3-12", 3.0, 13.0),
    ("13-19", 13.0, 20.0),
    ("20-39", 20.0, 40.0),
    ("40-59", 40.0, 60.0),
    ("60+", 60.0, f32::INFINITY),
];

/// A share per age band of [`AGE_BANDS`], summing to 1.
pub type BandShares = [f32; 6];

/// Index into [`AGE_BANDS`]; ages below 0 fall in the first band, beyond every band (NaN
/// included) in the last.
pub fn age_band_index(age: f32) -> usize {
    AGE_BANDS.iter().position(|(_, lo, hi)| age >= *lo && age < *hi).unwrap_or(if age < 0.0 { 0 } else { 5 })
}

/// The name of the band of `age`.
pub fn age_band(age: f32) -> &'static str {
    AGE_BANDS[age_band_index(age)].0
}

/// All of a face's share in the band of `age`.
pub fn one_band(age: f32) -> BandShares {
    let mut shares = [0.0; 6];
    shares[age_band_index(age)] = 1.0;
    shares
}

/// `shares` under a temperature `t` on their logarithms, `p^(1/t)` renormalised: below 1 it
/// sharpens them (a net that is less sure than it is right), above 1 it softens them. The
/// model file's fitted temperature ([`crate::model_file::ModelContract::band_temperature`])
/// makes the counts' ±2 sigma hold the true count 95 times in 100. A temperature that is not
/// a positive number, or shares that sum to nothing, leave them as they are.
pub fn tempered(shares: &BandShares, t: f32) -> BandShares {
    if !(t.is_finite() && t > 0.0) || t == 1.0 {
        return *shares;
    }
    let powered = shares.map(|p| if p > 0.0 { p.powf(1.0 / t) } else { 0.0 });
    let sum: f32 = powered.iter().sum();
    if !(sum.is_finite() && sum > 0.0) {
        return *shares;
    }
    powered.map(|p| p / sum)
}

/// `shares` weighted per band, `w_k p_k` renormalised: the model file's fitted band weights
/// ([`crate::model_file::ModelContract::band_weights`]) correct a net that gives a band too
/// little or too much on average (the old read as younger puts too little in 60+), which no
/// temperature can. Weights that are not all positive numbers, or shares that sum to nothing,
/// leave them as they are.
pub fn weighted(shares: &BandShares, weights: &BandShares) -> BandShares {
    if !weights.iter().all(|w| w.is_finite() && *w > 0.0) {
        return *shares;
    }
    let products: BandShares = std::array::from_fn(|k| shares[k] * weights[k]);
    let sum: f32 = products.iter().sum();
    if !(sum.is_finite() && sum > 0.0) {
        return *shares;
    }
    products.map(|p| p / sum)
}

/// The band shares as the board counts them: the file's temperature ([`tempered`]), then its
/// band weights ([`weighted`]); either may be absent.
pub fn calibrated(shares: &BandShares, temperature: Option<f32>, weights: Option<&BandShares>) -> BandShares {
    let tempered = temperature.map_or(*shares, |t| tempered(shares, t));
    weights.map_or(tempered, |w| weighted(&tempered, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temperature_sharpens_below_one_and_softens_above() {
        let shares = [0.0, 0.1, 0.2, 0.6, 0.1, 0.0];
        let sharp = tempered(&shares, 0.5);
        // p^2 renormalised: 0.01, 0.04, 0.36, 0.01 over 0.42.
        for (got, want) in sharp.iter().zip([0.0, 0.01 / 0.42, 0.04 / 0.42, 0.36 / 0.42, 0.01 / 0.42, 0.0]) {
            assert!((got - want).abs() < 1e-6, "{sharp:?}");
        }
        let soft = tempered(&shares, 2.0);
        assert!(soft[3] < 0.6 && soft[1] > 0.1, "{soft:?}");
        assert!((soft.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(soft[0], 0.0, "a band given nothing stays at nothing");
        assert_eq!(tempered(&shares, 1.0), shares);
        assert_eq!(tempered(&shares, 0.0), shares, "no temperature");
        assert_eq!(tempered(&shares, f32::NAN), shares);
        assert_eq!(tempered(&[0.0; 6], 0.5), [0.0; 6]);
    }

    #[test]
    fn weights_move_the_shares_between_bands_and_keep_their_sum() {
        let shares = [0.0, 0.1, 0.2, 0.6, 0.05, 0.05];
        let w = [1.0, 1.0, 1.0, 1.0, 1.0, 3.0];
        // 60+ three times: 0.15 of 1.1.
        let moved = weighted(&shares, &w);
        assert!((moved[5] - 0.15 / 1.1).abs() < 1e-6 && (moved[3] - 0.6 / 1.1).abs() < 1e-6, "{moved:?}");
        assert!((moved.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(moved[0], 0.0, "a band given nothing stays at nothing");
        assert_eq!(weighted(&shares, &[1.0; 6]), shares);
        assert_eq!(weighted(&shares, &[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]), shares, "not all positive");
        assert_eq!(weighted(&shares, &[f32::NAN; 6]), shares);
        assert_eq!(weighted(&[0.0; 6], &w), [0.0; 6]);
        // The temperature first, then the weights; each optional.
        assert_eq!(calibrated(&shares, Some(0.5), Some(&w)), weighted(&tempered(&shares, 0.5), &w));
        assert_eq!(calibrated(&shares, None, Some(&w)), moved);
        assert_eq!(calibrated(&shares, Some(0.5), None), tempered(&shares, 0.5));
        assert_eq!(calibrated(&shares, None, None), shares);
    }

    #[test]
    fn bands_cover_all_ages() {
        assert_eq!(age_band(0.0), "0-2");
        assert_eq!(age_band(12.9), "3-12");
        assert_eq!(age_band(39.9), "20-39");
        assert_eq!(age_band(116.0), "60+");
        assert_eq!(age_band(-1.0), "0-2");
        assert_eq!(one_band(45.0), [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn the_bands_follow_each_other_without_gaps() {
        for pair in AGE_BANDS.windows(2) {
            assert_eq!(pair[0].2, pair[1].1, "{} ends where {} starts", pair[0].0, pair[1].0);
        }
        assert_eq!(AGE_BANDS[0].1, 0.0);
        assert_eq!(AGE_BANDS.len(), BandShares::default().len());
    }
}
