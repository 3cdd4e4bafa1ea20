//! Do the band shares mean what they say? (`faceage eval`.) A face given 0.3 in a band should
//! be in it three times in ten, and a count's ±2 sigma ([`crate::counts::WholeCount`]) should
//! hold the true count about 95 times in 100. Measured on labelled faces: reliability per band
//! (mean share given against how often faces given it are in the band), its expected
//! calibration error, and the coverage of the count intervals over random groups of faces.

use serde::Serialize;

use crate::bands::{AGE_BANDS, BandShares, tempered, weighted};
use crate::counts::{BandCounts, add_shares, whole_counts};

/// Bins of predicted share (tenths) in the reliability tables.
pub const BINS: usize = 10;
/// Faces per group in the coverage check: a busy hour at a small shop.
pub const GROUP_SIZE: usize = 50;
/// Groups drawn: enough that a coverage of 95% is known to about ±0.7% (one sigma).
pub const GROUPS: usize = 1000;
/// The groups' seed: every run draws the same groups from the same faces.
pub const SEED: u64 = 0x0c0f_fee5;

/// One bin of a reliability table: faces given a share in `[from, to)` of the band.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReliabilityBin {
    pub from: f64,
    pub to: f64,
    pub faces: usize,
    /// Their mean share in the band.
    pub predicted: f64,
    /// The share of them truly in the band.
    pub observed: f64,
}

/// One band's reliability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BandCalibration {
    pub band: String,
    /// The bins that hold faces.
    pub bins: Vec<ReliabilityBin>,
    /// Expected calibration error: |predicted - observed| over the bins, weighted by their
    /// faces. 0 for shares that mean what they say.
    pub ece: f64,
    /// Mean share given to the band over all faces, and the share of faces truly in it.
    pub mean_share: f64,
    pub frequency: f64,
}

/// How often the stated ±2 sigma of a band count held the true count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Coverage {
    pub group_size: usize,
    pub groups: usize,
    pub seed: u64,
    /// Percent of the groups whose true count in the band lay within the expected count ±2
    /// sigma, per band in [`AGE_BANDS`] order (95 for intervals that mean what they say).
    pub per_band: Vec<f64>,
    /// The same for the interval as a person reads it ([`crate::counts::whole_counts`]: the
    /// whole count, largest-remainder rounded, ± the whole people within 2 sigma, e.g.
    /// `3 ±1`): what the bar is set on and the temperature and weights are fitted to.
    pub per_band_shown: Vec<f64>,
    /// Mean half-width (2 sigma) of the intervals, people, per band.
    pub mean_plus_minus: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibration {
    pub faces: usize,
    pub bands: Vec<BandCalibration>,
    /// The bands' expected calibration errors, averaged.
    pub ece: f64,
    /// Absent when there are fewer read faces than a group.
    pub coverage: Option<Coverage>,
    /// The temperature and band weights on the shares that bring each band's mean share to
    /// its frequency and the coverage inside 90-98%, then nearest 95%, in every band on these
    /// faces ([`fit_shares`]); absent with the coverage. Fitted on the validation split, they
    /// go into the model file (`faceage-host upgrade --band-temperature T --band-weights W`).
    pub share_fit: Option<ShareFit>,
}

/// A temperature ([`crate::bands::tempered`]) and band weights ([`crate::bands::weighted`])
/// for the band shares, and the coverage they give.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShareFit {
    /// On top of the file's own (1: leave the file as it is).
    pub temperature: f64,
    /// On top of the file's own, relative to 20-39's (all 1: leave the file as it is).
    pub weights: [f64; 6],
    pub coverage: Coverage,
}

impl ShareFit {
    /// The weights as `--band-weights` takes them, three decimals.
    pub fn weights_text(&self) -> String {
        self.weights.map(|w| format!("{w:.3}")).join(",")
    }
}

fn apply(shares: &BandShares, temperature: f64, weights: &[f64; 6]) -> BandCounts {
    normalised(&weighted(&tempered(shares, temperature as f32), &weights.map(|w| w as f32)))
}

