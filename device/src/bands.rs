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

#[cfg(test)]
mod tests {
    use super::*;

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
