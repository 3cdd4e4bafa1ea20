//! Labelled face images: UTKFace folders and CSV manifests, and the seeded train/val/test split.
//!
//! Here rather than in the trainer because the board reads labelled images too
//! (`faceage eval`), and both sides must agree on the labels and on which faces are held out.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// UTKFace race groups, in label order.
pub const RACE_NAMES: [&str; 5] = ["White", "Black", "Asian", "Indian", "Others"];

/// One labelled image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    /// Age in years.
    pub age: f32,
    pub female: bool,
    /// UTKFace race group (index into [`RACE_NAMES`]), when the source has one.
    pub race: Option<u8>,
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
        Ok(r) if (r as usize) < RACE_NAMES.len() => r,
        _ => return Err(format!("race {:?} is not 0..=4", parts[2])),
    };
    Ok((age as f32, female, race))
}

/// Reads labelled images from a UTKFace folder or a CSV manifest (`path,age,gender[,race]`,
/// gender `M`/`F` or `0`/`1`, paths relative to the manifest). Unusable entries are returned,
/// not fatal. Samples are sorted by path so every later step is deterministic.
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
            Ok((age, female, race)) => samples.push(Sample { path, age, female, race: Some(race) }),
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
            let age: f32 =
                field(age_col).parse().map_err(|_| format!("age {:?} is not a number", field(age_col)))?;
            if !(0.0..=120.0).contains(&age) {
                return Err(format!("age {age} is out of range 0..=120"));
            }
            let female = match field(gender_col).to_ascii_uppercase().as_str() {
                "F" | "1" | "FEMALE" => true,
                "M" | "0" | "MALE" => false,
                other => return Err(format!("gender {other:?} is not M/F or 0/1")),
            };
            let race = race_col
                .and_then(|c| field(c).parse::<u8>().ok())
                .filter(|r| (*r as usize) < RACE_NAMES.len());
            Ok(Sample { path: path.clone(), age, female, race })
        })();
        match parsed {
            Ok(s) => samples.push(s),
            Err(reason) => {
                rejected.push(Rejected { path, reason: format!("{}:{line}: {reason}", file.display()) })
            }
        }
    }
    if samples.is_empty() {
        bail!("{}: manifest lists no usable images", file.display());
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
}