/// Temperatures tried: 1/4 to 4 in steps of 2^(1/20), about 3.5% each.
const TEMPERATURE_STEPS: i32 = 20;
const TEMPERATURE_OCTAVES: i32 = 2;

/// Steps of the weights' fixed point in a round.
const WEIGHT_STEPS: usize = 50;
/// A band with fewer faces than this among the fitting faces keeps its weight of 1: its
/// frequency is not known well enough to correct it.
const MIN_BAND_FACES: usize = 20;
/// The weights stay within 1/16..16 of 20-39's.
const MAX_WEIGHT: f64 = 16.0;

/// The temperature and band weights for the shares (on top of the file's own), fitted on
/// labelled faces: the weights make each band's mean share its frequency (a net that reads the
/// old as younger gives 60+ too little, and no temperature can move a mean), then the
/// temperature with them brings the intervals' coverage inside the bar ([`fit_temperature`]).
/// Once each: refitting the weights at the new temperature, round after round, let the two
/// drift together (honest shares of the tests came out weighted up to 2.8 at a sharper
/// temperature), where one round leaves honest shares near 1 and 1. `None` with fewer faces
/// than a group.
pub fn fit_shares(faces: &[(BandShares, usize)]) -> Option<ShareFit> {
    fit_temperature(faces, &fit_weights(faces, 1.0))
}

/// Weights that bring each band's mean share (tempered by `temperature`, weighted,
/// renormalised) to the share of `faces` truly in it: the fixed point of `w_k <- w_k x
/// frequency_k / mean share_k` (how a classifier's shares are moved to another prior), scaled
/// to 20-39's. Bands with fewer than [`MIN_BAND_FACES`] faces keep 1.
fn fit_weights(faces: &[(BandShares, usize)], temperature: f64) -> [f64; 6] {
    let n = faces.len() as f64;
    let mut in_band = [0usize; 6];
    for (_, t) in faces {
        if let Some(c) = in_band.get_mut(*t) {
            *c += 1;
        }
    }
    let mut weights = [1.0f64; 6];
    for _ in 0..WEIGHT_STEPS {
        let mut mean = [0.0f64; 6];
        for (s, _) in faces {
            let p = apply(s, temperature, &weights);
            for b in 0..6 {
                mean[b] += p[b] / n;
            }
        }
        for b in 0..6 {
            if in_band[b] >= MIN_BAND_FACES && mean[b] > 0.0 {
                weights[b] *= in_band[b] as f64 / n / mean[b];
            }
        }
        let reference = weights[3];
        for b in 0..6 {
            weights[b] = if in_band[b] >= MIN_BAND_FACES {
                (weights[b] / reference).clamp(1.0 / MAX_WEIGHT, MAX_WEIGHT)
            } else {
                1.0
            };
        }
    }
    weights
}

/// Of the temperatures 1/4..4 (with `weights` on the tempered shares), the one whose
/// intervals hold the true counts nearest 95% of the time: first every band inside
/// [`COVERAGE_BAR`] as nearly as it can be (least squares of the distance outside it), then
/// least squares around 95 over the bands, the one nearest 1 among equals. Coverage is what a
/// shop owner's `41 ±4` promises; a likelihood fit weighs the crowded bands and can leave a
/// rare band's intervals too wide. The bar comes first because whole-people intervals are
/// coarse for a rare band (`2 ±1` holds most groups' babies), and a plain least-squares fit
/// traded that band's over-coverage away for a crowded band's 95.
pub fn fit_temperature(faces: &[(BandShares, usize)], weights: &[f64; 6]) -> Option<ShareFit> {
    let truth: Vec<usize> = faces.iter().map(|(_, t)| *t).collect();
    let mut best: Option<(f64, ShareFit)> = None;
    // From 1 outwards, so that among equal fits the mildest wins.
    let steps = (0..=TEMPERATURE_STEPS * TEMPERATURE_OCTAVES)
        .flat_map(|k| if k == 0 { vec![0] } else { vec![-k, k] });
    for k in steps {
        let t = 2f64.powf(f64::from(k) / f64::from(TEMPERATURE_STEPS));
        let shares: Vec<BandCounts> = faces.iter().map(|(s, _)| apply(s, t, weights)).collect();
        let coverage = coverage(&shares, &truth, GROUP_SIZE, GROUPS, SEED)?;
        let miss: f64 = coverage.per_band_shown.iter().map(|&c| coverage_miss(c)).sum();
        if best.as_ref().is_none_or(|(m, _)| miss < *m) {
            best = Some((miss, ShareFit { temperature: t, weights: *weights, coverage }));
        }
    }
    best.map(|(_, fit)| fit)
}

