//! Demographic counts per interval, and the append-only log that keeps them.
//!
//! The log holds aggregates only: one self-contained line per interval (JSON Lines, or CSV
//! with a header), each written, flushed and fsynced on its own. On open, a torn last line
//! left by a crash or power loss is cut off and nothing complete is lost. When a write fails
//! (full disk, unwritable file) the lines are kept in memory and written at the next chance.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use jiff::ZonedDateTime as Zoned;
use serde::{Deserialize, Serialize};

use crate::age_gender::Gender;
use crate::bands::{AGE_BANDS, BandShares};

/// Adds one person's band shares to `counts`, renormalised to sum to 1 (a distribution's
/// float sum is 1 only to within rounding), and, when given, the variance each share adds to
/// its band's count to `variance` (see [`BandTally::female_var`]).
pub fn add_shares(counts: &mut BandCounts, variance: Option<&mut BandCounts>, shares: &BandShares) {
    let total: f32 = shares.iter().filter(|s| s.is_finite() && **s > 0.0).sum();
    let p = shares.map(|s| if s.is_finite() && s > 0.0 { (s / total.max(f32::EPSILON)) as f64 } else { 0.0 });
    for (c, p) in counts.iter_mut().zip(p) {
        *c += p;
    }
    if let Some(variance) = variance {
        for (v, p) in variance.iter_mut().zip(p) {
            *v += p * (1.0 - p);
        }
    }
}

/// People per age band, in [`AGE_BANDS`] order. Each person adds their probability mass in
/// each band (the model's age distribution, fused over the frames of their track), so a band
/// holds the expected number of its people and counts need not be whole: the sum over bands
/// is the number of people. (Counting each person whole in the band of their single reading
/// pulls the counts toward the crowded twenties and thirties: model card.) Logs written
/// before hold whole numbers and read the same.
pub type BandCounts = [f64; 6];

/// People per gender and age band: the one tally the counts log, the kiosk's day and
/// `faceage report` keep. Serialised as `"female": [6 bands], "male": [6 bands]` and the
/// variances `"female_var"`, `"male_var"`, flattened into the record that holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BandTally {
    pub female: BandCounts,
    pub male: BandCounts,
    /// The variance of each band's count: each person falls in a band with their share p
    /// there, independently of the others, so a band's count is a sum of independent
    /// Bernoulli draws with mean Σp (the count) and variance Σp(1-p). Variances of
    /// independent counts add: a fleet sums them like the counts. Absent from lines written
    /// before them (schema < 4); [`BandTally::variance`] stands in for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub female_var: Option<BandCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub male_var: Option<BandCounts>,
}

impl BandTally {
    /// Columns of the counts in a CSV line: the female bands, then the male ones (the
    /// variances, when there, take as many again at the end of the line).
    pub const CSV_COLUMNS: usize = 2 * AGE_BANDS.len();

    /// One person: their share in each age band ([`add_shares`]).
    pub fn add_person(&mut self, gender: Gender, shares: &BandShares) {
        let (counts, variance) = match gender {
            Gender::Female => (&mut self.female, &mut self.female_var),
            Gender::Male => (&mut self.male, &mut self.male_var),
        };
        add_shares(counts, Some(variance.get_or_insert_with(Default::default)), shares);
    }

    /// Adds another tally's counts and variances (summing intervals).
    pub fn add(&mut self, other: &BandTally) {
        let (female_var, male_var) = (self.variance(Gender::Female), self.variance(Gender::Male));
        let (other_female, other_male) = (other.variance(Gender::Female), other.variance(Gender::Male));
        let mut sum = (female_var, male_var);
        for b in 0..AGE_BANDS.len() {
            self.female[b] += other.female[b];
            self.male[b] += other.male[b];
            sum.0[b] += other_female[b];
            sum.1[b] += other_male[b];
        }
        (self.female_var, self.male_var) = (Some(sum.0), Some(sum.1));
    }

    pub fn of(&self, gender: Gender) -> &BandCounts {
        match gender {
            Gender::Female => &self.female,
            Gender::Male => &self.male,
        }
    }

    /// The variance of each band count of `gender`: as recorded, else (a line from before
    /// variances) the largest its counts allow. A band holding c of a gender's n people has
    /// Σp(1-p) = c - Σp² <= c - c²/n, equal when everyone's share there is c/n.
    pub fn variance(&self, gender: Gender) -> BandCounts {
        let recorded = match gender {
            Gender::Female => self.female_var,
            Gender::Male => self.male_var,
        };
        recorded.unwrap_or_else(|| {
            let n = self.people(gender);
            self.of(gender).map(|c| if n > 0.0 { (c - c * c / n).max(0.0) } else { 0.0 })
        })
    }

    /// People of one gender (the sum over its bands; an expected count, see [`BandCounts`]).
    pub fn people(&self, gender: Gender) -> f64 {
        self.of(gender).iter().sum()
    }

