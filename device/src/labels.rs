//! Labelled face images: UTKFace folders and CSV manifests, and the seeded train/val/test split.
//!
//! Here rather than in the trainer because the board reads labelled images too
//! (`faceage eval`), and both sides must agree on the labels and on which faces are held out.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Race groups as the data sets name them: UTKFace's five first, in its label order (a
/// UTKFace name's race digit is the index), then the groups FairFace adds. A manifest names a
/// group (case-insensitive) or gives UTKFace's digit. The groups of different data sets are
/// not merged: FairFace's East and Southeast Asian faces are not UTKFace's "Asian".
pub const RACE_NAMES: [&str; 9] = [
    "White",
    "Black",
    "Asian",
    "Indian",
    "Others",
    "East Asian",
    "Southeast Asian",
    "Middle Eastern",
    "Latino_Hispanic",
];

/// UTKFace's race digits are 0 to this, less one: the first groups of [`RACE_NAMES`].
pub const UTKFACE_RACES: u8 = 5;

/// An age label that is an interval (FairFace's `20-29`, `70+`): the true age is somewhere in
/// `[from, to)` years. Trained on as an interval, never as its midpoint (the trainer's loss),
/// and read as one (`faceage eval`: group exact, within one group).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgeGroup {
    pub from: f32,
    pub to: f32,
}

/// Ages are labelled up to this (an open group such as `70+` ends here).
pub const MAX_AGE: f32 = 121.0;

impl AgeGroup {
    /// Parses `20-29` (whole years 20 to 29, so `[20, 30)`) or `70+` (`[70, 121)`).
    pub fn parse(text: &str) -> Option<AgeGroup> {
        let whole =
            |t: &str| t.trim().parse::<u32>().ok().filter(|a| (*a as f32) < MAX_AGE).map(|a| a as f32);
        let group = if let Some(from) = text.strip_suffix('+') {
            AgeGroup { from: whole(from)?, to: MAX_AGE }
        } else {
            let (from, to) = text.split_once('-')?;
            AgeGroup { from: whole(from)?, to: whole(to)? + 1.0 }
        };
        (group.from < group.to).then_some(group)
    }

    pub fn contains(&self, age: f32) -> bool {
        age >= self.from && age < self.to
    }

    /// How far `age` lies outside the group, in years (0 inside): the interval's absolute error.
    pub fn distance(&self, age: f32) -> f32 {
        (self.from - age).max(age - self.to).max(0.0)
    }

    /// The group's middle (an open group: 5 years past its start). For ordering and for the
    /// direction of a reading (`faceage eval`'s bias), never a training target.
    pub fn midpoint(&self) -> f32 {
        if self.to >= MAX_AGE { self.from + 5.0 } else { (self.from + self.to - 1.0) / 2.0 }
    }
}

impl fmt::Display for AgeGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.to >= MAX_AGE {
            write!(f, "{}+", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to - 1.0)
        }
    }
}

/// One labelled image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    /// Age in years; for a sample labelled with an age group, the group's midpoint, used only
    /// to order and band it (see [`Sample::age_group`]).
    pub age: f32,
    pub female: bool,
    /// Race group (index into [`RACE_NAMES`]), when the source has one.
    pub race: Option<u8>,
    /// The age group, when the label is one rather than an exact age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_group: Option<AgeGroup>,
    /// Which of a run's data sources it came from (the trainer's `--data`, in order); 0 when
    /// there is one.
    #[serde(default, skip_serializing_if = "is_first_source")]
    pub source: u8,
}

fn is_first_source(source: &u8) -> bool {
    *source == 0
}

impl Sample {
    /// A sample labelled with an exact age.
    pub fn exact(path: PathBuf, age: f32, female: bool, race: Option<u8>) -> Sample {
        Sample { path, age, female, race, age_group: None, source: 0 }
    }

    /// The years between a reading and the label: `|read - age|`, or how far the reading lies
    /// outside the age group (0 inside it).
    pub fn age_error(&self, read: f32) -> f32 {
        match self.age_group {
            Some(group) => group.distance(read),
            None => (read - self.age).abs(),
        }
    }

