//! Summaries of counts logs: totals, people per hour, a table, JSON and a PNG chart.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use jiff::fmt::temporal::Pieces;
use jiff::{Timestamp, civil};
use serde::Serialize;

use crate::age_gender::Gender;
use crate::bands::AGE_BANDS;
use crate::chart::{Canvas, Series, stacked_bars_canvas};
use crate::counts::{BandTally, IntervalRecord, WholeTally};

/// A line of a counts log with its start read once: the instant (order and `--from`/`--to`)
/// and the board's local date and time as it wrote them (the hour a report groups by).
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub record: IntervalRecord,
    pub start: Timestamp,
    pub local_start: civil::DateTime,
}

impl LogLine {
    pub fn new(record: IntervalRecord) -> Result<LogLine> {
        let text = &record.start;
        let bad = || format!("start {text:?} is not an RFC 3339 time");
        let start: Timestamp = text.parse().with_context(bad)?;
        let pieces = Pieces::parse(text).with_context(bad)?;
        let local_start = pieces.date().to_datetime(pieces.time().unwrap_or_default());
        Ok(LogLine { record, start, local_start })
    }
}

/// Reads JSON Lines or CSV counts logs, oldest line first. Lines that cannot be read (a torn
/// line from a crash the writer has not repaired yet, a foreign line) are skipped with a
/// warning naming them.
pub fn read_logs(paths: &[impl AsRef<Path>]) -> Result<(Vec<LogLine>, Vec<String>)> {
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    let header = IntervalRecord::csv_header();
    for path in paths {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line == header {
                continue;
            }
            let parsed = if line.starts_with('{') {
                serde_json::from_str::<IntervalRecord>(line).map_err(anyhow::Error::from)
            } else {
                IntervalRecord::from_csv_line(line)
            };
            match parsed.and_then(LogLine::new) {
                Ok(l) => lines.push(l),
                Err(e) => warnings.push(format!("{}:{}: skipped ({e:#})", path.display(), n + 1)),
            }
        }
    }
    lines.sort_by_key(|l| l.start);
    Ok((lines, warnings))
}

/// Totals over a time range, and per hour.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub from: Option<String>,
    pub to: Option<String>,
    pub intervals: usize,
    pub people: u32,
    /// Expected counts and their variances, summed over the lines.
    #[serde(flatten)]
    pub tally: BandTally,
    /// The tally as a person reads it: whole people adding up to `people`, each band with
    /// its ±2 sigma.
    pub whole: WholeTally,
    pub frames: u64,
    pub dropped: u64,
    /// Visits that ended in the range, per [`crate::counts::DWELL_BUCKETS`] bucket (lines of schema 2 on).
    pub dwell: [u32; 4],
    /// Median time in view, seconds: the lines' medians, each weighted by its visits (the
    /// log keeps no single visit, so this is the median of medians).
    pub dwell_median_s: Option<f32>,
    /// "YYYY-MM-DD HH:00" (the log's local time) -> people per gender and band.
    pub per_hour: BTreeMap<String, BandTally>,
    /// Source (camera) name -> people, for lines that name their source (schema 3 on).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_source: BTreeMap<String, u32>,
    /// People per gender and age band of each group `--by` asks for (site, `site/device`, or
    /// source), when it does.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, BandTally>,
}

/// How `faceage report --by` splits the totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum GroupBy {
    /// Per site (lines gathered by `faceage collect`).
    Site,
    /// Per board, as `site/device`.
    Device,
    /// Per camera (`--source` name).
    Source,
}

impl GroupBy {
    /// The group of a line; lines without the field make the group `-`.
    fn of(self, r: &IntervalRecord) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        match self {
            GroupBy::Site => or_dash(&r.site),
            GroupBy::Device => format!("{}/{}", or_dash(&r.site), or_dash(&r.device)),
            GroupBy::Source => or_dash(&r.source),
        }
    }
}

/// [`summarize`], with the totals also split by `by`.
pub fn summarize_by(
    lines: &[LogLine],
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    by: GroupBy,
) -> Summary {
    let mut s = summarize(lines, from, to);
    for line in lines {
        if from.is_some_and(|f| line.start < f) || to.is_some_and(|t| line.start >= t) {
            continue;
        }
        s.groups.entry(by.of(&line.record)).or_default().add(&line.record.tally);
    }
    s
}