/// The range a band's coverage should fall in: 95% intervals that hold the truth between 90%
/// and 98% of the time.
pub const COVERAGE_BAR: (f64, f64) = (90.0, 98.0);

/// How far coverage `c` (percent) is from right: a point outside [`COVERAGE_BAR`] weighs as
/// much as 100 points' worth of squared distance from 95 inside it.
fn coverage_miss(c: f64) -> f64 {
    let outside = (COVERAGE_BAR.0 - c).max(c - COVERAGE_BAR.1).max(0.0);
    100.0 * outside.powi(2) + (c - 95.0).powi(2)
}

/// Shares as the counts add them: renormalised, in f64.
fn normalised(shares: &BandShares) -> BandCounts {
    let mut p = BandCounts::default();
    add_shares(&mut p, None, shares);
    p
}

/// A random stream for drawing groups (splitmix64: small, and the same everywhere).
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Each face's band shares (renormalised as the counts do) with the index of its true band.
/// `None` when there is no face.
pub fn calibration(faces: &[(BandShares, usize)]) -> Option<Calibration> {
    if faces.is_empty() {
        return None;
    }
    let shares: Vec<BandCounts> = faces.iter().map(|(s, _)| normalised(s)).collect();
    let truth: Vec<usize> = faces.iter().map(|(_, t)| *t).collect();
    let n = faces.len() as f64;
    let bands: Vec<BandCalibration> = AGE_BANDS
        .iter()
        .enumerate()
        .map(|(b, (name, _, _))| {
            let mut sums = [(0usize, 0.0f64, 0usize); BINS];
            for (p, &t) in shares.iter().zip(&truth) {
                let bin = ((p[b] * BINS as f64) as usize).min(BINS - 1);
                sums[bin].0 += 1;
                sums[bin].1 += p[b];
                sums[bin].2 += usize::from(t == b);
            }
            let bins: Vec<ReliabilityBin> = sums
                .iter()
                .enumerate()
                .filter(|(_, s)| s.0 > 0)
                .map(|(i, &(faces, predicted, inside))| ReliabilityBin {
                    from: i as f64 / BINS as f64,
                    to: (i + 1) as f64 / BINS as f64,
                    faces,
                    predicted: predicted / faces as f64,
                    observed: inside as f64 / faces as f64,
                })
                .collect();
            let ece =
                bins.iter().map(|bin| bin.faces as f64 * (bin.predicted - bin.observed).abs()).sum::<f64>()
                    / n;
            BandCalibration {
                band: name.to_string(),
                bins,
                ece,
                mean_share: shares.iter().map(|p| p[b]).sum::<f64>() / n,
                frequency: truth.iter().filter(|&&t| t == b).count() as f64 / n,
            }
        })
        .collect();
    let ece = bands.iter().map(|b| b.ece).sum::<f64>() / bands.len() as f64;
    Some(Calibration {
        faces: faces.len(),
        bands,
        ece,
        coverage: coverage(&shares, &truth, GROUP_SIZE, GROUPS, SEED),
        share_fit: fit_shares(faces),
    })
}