    /// Every band and variance to hundredths, as the log stores them.
    pub fn rounded(&self) -> BandTally {
        BandTally {
            female: round_bands(&self.female),
            male: round_bands(&self.male),
            female_var: self.female_var.as_ref().map(round_bands),
            male_var: self.male_var.as_ref().map(round_bands),
        }
    }

    /// The whole people a person reads for this tally, `people` in all (see [`whole_counts`]).
    pub fn whole(&self, people: u64) -> WholeTally {
        let genders = largest_remainder(&[self.people(Gender::Female), self.people(Gender::Male)], people);
        WholeTally {
            female: whole_counts(&self.female, &self.variance(Gender::Female), genders[0]),
            male: whole_counts(&self.male, &self.variance(Gender::Male), genders[1]),
            female_people: genders[0],
            male_people: genders[1],
        }
    }

    /// [`Self::whole`] for as many people as the tally sums to (for tallies that keep no
    /// separate count of people: hours, groups).
    pub fn whole_of_sum(&self) -> WholeTally {
        let total = self.people(Gender::Female) + self.people(Gender::Male);
        self.whole(if total.is_finite() { total.round().max(0.0) as u64 } else { 0 })
    }

    fn csv_fields(&self) -> impl Iterator<Item = String> + '_ {
        self.female.iter().chain(&self.male).map(f64::to_string)
    }

    /// The variance columns at the end of a CSV line.
    fn csv_variance_fields(&self) -> impl Iterator<Item = String> {
        let (f, m) = (self.variance(Gender::Female), self.variance(Gender::Male));
        f.into_iter().chain(m).map(|v| v.to_string())
    }

    /// Reads the [`Self::CSV_COLUMNS`] fields starting at column `first` (0-based) of `fields`.
    fn from_csv_fields(fields: &[&str], first: usize) -> Result<BandTally> {
        let mut tally = BandTally::default();
        for (k, v) in tally.female.iter_mut().chain(tally.male.iter_mut()).enumerate() {
            let i = first + k;
            *v = fields[i].parse().with_context(|| format!("column {} is not a number", i + 1))?;
        }
        Ok(tally)
    }

    /// Reads the variances from the [`Self::CSV_COLUMNS`] fields starting at column `first`.
    fn variance_from_csv_fields(&mut self, fields: &[&str], first: usize) -> Result<()> {
        let (mut f, mut m) = (BandCounts::default(), BandCounts::default());
        for (k, v) in f.iter_mut().chain(m.iter_mut()).enumerate() {
            let i = first + k;
            *v = fields[i].parse().with_context(|| format!("column {} is not a number", i + 1))?;
        }
        (self.female_var, self.male_var) = (Some(f), Some(m));
        Ok(())
    }
}

/// Rounds every band to hundredths, as the log stores them.
pub fn round_bands(bands: &BandCounts) -> BandCounts {
    bands.map(|v| (v * 100.0).round() / 100.0)
}

/// A band's count as a person reads it: whole people, and the half-width of the count's 95%
/// interval in whole people (every whole count within two standard deviations of the expected
/// count lies within it). Shown as `41 ±4`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WholeCount {
    pub people: u64,
    pub plus_minus: u64,
}

impl std::fmt::Display for WholeCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Padded as a whole, so table columns line up.
        f.pad(&format!("{} ±{}", self.people, self.plus_minus))
    }
}

/// A tally as a person reads it: whole people per gender and band that add up to the people
/// counted, each band with its ±.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WholeTally {
    pub female: [WholeCount; 6],
    pub male: [WholeCount; 6],
    pub female_people: u64,
    pub male_people: u64,
}

impl WholeTally {
    pub fn of(&self, gender: Gender) -> &[WholeCount; 6] {
        match gender {
            Gender::Female => &self.female,
            Gender::Male => &self.male,
        }
    }

    pub fn people(&self, gender: Gender) -> u64 {
        match gender {
            Gender::Female => self.female_people,
            Gender::Male => self.male_people,
        }
    }
}

/// Expected band counts as whole people: `total` people shared out by largest remainder
/// ([`largest_remainder`]), each band with the least ± that holds every whole count within
/// two standard deviations of its expected count (from `variance`). The one rounding every
/// table, chart and page uses.
///
/// Not 2 sigma rounded: for a rare band that added up to half a person on each side (2 sigma
/// of 1.6 babies shown as ±2 holds the counts 1 to 5 around 3.1, where 1.5 to 4.7 was meant),
/// and the babies' shown intervals held the true count in 99% of groups, not 95.
pub fn whole_counts(expected: &BandCounts, variance: &BandCounts, total: u64) -> [WholeCount; 6] {
    let people = largest_remainder(expected, total);
    // The expected counts on the scale of the whole ones (the log's rounding may drift).
    let clean = expected.map(|v| if v.is_finite() && v > 0.0 { v } else { 0.0 });
    let sum: f64 = clean.iter().sum();
    let scale = if sum > 0.0 { total as f64 / sum } else { 0.0 };
    std::array::from_fn(|b| {
        let v = variance[b];
        let two_sigma = if v.is_finite() && v > 0.0 { 2.0 * v.sqrt() } else { 0.0 };
        let centre = clean[b] * scale;
        // The whole counts inside centre ± 2 sigma (a hair of slack for float sums), none
        // below zero or above the people counted.
        let low = (centre - two_sigma - 1e-9).ceil().max(0.0) as u64;
        let high = ((centre + two_sigma + 1e-9).floor().max(0.0) as u64).min(total);
        let shown = people[b];
        WholeCount { people: shown, plus_minus: shown.saturating_sub(low).max(high.saturating_sub(shown)) }
    })
}