    /// The label's years as an interval: an age group, or `[age, age]` for an exact age.
    pub fn age_range(&self) -> (f32, f32) {
        self.age_group.map_or((self.age, self.age), |g| (g.from, g.to))
    }
}

/// Parses a race group: a name of [`RACE_NAMES`] (case-insensitive, `_` or space alike) or
/// UTKFace's digit 0-4.
pub fn parse_race(text: &str) -> Result<u8, String> {
    let norm = |t: &str| t.trim().to_ascii_lowercase().replace(' ', "_");
    if let Ok(digit) = text.trim().parse::<u8>() {
        return if digit < UTKFACE_RACES {
            Ok(digit)
        } else {
            Err(format!("race {text:?} is not 0..=4 or a group name"))
        };
    }
    RACE_NAMES
        .iter()
        .position(|name| norm(name) == norm(text))
        .map(|i| i as u8)
        .ok_or_else(|| format!("race {text:?} is not a known group ({})", RACE_NAMES.join(", ")))
}

/// An input that could not be used, and why. Loading reports these and carries on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Labels parsed from a UTKFace name `[age]_[gender]_[race]_[datetime].jpg.chip.jpg`.
pub fn parse_utkface_name(name: &str) -> Result<(f32, bool, u8), String> {
    let stem = name.split('.').next().unwrap_or_default();
    let parts: Vec<&str> = stem.split('_').collect();
    if parts.len() != 4 {
        return Err(format!("name has {} '_' fields, expected 4 (age_gender_race_datetime)", parts.len()));
    }
    let age: u32 = parts[0].parse().map_err(|_| format!("age {:?} is not a whole number", parts[0]))?;
    if age > 120 {
        return Err(format!("age {age} is out of range 0..=120"));
    }
    let female = match parts[1] {
        "0" => false,
        "1" => true,
        other => return Err(format!("gender {other:?} is not 0 (male) or 1 (female)")),
    };
    let race: u8 = match parts[2].parse() {
        Ok(r) if r < UTKFACE_RACES => r,
        _ => return Err(format!("race {:?} is not 0..=4", parts[2])),
    };
    Ok((age as f32, female, race))
}

/// Reads labelled images from a UTKFace folder or a CSV manifest (`path,age,gender[,race]`:
/// age in years or an age group `20-29`/`70+`, gender `M`/`F`, `Male`/`Female` or `0`/`1`,
/// race a [`RACE_NAMES`] group or UTKFace's digit, paths relative to the manifest). Unusable
/// entries are returned with the reason, not fatal. Samples are sorted by path so every later
/// step is deterministic.
pub fn load_dataset(source: &Path) -> Result<(Vec<Sample>, Vec<Rejected>)> {
    let (mut samples, rejected) = if source.is_dir() {
        load_utkface_dir(source)?
    } else if source.is_file() {
        load_manifest(source)?
    } else {
        bail!(
            "{}: no such folder or manifest. Point --data at an extracted UTKFace/ folder \
             (https://susanqq.github.io/UTKFace/) or a CSV manifest path,age,gender",
            source.display()
        );
    };
    samples.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((samples, rejected))
}

fn load_utkface_dir(dir: &Path) -> Result<(Vec<Sample>, Vec<Rejected>)> {
    let mut samples = Vec::new();
    let mut rejected = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list folder", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list folder", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let lower = name.to_ascii_lowercase();
        if !(lower.ends_with(".jpg") || lower.ends_with(".jpeg") || lower.ends_with(".png")) {
            continue; // READMEs, licences and the like are not images.
        }
        match parse_utkface_name(&name) {
            Ok((age, female, race)) => samples.push(Sample::exact(path, age, female, Some(race))),
            Err(reason) => rejected.push(Rejected { path, reason: format!("unparsable label: {reason}") }),
        }
    }
    if samples.is_empty() {
        bail!("{}: no UTKFace images (age_gender_race_datetime.jpg) found", dir.display());
    }
    Ok((samples, rejected))
}