/// [`Coverage`] over `groups` groups of `size` distinct faces drawn with `seed`; `None` when
/// there are fewer faces than a group or no group is asked for.
pub fn coverage(
    shares: &[BandCounts],
    truth: &[usize],
    size: usize,
    groups: usize,
    seed: u64,
) -> Option<Coverage> {
    let n = shares.len().min(truth.len());
    if size == 0 || n < size || groups == 0 {
        return None;
    }
    let mut draws = Draws(seed);
    let mut order: Vec<usize> = (0..n).collect();
    let (mut covered, mut covered_shown) = ([0usize; 6], [0usize; 6]);
    let mut plus_minus = [0f64; 6];
    for _ in 0..groups {
        // A partial Fisher-Yates shuffle: the first `size` of `order` are the group.
        for i in 0..size {
            let j = i + draws.below(n - i);
            order.swap(i, j);
        }
        let (mut expected, mut variance, mut true_count) = ([0f64; 6], [0f64; 6], [0usize; 6]);
        for &face in &order[..size] {
            for b in 0..6 {
                let p = shares[face][b];
                expected[b] += p;
                variance[b] += p * (1.0 - p);
            }
            if let Some(c) = true_count.get_mut(truth[face]) {
                *c += 1;
            }
        }
        let shown = whole_counts(&expected, &variance, size as u64);
        for b in 0..6 {
            let half = 2.0 * variance[b].max(0.0).sqrt();
            // A hair of slack for a count the shares state exactly (float sums of 0s and 1s).
            covered[b] += usize::from((true_count[b] as f64 - expected[b]).abs() <= half + 1e-9);
            covered_shown[b] +=
                usize::from(true_count[b].abs_diff(shown[b].people as usize) as u64 <= shown[b].plus_minus);
            plus_minus[b] += half;
        }
    }
    Some(Coverage {
        group_size: size,
        groups,
        seed,
        per_band: covered.iter().map(|&c| 100.0 * c as f64 / groups as f64).collect(),
        per_band_shown: covered_shown.iter().map(|&c| 100.0 * c as f64 / groups as f64).collect(),
        mean_plus_minus: plus_minus.iter().map(|&s| s / groups as f64).collect(),
    })
}

