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
/// float sum is 1 only to within rounding).
pub fn add_shares(counts: &mut BandCounts, shares: &BandShares) {
    let total: f32 = shares.iter().sum();
    for (c, s) in counts.iter_mut().zip(shares) {
        *c += (*s / total.max(f32::EPSILON)) as f64;
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
/// `faceage report` keep. Serialised as `"female": [6 bands], "male": [6 bands]`, flattened
/// into the record that holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BandTally {
    pub female: BandCounts,
    pub male: BandCounts,
}

impl BandTally {
    /// Columns of a tally in a CSV line: the female bands, then the male ones.
    pub const CSV_COLUMNS: usize = 2 * AGE_BANDS.len();

    /// One person: their share in each age band ([`add_shares`]).
    pub fn add_person(&mut self, gender: Gender, shares: &BandShares) {
        let counts = match gender {
            Gender::Female => &mut self.female,
            Gender::Male => &mut self.male,
        };
        add_shares(counts, shares);
    }

    /// Adds another tally's counts (summing intervals).
    pub fn add(&mut self, other: &BandTally) {
        for b in 0..AGE_BANDS.len() {
            self.female[b] += other.female[b];
            self.male[b] += other.male[b];
        }
    }

    pub fn of(&self, gender: Gender) -> &BandCounts {
        match gender {
            Gender::Female => &self.female,
            Gender::Male => &self.male,
        }
    }

    /// People of one gender (the sum over its bands; an expected count, see [`BandCounts`]).
    pub fn people(&self, gender: Gender) -> f64 {
        self.of(gender).iter().sum()
    }

    /// Every band to hundredths, as the log stores them.
    pub fn rounded(&self) -> BandTally {
        BandTally { female: round_bands(&self.female), male: round_bands(&self.male) }
    }

    fn csv_fields(&self) -> impl Iterator<Item = String> + '_ {
        self.female.iter().chain(&self.male).map(f64::to_string)
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
}

/// Rounds every band to hundredths, as the log stores them.
pub fn round_bands(bands: &BandCounts) -> BandCounts {
    bands.map(|v| (v * 100.0).round() / 100.0)
}

/// One interval of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    /// The line's layout: 3 since sources, 2 since dwell times; lines without it are schema
    /// 1 (no dwell).
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
    pub const SCHEMA: u32 = 3;
    /// Columns of a CSV line: start, end, people, the tally, frames, dropped, the dwell buckets,
    /// the median dwell (empty when none) and the source (empty when unnamed).
    pub const CSV_COLUMNS: usize = Self::CSV_COLUMNS_V2 + 1;
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
        cols.join(",")
    }

    /// Reads a CSV line of any layout (with or without the dwell and source columns).
    pub fn from_csv_line(line: &str) -> Result<Self> {
        let f: Vec<&str> = line.trim_end_matches(['\r', '\n']).split(',').collect();
        if ![Self::CSV_COLUMNS, Self::CSV_COLUMNS_V2, Self::CSV_COLUMNS_V1].contains(&f.len()) {
            bail!(
                "{} columns, expected {} (or {} before sources, {} before dwell times)",
                f.len(),
                Self::CSV_COLUMNS,
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
            (if f.len() == Self::CSV_COLUMNS { Self::SCHEMA } else { 2 }, dwell)
        } else {
            (1, DwellSummary::default())
        };
        let source = f.get(Self::CSV_COLUMNS_V2).filter(|s| !s.is_empty()).map(|s| s.to_string());
        Ok(Self {
            schema,
            source,
            site: None,
            device: None,
            start: f[0].to_string(),
            end: f[1].to_string(),
            people: n(2)? as u32,
            tally: BandTally::from_csv_fields(&f, 3)?,
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
            tally: BandTally { female: [0.0, 1.0, 0.0, 2.0, 0.0, 0.0], male: [0.0, 0.0, 0.0, 1.0, 1.0, 0.0] },
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
        assert_eq!(json["schema"], 3);
        assert_eq!(json["source"], "entrance");
        assert_eq!(json["dwell"], serde_json::json!([1, 1, 1, 0]));
        assert_eq!(json["dwell_median_s"], 12.5);
        assert_eq!(serde_json::from_value::<IntervalRecord>(json).unwrap(), r);
        assert_eq!(IntervalRecord::from_csv_line(&r.csv_line()).unwrap(), r);
        assert_eq!(IntervalRecord::csv_header().split(',').count(), IntervalRecord::CSV_COLUMNS);
        let unnamed = IntervalRecord { source: None, ..r.clone() };
        assert!(serde_json::to_value(&unnamed).unwrap().get("source").is_none());
        assert_eq!(IntervalRecord::from_csv_line(&unnamed.csv_line()).unwrap(), unnamed);

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
    }
}