fn load_manifest(file: &Path) -> Result<(Vec<Sample>, Vec<Rejected>)> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(file)
        .with_context(|| format!("{}: cannot read manifest", file.display()))?;
    let headers = reader.headers().with_context(|| format!("{}: no CSV header", file.display()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(path_col), Some(age_col), Some(gender_col)) = (column("path"), column("age"), column("gender"))
    else {
        bail!("{}: manifest header must name path,age,gender (got {:?})", file.display(), headers);
    };
    let race_col = column("race");
    let mut samples = Vec::new();
    let mut rejected = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                rejected.push(Rejected { path: file.to_path_buf(), reason: format!("line {line}: {e}") });
                continue;
            }
        };
        let field = |i: usize| record.get(i).unwrap_or("");
        let path = base.join(field(path_col));
        let parsed = (|| -> Result<Sample, String> {
            if field(path_col).is_empty() {
                return Err("empty path".into());
            }
            let age_text = field(age_col);
            let (age, age_group) = match age_text.parse::<f32>() {
                Ok(age) if (0.0..=120.0).contains(&age) => (age, None),
                Ok(age) => return Err(format!("age {age} is out of range 0..=120")),
                Err(_) => match AgeGroup::parse(age_text) {
                    Some(group) => (group.midpoint(), Some(group)),
                    None => {
                        return Err(format!(
                            "age {age_text:?} is neither a number of years nor an age group such as 20-29 or 70+"
                        ));
                    }
                },
            };
            let female = match field(gender_col).to_ascii_uppercase().as_str() {
                "F" | "1" | "FEMALE" => true,
                "M" | "0" | "MALE" => false,
                other => return Err(format!("gender {other:?} is not M/F, Male/Female or 0/1")),
            };
            let race = match race_col.map(field).filter(|t| !t.is_empty()) {
                Some(text) => Some(parse_race(text)?),
                None => None,
            };
            Ok(Sample { path: path.clone(), age, female, race, age_group, source: 0 })
        })();
        match parsed {
            Ok(s) => samples.push(s),
            Err(reason) => {
                rejected.push(Rejected { path, reason: format!("{}:{line}: {reason}", file.display()) })
            }
        }
    }
    if samples.is_empty() {
        let why: String = rejected.iter().take(3).map(|r| format!("\n  {r}")).collect();
        bail!("{}: manifest lists no usable images ({} rows rejected){why}", file.display(), rejected.len());
    }
    Ok((samples, rejected))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

/// Assigns a sample to a split from a seeded hash of its file name: stable when files are
/// added or removed, and the same on every machine. 80% train, 10% validation, 10% test.
pub fn split_of(path: &Path, seed: u64) -> Split {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bucket = fnv1a(seed, name.as_bytes()) % 100;
    match bucket {
        0..80 => Split::Train,
        80..90 => Split::Val,
        _ => Split::Test,
    }
}