/// Whole numbers summing to `total`, as close as can be to `values` once scaled to sum to
/// `total` (each value's floor, then one more to the largest remainders: Hamilton's method;
/// ties go to the earlier value). Values that are not finite or below zero count as zero;
/// when every value is zero nothing can be shared out and all are zero.
pub fn largest_remainder<const N: usize>(values: &[f64; N], total: u64) -> [u64; N] {
    let clean = values.map(|v| if v.is_finite() && v > 0.0 { v } else { 0.0 });
    let sum: f64 = clean.iter().sum();
    if sum <= 0.0 || total == 0 {
        return [0; N];
    }
    let scaled = clean.map(|v| v * total as f64 / sum);
    let mut whole = scaled.map(|v| v.floor() as u64);
    let given: u64 = whole.iter().sum();
    let mut order: Vec<usize> = (0..N).collect();
    order.sort_by(|&a, &b| (scaled[b] - scaled[b].floor()).total_cmp(&(scaled[a] - scaled[a].floor())));
    // Float error can leave the floors one short of `total - N` or over it: walk round.
    let mut left = total.saturating_sub(given);
    for &i in order.iter().cycle().take(if left > 0 { left as usize + N } else { 0 }) {
        if left == 0 {
            break;
        }
        if clean[i] > 0.0 {
            whole[i] += 1;
            left -= 1;
        }
    }
    let mut over = given.saturating_sub(total);
    for &i in order.iter().rev().cycle().take(if over > 0 { (over as usize + 1) * N } else { 0 }) {
        if over == 0 {
            break;
        }
        if whole[i] > 0 {
            whole[i] -= 1;
            over -= 1;
        }
    }
    whole
}

/// One interval of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    /// The line's layout: 4 since band-count variances, 3 since sources, 2 since dwell
    /// times; lines without it are schema 1 (no dwell).
    #[serde(default = "IntervalRecord::legacy_schema")]
    pub schema: u32,
    /// The `--source` the line counts (its name), when the run named it; absent before
    /// schema 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The board's site and device name, in lines gathered from a fleet (`faceage collect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// RFC 3339 with the local offset.
    pub start: String,
    pub end: String,
    /// People counted (tracks confirmed) in the interval.
    pub people: u32,
    #[serde(flatten)]
    pub tally: BandTally,
    pub frames: u64,
    pub dropped: u64,
    #[serde(flatten)]
    pub dwell: DwellSummary,
}

/// Time-in-view buckets of a counts-log line: (name, upper bound in seconds).
pub const DWELL_BUCKETS: [(&str, f32); 4] =
    [("under_5s", 5.0), ("5_30s", 30.0), ("30s_2min", 120.0), ("over_2min", f32::INFINITY)];

/// How long the people whose visit ended in an interval were in view (first to last frame
/// their face was seen): a count per [`DWELL_BUCKETS`] bucket and the median. Counts only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DwellSummary {
    #[serde(default)]
    pub dwell: [u32; 4],
    /// Seconds; absent when no visit ended in the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_median_s: Option<f32>,
}

impl DwellSummary {
    pub fn from_seconds(seconds: &[f32]) -> Self {
        let mut dwell = [0u32; 4];
        for &s in seconds {
            let bucket = DWELL_BUCKETS.iter().position(|(_, upper)| s < *upper).unwrap_or(3);
            dwell[bucket] += 1;
        }
        let mut sorted = seconds.to_vec();
        sorted.sort_by(f32::total_cmp);
        let median = match sorted.len() {
            0 => None,
            n if n % 2 == 1 => Some(sorted[n / 2]),
            n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
        };
        Self { dwell, dwell_median_s: median.map(|m| (m * 10.0).round() / 10.0) }
    }

    /// Visits counted.
    pub fn visits(&self) -> u32 {
        self.dwell.iter().sum()
    }
}

impl IntervalRecord {
    /// The layout [`IntervalCounter::roll`] writes.
    pub const SCHEMA: u32 = 4;
    /// Columns of a CSV line: start, end, people, the tally, frames, dropped, the dwell buckets,
    /// the median dwell (empty when none), the source (empty when unnamed) and the variances
    /// of the tally's counts (female bands, then male).
    pub const CSV_COLUMNS: usize = Self::CSV_COLUMNS_V3 + BandTally::CSV_COLUMNS;
    /// Columns of a line written before variances.
    pub const CSV_COLUMNS_V3: usize = Self::CSV_COLUMNS_V2 + 1;
    /// Columns of a line written before sources.
    pub const CSV_COLUMNS_V2: usize = Self::CSV_COLUMNS_V1 + DWELL_BUCKETS.len() + 1;
    /// Columns of a line written before dwell times.
    pub const CSV_COLUMNS_V1: usize = 3 + BandTally::CSV_COLUMNS + 2;