impl Calibration {
    /// The calibration as text: per band its ECE and interval coverage, then the
    /// reliability tables.
    pub fn table(&self) -> String {
        let mut out = format!("\n{:<16}", "band shares");
        for (name, _, _) in AGE_BANDS {
            out.push_str(&format!("{name:>8}"));
        }
        let row = |title: &str, values: &mut dyn Iterator<Item = String>| -> String {
            let mut line = format!("\n{title:<16}");
            for v in values {
                line.push_str(&format!("{v:>8}"));
            }
            line
        };
        out.push_str(&row("mean share", &mut self.bands.iter().map(|b| format!("{:.3}", b.mean_share))));
        out.push_str(&row("true share", &mut self.bands.iter().map(|b| format!("{:.3}", b.frequency))));
        out.push_str(&row("ECE", &mut self.bands.iter().map(|b| format!("{:.3}", b.ece))));
        match &self.coverage {
            Some(c) => {
                out.push_str(&row(
                    "count ±2 sigma",
                    &mut c.mean_plus_minus.iter().map(|v| format!("{v:.1}")),
                ));
                out.push_str(&row("coverage %", &mut c.per_band.iter().map(|v| format!("{v:.1}"))));
                out.push_str(&row("as shown %", &mut c.per_band_shown.iter().map(|v| format!("{v:.1}"))));
                out.push_str(&format!(
                    "\n(ECE mean {:.3}; coverage: how often the true count of {} groups of {} read faces lay \
                     within the expected count ±2 sigma; as shown: within the whole count ± whole people a \
                     person reads, e.g. `3 ±1`; 95 when the shares mean what they say)\n",
                    self.ece, c.groups, c.group_size
                ));
                if let Some(fit) = &self.share_fit {
                    out.push_str(&row("band weights", &mut fit.weights.iter().map(|w| format!("{w:.3}"))));
                    out.push_str(&row(
                        &format!("at T x {:.3}", fit.temperature),
                        &mut fit.coverage.per_band_shown.iter().map(|v| format!("{v:.1}")),
                    ));
                    out.push_str(&format!(
                        "\n(coverage as shown with the shares weighted per band so that each band's mean share is \
                         its frequency, at the temperature that then brings every band inside 90-98% as nearly \
                         as one can, nearest 95, fitted on these faces; fit them on the validation split, where \
                         `faceage-host upgrade MODEL --band-temperature {:.3} --band-weights {}` writes them into \
                         the file)\n",
                        fit.temperature,
                        fit.weights_text()
                    ));
                }
            }
            None => out.push_str(&format!(
                "\n(ECE mean {:.3}; fewer than {GROUP_SIZE} read faces: no count coverage)\n",
                self.ece
            )),
        }
        out.push_str("\nreliability: faces truly in the band / mean share given, by share given (faces)\n");
        out.push_str(&format!("{:<10}", "share"));
        for (name, _, _) in AGE_BANDS {
            out.push_str(&format!("{name:>18}"));
        }
        out.push('\n');
        for bin in 0..BINS {
            let from = bin as f64 / BINS as f64;
            out.push_str(&format!("{:<10}", format!("{from:.1}-{:.1}", from + 0.1)));
            for band in &self.bands {
                let cell = band
                    .bins
                    .iter()
                    .find(|b| (b.from - from).abs() < 1e-9)
                    .map(|b| format!("{:.2}/{:.2} ({})", b.observed, b.predicted, b.faces))
                    .unwrap_or_default();
                out.push_str(&format!("{cell:>18}"));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` faces whose shares are drawn from a fixed table and whose true band is then
    /// drawn from their shares (scaled towards sure by `sharpen`: 1 keeps them honest).
    fn faces(n: usize, sharpen: f64, seed: u64) -> Vec<(BandShares, usize)> {
        let mut draws = Draws(seed);
        let table: [[f32; 6]; 4] = [
            [0.0, 0.0, 0.1, 0.6, 0.3, 0.0],
            [0.0, 0.05, 0.15, 0.5, 0.2, 0.1],
            [0.7, 0.3, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.2, 0.4, 0.4],
        ];
        (0..n)
            .map(|_| {
                let honest = table[draws.below(4)];
                let u = (draws.next() >> 11) as f64 / (1u64 << 53) as f64;
                let mut acc = 0.0;
                let truth = honest.iter().position(|&p| {
                    acc += p as f64;
                    u < acc
                });
                // The net says the sharpened shares; the truth follows the honest ones.
                let powered = honest.map(|p| (p as f64).powf(sharpen) as f32);
                (powered, truth.unwrap_or(5))
            })
            .collect()
    }

    #[test]
    fn honest_shares_are_calibrated_and_their_intervals_cover_about_95_percent() {
        let c = calibration(&faces(4000, 1.0, 3)).unwrap();
        assert_eq!(c.faces, 4000);
        assert!(c.ece < 0.03, "ECE {}", c.ece);
        let cov = c.coverage.as_ref().unwrap();
        assert_eq!((cov.groups, cov.group_size), (GROUPS, GROUP_SIZE));
        // 0-2 and 3-12 come from one kind of face only: few per group, a coarse count.
        for (b, pct) in cov.per_band.iter().enumerate() {
            assert!((88.0..=99.5).contains(pct), "band {b}: {pct}% of intervals hold the truth");
        }
        // Whole people ± whole people: rounding moves it a little, not far.
        for (b, (pct, shown)) in cov.per_band.iter().zip(&cov.per_band_shown).enumerate() {
            assert!((shown - pct).abs() < 8.0 && *shown >= 85.0, "band {b}: {pct}% exact, {shown}% as shown");
        }
        for b in &c.bands {
            assert!((b.mean_share - b.frequency).abs() < 0.03, "{b:?}");
        }
        assert_eq!(c, calibration(&faces(4000, 1.0, 3)).unwrap(), "the same groups every run");
    }

    #[test]
    fn overconfident_shares_show_a_large_error_and_intervals_that_miss() {
        // Shares squared and renormalised: the net is surer than it should be.
        let c = calibration(&faces(4000, 3.0, 5)).unwrap();
        assert!(c.ece > 0.05, "ECE {}", c.ece);
        let cov = c.coverage.unwrap();
        let adult = cov.per_band[3];
        assert!(adult < 85.0, "20-39: {adult}% with intervals too narrow");
        let table = calibration(&faces(4000, 3.0, 5)).unwrap().table();
        assert!(table.contains("coverage %") && table.contains("0.9-1.0"), "{table}");
    }

    #[test]
    fn a_fitted_temperature_undoes_overconfidence_and_leaves_honest_shares_near_one() {
        // Shares cubed: a temperature near 3 gives the honest ones back.
        let sure = fit_temperature(&faces(4000, 3.0, 5), &[1.0; 6]).unwrap();
        assert!((2.4..=3.6).contains(&sure.temperature), "T = {}", sure.temperature);
        let before = calibration(&faces(4000, 3.0, 5)).unwrap().coverage.unwrap();
        let worst = |c: &Coverage| c.per_band_shown.iter().map(|p| (p - 95.0).abs()).fold(0.0, f64::max);
        assert!(
            worst(&sure.coverage) < worst(&before),
            "{:?} -> {:?}",
            before.per_band_shown,
            sure.coverage.per_band_shown
        );
        assert!(sure.coverage.per_band_shown[3] > 90.0, "{:?}", sure.coverage.per_band_shown);
        // Shares too timid (square roots): sharpened.
        let timid = fit_temperature(&faces(4000, 0.5, 7), &[1.0; 6]).unwrap();
        assert!(timid.temperature < 0.8, "T = {}", timid.temperature);
        let honest = fit_temperature(&faces(4000, 1.0, 3), &[1.0; 6]).unwrap();
        assert!((0.8..=1.25).contains(&honest.temperature), "T = {}", honest.temperature);
        assert!(fit_temperature(&faces(10, 1.0, 3), &[1.0; 6]).is_none(), "fewer faces than a group");
        let table = calibration(&faces(4000, 3.0, 5)).unwrap().table();
        assert!(table.contains("--band-temperature"), "{table}");
    }

    #[test]
    fn band_weights_undo_a_band_given_too_little_and_leave_honest_shares_near_one() {
        // The net gives 60+ a third of what it should (the old read as younger): the truth
        // follows the honest shares.
        let biased: Vec<(BandShares, usize)> = faces(4000, 1.0, 11)
            .into_iter()
            .map(|(s, t)| (weighted(&s, &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0 / 3.0]), t))
            .collect();
        let before = calibration(&biased).unwrap();
        let old = &before.bands[5];
        assert!(old.mean_share < 0.8 * old.frequency, "{old:?}");
        let fit = fit_shares(&biased).unwrap();
        // 60+ weighed up the most (the temperature is fitted after the weights, so not exactly
        // 3), and its mean share much nearer how often faces are in it.
        let heaviest = (0..6).max_by(|&a, &b| fit.weights[a].total_cmp(&fit.weights[b]));
        assert!(
            heaviest == Some(5) && fit.weights[5] > 1.5,
            "weights {:?} at T {}",
            fit.weights,
            fit.temperature
        );
        assert_eq!(fit.weights[3], 1.0, "relative to 20-39");
        let mean =
            biased.iter().map(|(s, _)| apply(s, fit.temperature, &fit.weights)[5]).sum::<f64>() / 4000.0;
        let (gap, gap_before) = ((mean - old.frequency).abs(), (old.mean_share - old.frequency).abs());
        assert!(
            gap < 0.6 * gap_before,
            "60+ mean share {} -> {mean}, frequency {}",
            old.mean_share,
            old.frequency
        );
        let covered = |c: &Coverage| c.per_band_shown[5];
        assert!(
            covered(&fit.coverage) > covered(before.coverage.as_ref().unwrap())
                && covered(&fit.coverage) >= 90.0,
            "60+: {:?} -> {:?}",
            before.coverage.unwrap().per_band_shown,
            fit.coverage.per_band_shown
        );
        assert_eq!(before.share_fit.as_ref(), Some(&fit), "eval reports the same fit");
        assert!(before.table().contains("--band-weights"), "{}", before.table());
        // Honest shares keep weights near 1 (a band too rare to weigh keeps exactly 1).
        let honest = fit_shares(&faces(4000, 1.0, 3)).unwrap();
        assert!(honest.weights.iter().all(|w| (0.8..=1.25).contains(w)), "{:?}", honest.weights);
        assert!((0.8..=1.25).contains(&honest.temperature), "T = {}", honest.temperature);
        let mut babies = 0;
        let few: Vec<(BandShares, usize)> = faces(400, 1.0, 3)
            .into_iter()
            .filter(|(_, t)| {
                babies += usize::from(*t == 0);
                *t != 0 || babies <= 5
            })
            .collect();
        assert_eq!(fit_weights(&few, 1.0)[0], 1.0, "five babies are too few to weigh their band");
    }

    #[test]
    fn coverage_inside_the_bar_beats_coverage_nearer_95_outside_it() {
        let miss = |bands: &[f64]| bands.iter().map(|&c| coverage_miss(c)).sum::<f64>();
        // Least squares around 95 alone would take the first (12.25 against 13).
        assert!(miss(&[98.5, 95.0]) > miss(&[97.0, 92.0]));
        // Inside the bar it is least squares around 95.
        assert_eq!(miss(&[97.0, 92.0]), 13.0);
        assert!(miss(&[89.0]) > miss(&[97.9]));
    }

    #[test]
    fn reliability_bins_hold_what_they_say() {
        let faces = vec![
            ([0.0, 0.0, 0.0, 0.95, 0.05, 0.0], 3),
            ([0.0, 0.0, 0.0, 0.92, 0.08, 0.0], 4),
            ([0.0, 0.0, 0.0, 0.35, 0.65, 0.0], 4),
        ];
        let c = calibration(&faces).unwrap();
        let adult = &c.bands[3];
        assert_eq!(adult.bins.len(), 2);
        let top = adult.bins.iter().find(|b| b.from == 0.9).unwrap();
        assert_eq!((top.faces, top.observed), (2, 0.5));
        assert!((top.predicted - 0.935).abs() < 1e-6);
        // |0.935 - 0.5| x 2 + |0.35 - 0| x 1, over 3 faces.
        assert!((adult.ece - (2.0 * 0.435 + 0.35) / 3.0).abs() < 1e-6, "{}", adult.ece);
        assert!(c.coverage.is_none(), "three faces are fewer than a group");
        assert!(c.table().contains("no count coverage"));
        assert!(calibration(&[]).is_none());
        // A share of exactly 1 falls in the last bin, not past it.
        let sure = calibration(&[([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0)]).unwrap();
        assert_eq!(sure.bands[0].bins[0].from, 0.9);
        assert_eq!(sure.ece, 0.0);
    }

    #[test]
    fn groups_are_distinct_faces() {
        // Ten faces, each surely in its own band 0..5 by index: any group of 10 sees each
        // face once, so every count is exactly right and covered.
        let shares: Vec<BandCounts> =
            (0..10).map(|i| std::array::from_fn(|b| f64::from(b == i % 6))).collect();
        let truth: Vec<usize> = (0..10).map(|i| i % 6).collect();
        let c = coverage(&shares, &truth, 10, 50, 1).unwrap();
        assert!(c.per_band.iter().all(|&p| p == 100.0), "{c:?}");
        assert!(c.per_band_shown.iter().all(|&p| p == 100.0), "{c:?}");
        assert!(c.mean_plus_minus.iter().all(|&w| w == 0.0));
        assert!(coverage(&shares, &truth, 11, 50, 1).is_none());
        assert!(coverage(&shares, &truth, 10, 0, 1).is_none());
    }
}