/// 64-bit FNV-1a, seeded; used for splits and cache keys, where stability across Rust
/// versions matters more than hash quality.
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so nearby names spread over all buckets.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utkface_names_parse_or_say_why_not() {
        assert_eq!(parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg"), Ok((26.0, true, 2)));
        assert_eq!(parse_utkface_name("1_0_0_20161219140623097.jpg.chip.jpg"), Ok((1.0, false, 0)));
        let missing_race = parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg").unwrap_err();
        assert!(missing_race.contains("expected 4"), "{missing_race}");
        assert!(parse_utkface_name("abc.jpg").is_err());
        assert!(parse_utkface_name("x_1_2_2017.jpg").unwrap_err().contains("age"));
        assert!(parse_utkface_name("20_2_2_2017.jpg").unwrap_err().contains("gender"));
        assert!(parse_utkface_name("20_1_7_2017.jpg").unwrap_err().contains("race"));
        assert!(parse_utkface_name("200_1_1_2017.jpg").unwrap_err().contains("range"));
    }

    #[test]
    fn split_is_seeded_stable_and_roughly_80_10_10() {
        let names: Vec<PathBuf> = (0..5000).map(|i| PathBuf::from(format!("{i}_0_0_x.jpg"))).collect();
        let count = |seed, want| names.iter().filter(|p| split_of(p, seed) == want).count();
        let train = count(7, Split::Train);
        assert!((3800..4200).contains(&train), "{train}");
        assert!((400..600).contains(&count(7, Split::Test)));
        assert_eq!(split_of(&names[3], 7), split_of(Path::new("/elsewhere/3_0_0_x.jpg"), 7));
        let moved = names.iter().filter(|p| split_of(p, 7) != split_of(p, 8)).count();
        assert!(moved > 1000, "another seed must give another split");
    }

    #[test]
    fn manifest_rows_are_parsed_and_bad_rows_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.csv");
        std::fs::write(&file, "path,age,gender\na.jpg,30,F\nb.jpg,x,M\nc.jpg,40,Q\nd.jpg,5,0\n").unwrap();
        let (samples, rejected) = load_dataset(&file).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].path, dir.path().join("a.jpg"));
        assert!(samples[0].female && !samples[1].female);
        assert_eq!(rejected.len(), 2);
        assert!(rejected[0].reason.contains("age") && rejected[1].reason.contains("gender"));
    }

    #[test]
    fn age_groups_are_intervals() {
        let g = AgeGroup::parse("20-29").unwrap();
        assert_eq!((g.from, g.to), (20.0, 30.0));
        assert!(g.contains(29.9) && !g.contains(30.0) && !g.contains(19.99));
        assert_eq!(g.distance(25.0), 0.0);
        assert_eq!(g.distance(33.0), 3.0);
        assert_eq!(g.distance(18.5), 1.5);
        assert_eq!(g.midpoint(), 24.5);
        assert_eq!(g.to_string(), "20-29");
        let open = AgeGroup::parse("70+").unwrap();
        assert_eq!((open.from, open.to, open.to_string()), (70.0, MAX_AGE, "70+".to_string()));
        for bad in ["29-20", "x-9", "10-", "+", "abc", "200+", "5"] {
            assert_eq!(AgeGroup::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_manifest_of_age_groups_and_race_names_reads_and_bad_rows_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.csv");
        std::fs::write(
            &file,
            "path,age,gender,race\n\
             images/1.jpg,20-29,Male,White\n\
             images/2.jpg,70+,Female,East Asian\n\
             images/3.jpg,34,F,latino_hispanic\n\
             images/4.jpg,20-2,Male,White\n\
             images/5.jpg,20-29,Other,White\n\
             images/6.jpg,20-29,Male,Martian\n",
        )
        .unwrap();
        let (samples, rejected) = load_dataset(&file).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].age_group, AgeGroup::parse("20-29"));
        assert_eq!(samples[0].race, Some(0));
        assert_eq!(samples[1].race, Some(5));
        assert_eq!(samples[1].age_error(60.0), 10.0);
        assert_eq!((samples[2].age, samples[2].age_group, samples[2].race), (34.0, None, Some(8)));
        assert_eq!(samples[2].age_error(30.0), 4.0);
        let reasons: Vec<String> = rejected.iter().map(|r| r.to_string()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("4.jpg") && reasons[0].contains("age group"), "{}", reasons[0]);
        assert!(reasons[1].contains("5.jpg") && reasons[1].contains("gender"), "{}", reasons[1]);
        assert!(reasons[2].contains("6.jpg") && reasons[2].contains("Martian"), "{}", reasons[2]);

        // Nothing usable: the error names the rows and why, not only that there is nothing.
        std::fs::write(&file, "path,age,gender\na.jpg,twenty,M\n").unwrap();
        let err = format!("{:#}", load_dataset(&file).unwrap_err());
        assert!(err.contains("a.jpg") && err.contains("twenty"), "{err}");
    }
}