/// Sums the lines starting in `[from, to)`.
pub fn summarize(lines: &[LogLine], from: Option<Timestamp>, to: Option<Timestamp>) -> Summary {
    let mut s =
        Summary { from: from.map(|t| t.to_string()), to: to.map(|t| t.to_string()), ..Default::default() };
    let mut medians: Vec<(f32, u32)> = Vec::new();
    for line in lines {
        if from.is_some_and(|f| line.start < f) || to.is_some_and(|t| line.start >= t) {
            continue;
        }
        let r = &line.record;
        s.intervals += 1;
        s.people += r.people;
        s.frames += r.frames;
        s.dropped += r.dropped;
        s.tally.add(&r.tally);
        for (total, n) in s.dwell.iter_mut().zip(r.dwell.dwell) {
            *total += n;
        }
        if let Some(m) = r.dwell.dwell_median_s {
            medians.push((m, r.dwell.visits().max(1)));
        }
        let hour = line.local_start.strftime("%Y-%m-%d %H:00").to_string();
        s.per_hour.entry(hour).or_default().add(&r.tally);
        if let Some(source) = &r.source {
            *s.per_source.entry(source.clone()).or_default() += r.people;
        }
    }
    s.dwell_median_s = weighted_median(&mut medians);
    s.whole = s.tally.whole(u64::from(s.people));
    s
}

/// The value at which half the weight lies on either side.
fn weighted_median(values: &mut [(f32, u32)]) -> Option<f32> {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u32 = values.iter().map(|v| v.1).sum();
    let mut seen = 0;
    for &(value, weight) in values.iter() {
        seen += weight;
        if 2 * seen >= total {
            return Some(value);
        }
    }
    None
}

/// Rows of whole people per gender under a `key` column `width` wide (hours, groups).
fn people_table(key: &str, width: usize, rows: &BTreeMap<String, BandTally>) -> String {
    let mut out = format!("\n{key:<width$}{:>8}{:>8}{:>8}\n", "female", "male", "people");
    for (name, tally) in rows {
        let whole = tally.whole_of_sum();
        let (f, m) = (whole.female_people, whole.male_people);
        out.push_str(&format!("{name:<width$}{f:>8}{m:>8}{:>8}\n", f + m));
    }
    out
}

/// What the ± of the tables means, under them.
pub const PLUS_MINUS_NOTE: &str = "(whole people: the expected counts rounded to add up to the people counted; ± the whole \
     people within two standard deviations of each count, a 95% interval)";