    fn legacy_schema() -> u32 {
        1
    }

    pub fn csv_header() -> String {
        let mut cols = vec!["start".to_string(), "end".into(), "people".into()];
        for g in ["female", "male"] {
            cols.extend(AGE_BANDS.iter().map(|(b, _, _)| format!("{g}_{b}")));
        }
        cols.extend(["frames".to_string(), "dropped".into()]);
        cols.extend(DWELL_BUCKETS.iter().map(|(b, _)| format!("dwell_{b}")));
        cols.push("dwell_median_s".into());
        cols.push("source".into());
        for g in ["female", "male"] {
            cols.extend(AGE_BANDS.iter().map(|(b, _, _)| format!("{g}_var_{b}")));
        }
        cols.join(",")
    }

    pub fn csv_line(&self) -> String {
        let mut cols = vec![self.start.clone(), self.end.clone(), self.people.to_string()];
        cols.extend(self.tally.csv_fields());
        cols.extend([self.frames.to_string(), self.dropped.to_string()]);
        cols.extend(self.dwell.dwell.iter().map(u32::to_string));
        cols.push(self.dwell.dwell_median_s.map(|m| m.to_string()).unwrap_or_default());
        // Source names never hold a comma (`source::NamedSource`).
        cols.push(self.source.clone().unwrap_or_default());
        cols.extend(self.tally.csv_variance_fields());
        cols.join(",")
    }

    /// Reads a CSV line of any layout (with or without the dwell, source and variance
    /// columns).
    pub fn from_csv_line(line: &str) -> Result<Self> {
        let f: Vec<&str> = line.trim_end_matches(['\r', '\n']).split(',').collect();
        let layouts = [Self::CSV_COLUMNS, Self::CSV_COLUMNS_V3, Self::CSV_COLUMNS_V2, Self::CSV_COLUMNS_V1];
        if !layouts.contains(&f.len()) {
            bail!(
                "{} columns, expected {} (or {} before variances, {} before sources, {} before dwell times)",
                f.len(),
                Self::CSV_COLUMNS,
                Self::CSV_COLUMNS_V3,
                Self::CSV_COLUMNS_V2,
                Self::CSV_COLUMNS_V1
            );
        }
        let n = |i: usize| -> Result<u64> {
            f[i].parse().with_context(|| format!("column {} is not a number", i + 1))
        };
        let after_tally = 3 + BandTally::CSV_COLUMNS;
        let (schema, dwell) = if f.len() >= Self::CSV_COLUMNS_V2 {
            let first = Self::CSV_COLUMNS_V1;
            let mut dwell = DwellSummary::default();
            for (k, v) in dwell.dwell.iter_mut().enumerate() {
                *v = n(first + k)? as u32;
            }
            let median = f[first + DWELL_BUCKETS.len()];
            dwell.dwell_median_s = if median.is_empty() {
                None
            } else {
                Some(median.parse().with_context(|| format!("column {} is not a number", f.len()))?)
            };
            let schema = match f.len() {
                Self::CSV_COLUMNS => Self::SCHEMA,
                Self::CSV_COLUMNS_V3 => 3,
                _ => 2,
            };
            (schema, dwell)
        } else {
            (1, DwellSummary::default())
        };
        let source = f.get(Self::CSV_COLUMNS_V2).filter(|s| !s.is_empty()).map(|s| s.to_string());
        let mut tally = BandTally::from_csv_fields(&f, 3)?;
        if f.len() == Self::CSV_COLUMNS {
            tally.variance_from_csv_fields(&f, Self::CSV_COLUMNS_V3)?;
        }
        Ok(Self {
            schema,
            source,
            site: None,
            device: None,
            start: f[0].to_string(),
            end: f[1].to_string(),
            people: n(2)? as u32,
            tally,
            frames: n(after_tally)?,
            dropped: n(after_tally + 1)?,
            dwell,
        })
    }
}

/// Counts of the interval under way.
#[derive(Clone, Debug)]
pub struct IntervalCounter {
    pub start: Zoned,
    pub tally: BandTally,
    pub people: u32,
    pub frames: u64,
    pub dropped: u64,
    /// Seconds in view of each person whose visit ended in the interval.
    pub dwell: Vec<f32>,
}

impl IntervalCounter {
    pub fn new(start: Zoned) -> Self {
        Self { start, tally: BandTally::default(), people: 0, frames: 0, dropped: 0, dwell: Vec::new() }
    }

    /// One person, their share in each age band (summing to 1; see [`BandCounts`]).
    pub fn add_person(&mut self, gender: Gender, bands: &BandShares) {
        self.tally.add_person(gender, bands);
        self.people += 1;
    }

    /// Closes the interval at `end` and starts the next one there.
    pub fn roll(&mut self, end: Zoned) -> IntervalRecord {
        let record = IntervalRecord {
            schema: IntervalRecord::SCHEMA,
            source: None,
            site: None,
            device: None,
            start: format_time(&self.start),
            end: format_time(&end),
            people: self.people,
            tally: self.tally.rounded(),
            frames: self.frames,
            dropped: self.dropped,
            dwell: DwellSummary::from_seconds(&self.dwell),
        };
        *self = IntervalCounter::new(end);
        record
    }
}

pub fn format_time(t: &Zoned) -> String {
    t.timestamp()
        .round(jiff::Unit::Millisecond)
        .unwrap_or(t.timestamp())
        .display_with_offset(t.offset())
        .to_string()
}

/// The first boundary after `now` on a grid of `interval` seconds (so minutes start on the
/// minute and days on midnight UTC multiples).
///
/// An interval too long for the calendar ends at its last instant, never at `now` (which
/// would close an interval on every frame).
pub fn next_boundary(now: &Zoned, interval_secs: u64) -> Zoned {
    let secs = now.timestamp().as_second();
    let step = i64::try_from(interval_secs.max(1)).unwrap_or(i64::MAX);
    let next = (secs.div_euclid(step) + 1).saturating_mul(step);
    jiff::Timestamp::from_second(next)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned_datetime(now.time_zone().clone())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFormat {
    Jsonl,
    Csv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    None,
    /// One file per local day: `counts.jsonl` becomes `counts-2026-11-29.jsonl`.
    Daily,
}

/// The append-only counts log.
pub struct CountsLog {
    base: PathBuf,
    format: LogFormat,
    rotation: Rotation,
    open: Option<(PathBuf, File)>,
    /// Lines not yet on disk, each with the file it belongs to.
    pending: VecDeque<(PathBuf, String)>,
}

impl CountsLog {
    pub fn new(base: &Path, format: LogFormat, rotation: Rotation) -> Self {
        Self { base: base.to_path_buf(), format, rotation, open: None, pending: VecDeque::new() }
    }

    /// The file a record starting at `start` goes to.
    pub fn file_for(&self, start: &Zoned) -> PathBuf {
        match self.rotation {
            Rotation::None => self.base.clone(),
            Rotation::Daily => {
                let stem = self
                    .base
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "counts".into());
                let ext =
                    self.base.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
                self.base.with_file_name(format!("{stem}-{}{ext}", start.strftime("%Y-%m-%d")))
            }
        }
    }

    /// Lines waiting to be written.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues `record` and writes everything queued; on failure the lines stay queued and
    /// the error says so.
    pub fn append(&mut self, record: &IntervalRecord, start: &Zoned) -> Result<()> {
        let line = match self.format {
            LogFormat::Jsonl => serde_json::to_string(record)?,
            LogFormat::Csv => record.csv_line(),
        };
        self.pending.push_back((self.file_for(start), line));
        self.flush()
    }

    /// Writes queued lines, oldest first, each flushed and fsynced.
    pub fn flush(&mut self) -> Result<()> {
        while let Some((path, line)) = self.pending.front().cloned() {
            if let Err(e) = self.write_line(&path, &line) {
                // Reopen (and repair) next time: the handle may be in any state now.
                self.open = None;
                return Err(e).with_context(|| {
                    format!(
                        "{}: {} interval(s) kept in memory and retried at the next interval",
                        path.display(),
                        self.pending.len()
                    )
                });
            }
            self.pending.pop_front();
        }
        Ok(())
    }

    fn write_line(&mut self, path: &Path, line: &str) -> Result<()> {
        if self.open.as_ref().is_none_or(|(p, _)| p != path) {
            self.open = Some((path.to_path_buf(), self.open_file(path)?));
        }
        let (_, file) = self.open.as_mut().expect("opened above");
        let before = file.seek(SeekFrom::End(0))?;
        let result = file
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| file.flush())
            .and_then(|_| file.sync_data());
        if result.is_err() && is_regular(path) {
            // Take back a half-written line so a retry starts on a clean line end.
            let _ = file.set_len(before);
        }
        result.with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Opens for appending, cutting a torn last line and writing the CSV header to a new file.
    fn open_file(&self, path: &Path) -> Result<File> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create folder", dir.display()))?;
        }
        if is_regular(path) {
            let removed = repair_torn_tail(path)?;
            if removed > 0 {
                eprintln!(
                    "{}: removed a torn last line ({removed} bytes) left by an interrupted write",
                    path.display()
                );
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for writing", path.display()))?;
        if self.format == LogFormat::Csv && is_regular(path) && file.metadata()?.len() == 0 {
            file.write_all(format!("{}\n", IntervalRecord::csv_header()).as_bytes())?;
            file.sync_data()?;
        }
        Ok(file)
    }
}

fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_file()).unwrap_or(true)
}