impl Summary {
    /// A plain-text table: totals by gender and age band, then people per hour.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{} people in {} intervals ({} frames, {} dropped)\n\n",
            self.people, self.intervals, self.frames, self.dropped
        ));
        out.push_str(&format!("{:<8}", ""));
        for (b, _, _) in AGE_BANDS {
            out.push_str(&format!("{b:>9}"));
        }
        out.push_str(&format!("{:>8}\n", "total"));
        for (name, gender) in [("female", Gender::Female), ("male", Gender::Male)] {
            out.push_str(&format!("{name:<8}"));
            for c in self.whole.of(gender) {
                out.push_str(&format!("{c:>9}"));
            }
            out.push_str(&format!("{:>8}\n", self.whole.people(gender)));
        }
        out.push_str(PLUS_MINUS_NOTE);
        out.push('\n');
        if self.dwell.iter().sum::<u32>() > 0 {
            let buckets = ["under 5 s", "5-30 s", "30 s-2 min", "over 2 min"];
            let parts: Vec<String> =
                buckets.iter().zip(self.dwell).map(|(b, n)| format!("{b} {n}")).collect();
            out.push_str(&format!("\ntime in view: {}", parts.join(", ")));
            if let Some(m) = self.dwell_median_s {
                out.push_str(&format!("; median about {m:.0} s"));
            }
            out.push('\n');
        }
        if !self.groups.is_empty() {
            out.push_str(&people_table("group", 24, &self.groups));
        } else if self.per_source.len() > 1 {
            let parts: Vec<String> = self.per_source.iter().map(|(s, n)| format!("{s} {n}")).collect();
            out.push_str(&format!("\npeople per source: {}\n", parts.join(", ")));
        }
        if !self.per_hour.is_empty() {
            out.push_str(&people_table("hour", 16, &self.per_hour));
        }
        out
    }

    /// People per hour, stacked by gender and age band.
    pub fn chart(&self) -> RgbImage {
        self.chart_canvas().image
    }

    /// [`Self::chart`] with the boxes of its text.
    pub fn chart_canvas(&self) -> Canvas {
        let hours: Vec<String> = self.per_hour.keys().map(|h| h[11..].to_string()).collect();
        // Warm shades for female, cool for male, darker with age.
        let shade = |female: bool, band: usize| -> Rgb<u8> {
            let t = band as f32 / 5.0;
            let mix = |a: f32, b: f32| (a + (b - a) * t) as u8;
            if female {
                Rgb([mix(250.0, 150.0), mix(170.0, 30.0), mix(200.0, 90.0)])
            } else {
                Rgb([mix(160.0, 20.0), mix(200.0, 70.0), mix(250.0, 150.0)])
            }
        };
        let mut series = Vec::new();
        for (g, female) in [("F", true), ("M", false)] {
            let whole = self.whole.of(if female { Gender::Female } else { Gender::Male });
            for (b, (band, _, _)) in AGE_BANDS.iter().enumerate() {
                series.push(Series {
                    // The legend says how many in all, as the table does.
                    name: format!("{g} {band}: {}", whole[b]),
                    color: shade(female, b),
                    values: self
                        .per_hour
                        .values()
                        .map(|t| if female { t.female[b] } else { t.male[b] })
                        .collect(),
                });
            }
        }
        let width = (160 + 40 * hours.len() as u32).clamp(640, 2400);
        let title = match (&self.from, &self.to) {
            (None, None) => "people per hour".to_string(),
            (from, to) => format!(
                "people per hour, {} to {}",
                from.as_deref().unwrap_or("start"),
                to.as_deref().unwrap_or("now")
            ),
        };
        // The legend wraps under the title; 400 px leave the bars about 300 at 640 px wide.
        stacked_bars_canvas(&title, "hour", &hours, &series, width, 400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::counts::{BandCounts, DwellSummary};

    #[test]
    fn dwell_times_add_up_over_lines_and_old_lines_add_none() {
        let z = [0.0; 6];
        let mut a = line("2026-11-29T10:00:00+01:00", 3, z, z);
        a.dwell = DwellSummary::from_seconds(&[2.0, 3.0, 40.0]);
        let mut b = line("2026-11-29T10:01:00+01:00", 1, z, z);
        b.dwell = DwellSummary::from_seconds(&[200.0]);
        let old = line("2026-11-29T10:02:00+01:00", 2, z, z);
        let lines: Vec<LogLine> = [a, b, old].into_iter().map(|r| LogLine::new(r).unwrap()).collect();
        let s = summarize(&lines, None, None);
        assert_eq!(s.dwell, [2, 0, 1, 1]);
        // Line medians 3 s (3 visits) and 200 s (1 visit).
        assert_eq!(s.dwell_median_s, Some(3.0));
        let table = s.table();
        assert!(
            table.contains(
                "time in view: under 5 s 2, 5-30 s 0, 30 s-2 min 1, over 2 min 1; median about 3 s"
            ),
            "{table}"
        );
        let none = summarize(&lines[2..], None, None);
        assert!(!none.table().contains("time in view"), "no dwell line for logs without dwell times");
    }

    fn line(start: &str, people: u32, female: BandCounts, male: BandCounts) -> IntervalRecord {
        IntervalRecord {
            start: start.into(),
            end: start.into(),
            people,
            tally: BandTally { female, male, ..Default::default() },
            frames: 100,
            dropped: 1,
            dwell: Default::default(),
            schema: 1,
            source: None,
            site: None,
            device: None,
        }
    }

    #[test]
    fn totals_split_by_site_and_device() {
        let tagged = |site: &str, device: &str, female: f64| {
            let mut r = line("2026-11-29T10:05:00+01:00", 1, [0.0, 0.0, 0.0, female, 0.0, 0.0], [0.0; 6]);
            r.site = Some(site.into());
            r.device = Some(device.into());
            LogLine::new(r).unwrap()
        };
        let lines = [tagged("paris", "pi1", 1.0), tagged("paris", "pi2", 2.0), tagged("lyon", "pi1", 4.0)];
        let by_site = summarize_by(&lines, None, None, GroupBy::Site);
        assert_eq!(by_site.groups["paris"].female[3], 3.0);
        assert_eq!(by_site.groups["lyon"].female[3], 4.0);
        let by_device = summarize_by(&lines, None, None, GroupBy::Device);
        assert_eq!(by_device.groups.keys().collect::<Vec<_>>(), vec!["lyon/pi1", "paris/pi1", "paris/pi2"]);
        assert!(by_device.table().contains("paris/pi2"), "{}", by_device.table());
        let untagged = summarize_by(
            &[LogLine::new(line("2026-11-29T10:05:00+01:00", 1, [0.0; 6], [0.0; 6])).unwrap()],
            None,
            None,
            GroupBy::Site,
        );
        assert!(untagged.groups.contains_key("-"));
    }

    #[test]
    fn people_are_also_summed_per_source() {
        let mut door = line("2026-11-29T10:05:00+01:00", 3, [0.0, 0.0, 0.0, 3.0, 0.0, 0.0], [0.0; 6]);
        door.source = Some("door".into());
        let mut till = line("2026-11-29T10:05:00+01:00", 1, [0.0; 6], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        till.source = Some("till".into());
        let door_later = LogLine::new(door.clone()).unwrap();
        let lines: Vec<LogLine> = [door, till].into_iter().map(|r| LogLine::new(r).unwrap()).collect();
        let mut all = lines.clone();
        all.push(door_later);
        let s = summarize(&all, None, None);
        assert_eq!(s.people, 7);
        assert_eq!(
            s.per_source.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
            vec![("door", 6), ("till", 1)]
        );
        assert!(s.table().contains("people per source: door 6, till 1"), "{}", s.table());
        let unnamed = summarize(
            &[LogLine::new(line("2026-11-29T10:05:00+01:00", 1, [0.0; 6], [0.0; 6])).unwrap()],
            None,
            None,
        );
        assert!(unnamed.per_source.is_empty() && !unnamed.table().contains("per source"));
        assert!(serde_json::to_value(&unnamed).unwrap().get("per_source").is_none());
    }

    #[test]
    fn logs_are_read_summed_by_range_and_hour_and_torn_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("a.jsonl");
        let r1 = line(
            "2026-11-29T10:05:00+01:00",
            2,
            [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        );
        let r2 = line("2026-11-29T11:10:00+01:00", 1, [0.0, 0.0, 0.0, 0.0, 0.25, 0.75], [0.0; 6]);
        std::fs::write(
            &jsonl,
            format!(
                "{}\n{}\n{{\"start\":\"2026",
                serde_json::to_string(&r1).unwrap(),
                serde_json::to_string(&r2).unwrap()
            ),
        )
        .unwrap();
        let csv = dir.path().join("b.csv");
        let r3 = line("2026-11-29T11:20:00+01:00", 1, [0.0; 6], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        std::fs::write(&csv, format!("{}\n{}\n", IntervalRecord::csv_header(), r3.csv_line())).unwrap();

        let (records, warnings) = read_logs(&[jsonl.clone(), csv]).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("a.jsonl:3"), "{warnings:?}");

        let all = summarize(&records, None, None);
        assert_eq!((all.people, all.intervals, all.frames, all.dropped), (4, 3, 300, 3));
        assert_eq!(all.tally.female, [0.0, 0.0, 0.0, 1.0, 0.25, 0.75]);
        assert_eq!(all.per_hour.len(), 2);
        assert_eq!(all.per_hour["2026-11-29 11:00"].male[0], 1.0);
        let table = all.table();
        assert!(table.contains("4 people in 3 intervals"), "{table}");
        // Whole people adding up to the people counted, each band with its ±: 0.25 and 0.75
        // of one woman are one woman in 60+, give or take one (a line from before variances
        // is read with the largest variance its counts allow).
        let row = |name: &str| -> Vec<String> {
            let line = table.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().skip(1).map(str::to_string).collect()
        };
        let female = row("female");
        assert_eq!(
            female,
            ["0", "±0", "0", "±0", "0", "±0", "1", "±0", "0", "±1", "1", "±1", "2"],
            "{table}"
        );
        let male = row("male");
        assert_eq!(male, ["1", "±0", "0", "±0", "0", "±0", "0", "±0", "1", "±0", "0", "±0", "2"], "{table}");
        assert!(table.contains("95% interval"), "{table}");
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(json["whole"]["female"][5], serde_json::json!({"people": 1, "plus_minus": 1}));
        assert_eq!(json["female"][4], 0.25, "the exact expected counts stay in the JSON");
        assert_eq!(json["female_var"][4], 0.1875);

        let from: Timestamp = "2026-11-29T10:00:00Z".parse().unwrap();
        let late = summarize(&records, Some(from), None);
        assert_eq!(late.people, 2, "only records from 11:00 local (10:00 UTC) on");
        let chart = all.chart_canvas();
        assert!(chart.image.width() >= 640);
        crate::chart::assert_readable(&chart);
    }

    #[test]
    fn hour_charts_keep_every_label_readable_from_640_px_up() {
        for hours in [3, 8, 24] {
            let lines: Vec<LogLine> = (0..hours)
                .map(|h| {
                    let start = format!("2026-11-29T{h:02}:00:00+01:00");
                    let shares = [0.1, 0.2, 0.1, 0.3, 0.2, 0.1].map(|v| v * (1 + h % 5) as f64);
                    LogLine::new(line(&start, 3, shares, shares)).unwrap()
                })
                .collect();
            let from: Timestamp = "2026-11-28T23:00:00Z".parse().unwrap();
            let to: Timestamp = "2026-11-29T23:00:00Z".parse().unwrap();
            let summary = summarize(&lines, Some(from), Some(to));
            assert_eq!(summary.per_hour.len(), hours as usize);
            let chart = summary.chart_canvas();
            if hours <= 8 {
                assert_eq!(chart.image.width(), 640, "a few hours draw the narrowest chart");
            }
            crate::chart::assert_readable(&chart);
            assert!(
                chart.text_boxes.iter().any(|b| b.text.starts_with("M 60+: ") && b.text.contains(" ±")),
                "every band is in the legend with its people"
            );
        }
    }
}