/// Cuts everything after the last newline of `path` (a line torn by a crash); returns the
/// number of bytes removed.
pub fn repair_torn_tail(path: &Path) -> Result<u64> {
    let Ok(mut file) = OpenOptions::new().read(true).write(true).open(path) else { return Ok(0) };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    // Look back in blocks for the last newline.
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    loop {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(pos) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + pos as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
                file.sync_all()?;
            }
            return Ok(len - keep);
        }
        if start == 0 {
            file.set_len(0)?;
            file.sync_all()?;
            return Ok(len);
        }
        end = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bands::one_band;

    fn record(people: u32) -> IntervalRecord {
        IntervalRecord {
            schema: IntervalRecord::SCHEMA,
            source: Some("entrance".into()),
            site: None,
            device: None,
            start: "2026-11-29T10:00:00+01:00".into(),
            end: "2026-11-29T10:01:00+01:00".into(),
            people,
            tally: BandTally {
                female: [0.0, 1.0, 0.0, 2.0, 0.0, 0.0],
                male: [0.0, 0.0, 0.0, 1.0, 1.0, 0.0],
                female_var: Some([0.0, 0.25, 0.0, 0.5, 0.0, 0.0]),
                male_var: Some([0.0, 0.0, 0.0, 0.09, 0.09, 0.0]),
            },
            frames: 600,
            dropped: 3,
            dwell: DwellSummary::from_seconds(&[2.0, 12.5, 40.0]),
        }
    }

    #[test]
    fn dwell_times_fall_in_their_buckets_with_their_median() {
        let d = DwellSummary::from_seconds(&[0.4, 4.99, 5.0, 29.0, 30.0, 119.0, 120.0, 900.0]);
        assert_eq!(d.dwell, [2, 2, 2, 2]);
        assert_eq!(d.dwell_median_s, Some(29.5));
        assert_eq!(d.visits(), 8);
        assert_eq!(DwellSummary::from_seconds(&[3.0, 1.0, 7.04]).dwell_median_s, Some(3.0));
        assert_eq!(DwellSummary::from_seconds(&[]), DwellSummary::default());
    }

    #[test]
    fn lines_round_trip_and_lines_from_before_dwell_times_and_sources_still_read() {
        let r = record(3);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["schema"], 4);
        assert_eq!(json["female_var"][3], 0.5);
        assert_eq!(json["source"], "entrance");
        assert_eq!(json["dwell"], serde_json::json!([1, 1, 1, 0]));
        assert_eq!(json["dwell_median_s"], 12.5);
        assert_eq!(serde_json::from_value::<IntervalRecord>(json).unwrap(), r);
        assert_eq!(IntervalRecord::from_csv_line(&r.csv_line()).unwrap(), r);
        assert_eq!(IntervalRecord::csv_header().split(',').count(), IntervalRecord::CSV_COLUMNS);
        let unnamed = IntervalRecord { source: None, ..r.clone() };
        assert!(serde_json::to_value(&unnamed).unwrap().get("source").is_none());
        assert_eq!(IntervalRecord::from_csv_line(&unnamed.csv_line()).unwrap(), unnamed);

        // Schema 3: sources, no variances (the line above less its last 12 columns).
        let csv = r.csv_line();
        let v3_csv = csv.rsplitn(BandTally::CSV_COLUMNS + 1, ',').last().unwrap();
        let v3 = IntervalRecord::from_csv_line(v3_csv).unwrap();
        assert_eq!((v3.schema, v3.tally.female_var, v3.tally.female), (3, None, r.tally.female));
        assert_eq!(v3.source.as_deref(), Some("entrance"));

        // Schema 2: dwell, no source.
        let v2_csv =
            "2026-11-29T10:00:00+01:00,2026-11-29T10:01:00+01:00,1,0,0,0,1,0,0,0,0,0,0,0,0,10,0,1,0,0,0,3.5";
        let v2 = IntervalRecord::from_csv_line(v2_csv).unwrap();
        assert_eq!(
            (v2.schema, v2.dwell.visits(), v2.dwell.dwell_median_s, v2.source),
            (2, 1, Some(3.5), None)
        );

        // Schema 1: no schema key, no dwell.
        let old = r#"{"start":"2026-11-29T10:00:00+01:00","end":"2026-11-29T10:01:00+01:00","people":1,
            "female":[0,0,0,1,0,0],"male":[0,0,0,0,0,0],"frames":10,"dropped":0}"#;
        let old: IntervalRecord = serde_json::from_str(&old.replace('\n', "")).unwrap();
        assert_eq!((old.schema, old.dwell.visits(), old.dwell.dwell_median_s), (1, 0, None));
        let old_csv = "2026-11-29T10:00:00+01:00,2026-11-29T10:01:00+01:00,1,0,0,0,1,0,0,0,0,0,0,0,0,10,0";
        let old = IntervalRecord::from_csv_line(old_csv).unwrap();
        assert_eq!((old.schema, old.people, old.frames), (1, 1, 10));
        let err = IntervalRecord::from_csv_line("a,b,c").unwrap_err().to_string();
        assert!(err.contains("3 columns"), "{err}");
    }

    fn now() -> Zoned {
        "2026-11-29T10:00:00+01:00[Europe/Paris]".parse().unwrap()
    }

    #[test]
    fn csv_lines_round_trip() {
        let r = record(5);
        assert_eq!(IntervalRecord::from_csv_line(&r.csv_line()).unwrap(), r);
        assert_eq!(IntervalRecord::csv_header().split(',').count(), IntervalRecord::CSV_COLUMNS);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_complete_lines_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counts.jsonl");
        let good = serde_json::to_string(&record(1)).unwrap();
        std::fs::write(&path, format!("{good}\n{good}\n{{\"start\":\"2026-11")).unwrap();
        let mut log = CountsLog::new(&path, LogFormat::Jsonl, Rotation::None);
        log.append(&record(2), &now()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for l in &lines {
            serde_json::from_str::<IntervalRecord>(l).expect("every line whole");
        }
        assert_eq!(serde_json::from_str::<IntervalRecord>(lines[2]).unwrap().people, 2);
    }

    #[test]
    fn csv_logs_start_with_one_header_and_rotate_daily() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("counts.csv");
        let mut log = CountsLog::new(&base, LogFormat::Csv, Rotation::Daily);
        log.append(&record(1), &now()).unwrap();
        log.append(&record(2), &now()).unwrap();
        let next_day: Zoned = "2026-11-30T00:00:10+01:00[Europe/Paris]".parse().unwrap();
        log.append(&record(3), &next_day).unwrap();
        let day1 = std::fs::read_to_string(dir.path().join("counts-2026-11-29.csv")).unwrap();
        assert_eq!(day1.lines().count(), 3);
        assert_eq!(day1.lines().next().unwrap(), IntervalRecord::csv_header());
        let day2 = std::fs::read_to_string(dir.path().join("counts-2026-11-30.csv")).unwrap();
        assert_eq!(day2.lines().count(), 2);
    }

    #[test]
    fn a_full_disk_keeps_lines_in_memory() {
        let mut log = CountsLog::new(Path::new("/dev/full"), LogFormat::Jsonl, Rotation::None);
        let err = format!("{:#}", log.append(&record(1), &now()).unwrap_err());
        assert!(err.contains("/dev/full") && err.contains("kept in memory"), "{err}");
        assert_eq!(log.pending(), 1);
        assert!(log.append(&record(2), &now()).is_err());
        assert_eq!(log.pending(), 2, "nothing dropped");
    }

    #[test]
    fn intervals_roll_on_the_grid() {
        let t: Zoned = "2026-11-29T10:00:42+01:00[Europe/Paris]".parse().unwrap();
        assert_eq!(format_time(&next_boundary(&t, 60)), "2026-11-29T10:01:00+01:00");
        assert_eq!(next_boundary(&t, 1 << 32).year(), 2106, "the tests' one-interval grid");
        assert!(next_boundary(&t, u64::MAX) > t, "an interval too long for the calendar never ends now");
        let mut c = IntervalCounter::new(t.clone());
        c.add_person(Gender::Female, &one_band(27.0));
        c.add_person(Gender::Male, &one_band(70.0));
        c.add_person(Gender::Male, &[0.0, 0.0, 0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0]);
        c.frames = 10;
        let r = c.roll(next_boundary(&t, 60));
        assert_eq!((r.people, r.tally.female[3], r.tally.male[5], r.frames), (3, 1.0, 1.67, 10));
        assert_eq!(r.tally.male[4], 0.33, "shares are stored to the hundredth");
        assert_eq!(IntervalRecord::from_csv_line(&r.csv_line()).unwrap(), r);
        assert_eq!(c.people, 0);
        assert_eq!(format_time(&c.start), "2026-11-29T10:01:00+01:00");
    }

    #[test]
    fn a_record_reads_and_writes_its_tally_as_two_band_arrays() {
        let line = r#"{"start":"2026-11-29T10:00:00+01:00","end":"2026-11-29T10:01:00+01:00","people":2,"female":[0,1,0,0,0,0],"male":[0,0,0,0.5,0.5,0],"frames":3,"dropped":0}"#;
        let r: IntervalRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r.tally.people(Gender::Female), 1.0, "whole numbers of older logs read as counts");
        assert_eq!(r.tally.male[4], 0.5);
        assert_eq!(r.tally.male_var, None, "a line from before variances has none");
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(
                r#""people":2,"female":[0.0,1.0,0.0,0.0,0.0,0.0],"male":[0.0,0.0,0.0,0.5,0.5,0.0],"frames":3"#
            ),
            "{json}"
        );
        let mut sum = r.tally;
        sum.add(&r.tally);
        assert_eq!((sum.people(Gender::Female), sum.people(Gender::Male)), (2.0, 2.0));
        // The largest variance two people's counts of 0.5 and 0.5 allow: each 0.5 in each band.
        assert_eq!(sum.male_var, Some([0.0, 0.0, 0.0, 0.5, 0.5, 0.0]));
    }

    #[test]
    fn each_person_adds_the_variance_of_their_draw_and_variances_add_up() {
        let mut t = BandTally::default();
        t.add_person(Gender::Female, &[0.0, 0.0, 0.0, 0.8, 0.2, 0.0]);
        t.add_person(Gender::Female, &[0.0, 0.0, 0.0, 0.5, 0.5, 0.0]);
        t.add_person(Gender::Male, &one_band(30.0));
        let var = t.female_var.unwrap();
        assert!((var[3] - (0.8 * 0.2 + 0.25)).abs() < 1e-6, "{var:?}");
        assert!((var[4] - var[3]).abs() < 1e-6, "two bands share the same draws");
        assert_eq!(t.male_var, Some([0.0; 6]), "a sure reading adds no doubt");
        // Shares that do not sum to 1 are renormalised; NaN or negative shares count as none.
        let mut odd = BandTally::default();
        odd.add_person(Gender::Male, &[f32::NAN, -1.0, 0.0, 2.0, 2.0, 0.0]);
        assert_eq!(odd.male, [0.0, 0.0, 0.0, 0.5, 0.5, 0.0]);
        assert_eq!(odd.male_var, Some([0.0, 0.0, 0.0, 0.25, 0.25, 0.0]));
        let mut sum = t;
        sum.add(&t);
        assert!((sum.female_var.unwrap()[3] - 2.0 * var[3]).abs() < 1e-9);
        assert!((sum.female[3] - 2.6).abs() < 1e-6);
    }

    #[test]
    fn largest_remainder_gives_whole_numbers_that_sum_to_the_total() {
        assert_eq!(largest_remainder(&[0.4, 1.1, 0.7, 1.7, 0.0, 0.1], 4), [0, 1, 1, 2, 0, 0]);
        assert_eq!(largest_remainder(&[0.5, 0.5], 1), [1, 0], "a tie goes to the earlier");
        assert_eq!(largest_remainder(&[2.0, 1.0, 0.0], 3), [2, 1, 0], "whole numbers stay");
        // Rounded log values that drift from the people counted are scaled to them.
        assert_eq!(largest_remainder(&[0.33, 0.33, 0.33], 1), [1, 0, 0]);
        assert_eq!(largest_remainder(&[0.34, 0.33, 1.33], 2), [1, 0, 1]);
        assert_eq!(largest_remainder(&[f64::NAN, -3.0, 2.0], 2), [0, 0, 2], "bad values count as zero");
        assert_eq!(largest_remainder(&[0.0, 0.0], 3), [0, 0], "nothing to share out");
        assert_eq!(largest_remainder::<2>(&[1.0, 1.0], 0), [0, 0]);
        // Many random tallies: the sum is always the total, each value within 1 of its share.
        let mut seed = 7u64;
        for _ in 0..500 {
            let v: [f64; 6] = std::array::from_fn(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 40) as f64 / (1u64 << 20) as f64
            });
            let total = v.iter().sum::<f64>().round() as u64;
            let w = largest_remainder(&v, total);
            assert_eq!(w.iter().sum::<u64>(), total, "{v:?}");
            let scale = total as f64 / v.iter().sum::<f64>();
            assert!(w.iter().zip(v).all(|(w, v)| (*w as f64 - v * scale).abs() < 1.0), "{v:?} -> {w:?}");
        }
    }

    #[test]
    fn a_tally_reads_as_whole_people_with_their_two_sigma() {
        let mut t = BandTally::default();
        // Four women, each 0.1 / 0.275 / 0.175 / 0.425 / 0.025 in five bands, and one sure man.
        for _ in 0..4 {
            t.add_person(Gender::Female, &[0.1, 0.275, 0.175, 0.425, 0.025, 0.0]);
        }
        t.add_person(Gender::Male, &one_band(45.0));
        let whole = t.whole(5);
        assert_eq!(whole.female.map(|c| c.people), [0, 1, 1, 2, 0, 0], "0.4 1.1 0.7 1.7 0.1 0");
        assert_eq!(whole.male.map(|c| c.people), [0, 0, 0, 0, 1, 0]);
        assert_eq!((whole.female_people, whole.male_people), (4, 1));
        // 20-39: 4 x 0.425 x 0.575 = 0.98, two sigma 1.98.
        assert_eq!(whole.female[3].plus_minus, 2);
        assert_eq!(whole.male[4].plus_minus, 0);
        assert_eq!(format!("{}", whole.female[3]), "2 ±2");
        assert_eq!(format!("{:>7}", whole.female[3]), "   2 ±2", "pads as one");
        assert_eq!(t.whole_of_sum(), whole);
        // Counted people decide the total when the log's rounding drifted from them.
        let drifted = BandTally { female: [0.0, 0.0, 0.0, 2.98, 0.0, 0.0], ..Default::default() };
        assert_eq!(drifted.whole(3).female[3].people, 3);
        let v = whole_counts(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], &[f64::NAN, -1.0, 0.0, 0.0, 0.0, 0.0], 1);
        assert_eq!(v.map(|c| c.plus_minus), [0; 6], "no variance to speak of: ±0");
    }
}
