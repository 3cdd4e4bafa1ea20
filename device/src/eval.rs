//! How well the board reads labelled photos (`faceage eval`): every image goes through the
//! same path as `faceage classify` (decode -> framed detection -> crop -> model), the
//! best-scoring face is the reading, and the readings are compared with the labels the way a
//! venue owner would: age error, gender, and how far the counts per age band land from the truth.
//!
//! With a [`Scene`], each image is first placed on a camera-sized frame, a quarter of its
//! height, as a face at kiosk distance: the same faces, read as a camera would show them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::age_gender::{Estimate, Gender};
use crate::bands::{AGE_BANDS, age_band_index};
use crate::calibration::{Calibration, calibration};
use crate::counts::{BandCounts, add_shares};
use crate::imaging::load_rgb;
use crate::labels::{AgeGroup, RACE_NAMES, Rejected, Sample, fnv1a};
use crate::pipeline::Pipeline;

/// A camera-like frame to place each labelled image on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    /// The image's height as a share of the frame's.
    pub face_share: f32,
}

impl Default for Scene {
    /// A 640x480 frame with the photo a quarter of its height, as `examples/make_clip.rs` makes.
    fn default() -> Self {
        Self { width: 640, height: 480, face_share: 0.25 }
    }
}

impl Scene {
    /// `image` scaled to `face_share` of the frame height and placed at a spot that depends
    /// only on `key` (so every run places each image alike), on a soft uneven background.
    pub fn frame(&self, image: &RgbImage, key: u64) -> RgbImage {
        let (w, h) = (self.width, self.height);
        let mut frame = RgbImage::from_fn(w, h, |x, y| {
            Rgb([(70 + x * 60 / w) as u8, (90 + y * 50 / h) as u8, (110 + (x + y) % 40) as u8])
        });
        let side_h = ((h as f32 * self.face_share).round() as u32).clamp(1, h);
        let side_w = ((image.width() as f32 * side_h as f32 / image.height().max(1) as f32).round() as u32)
            .clamp(1, w);
        let small = image::imageops::resize(image, side_w, side_h, image::imageops::FilterType::Triangle);
        let x = (key % u64::from(w - side_w + 1)) as i64;
        let y = ((key >> 32) % u64::from(h - side_h + 1)) as i64;
        image::imageops::replace(&mut frame, &small, x, y);
        frame
    }
}

/// What the board made of one labelled image.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Read(Estimate),
    NoFace,
    Unreadable(String),
}

/// Reads every sample as `classify` would, `pipelines.len()` at a time; `progress` is told
/// how many are done. Outcomes are in the order of `samples`.
pub fn read_samples(
    pipelines: Vec<Pipeline>,
    samples: &[Sample],
    scene: Option<&Scene>,
    progress: &(dyn Fn(usize) + Sync),
) -> Vec<Outcome> {
    let results: Vec<Mutex<Option<Outcome>>> = samples.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for mut pipeline in pipelines {
            let (next, done, results) = (&next, &done, &results);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(sample) = samples.get(i) else { break };
                    let outcome = read_one(&mut pipeline, &sample.path, scene);
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or(Outcome::NoFace))
        .collect()
}

/// One image: decoded, placed in the scene if asked, read; the best-scoring face wins.
pub fn read_one(pipeline: &mut Pipeline, path: &Path, scene: Option<&Scene>) -> Outcome {
    let image = match load_rgb(path) {
        Ok(image) => image,
        Err(e) => {
            // The report names the file itself.
            let message = format!("{e:#}");
            let prefix = format!("{}: ", path.display());
            return Outcome::Unreadable(message.strip_prefix(&prefix).unwrap_or(&message).to_string());
        }
    };
    let frame = match scene {
        Some(scene) => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            scene.frame(&image, fnv1a(0x5ce7e, name.as_bytes()))
        }
        None => image,
    };
    match pipeline.analyze(&frame) {
        Ok(readings) => readings
            .iter()
            .max_by(|a, b| a.face.score.total_cmp(&b.face.score))
            .map_or(Outcome::NoFace, |r| Outcome::Read(r.estimate)),
        Err(e) => Outcome::Unreadable(format!("{e:#}")),
    }
}

/// Age error and gender accuracy of a group of faces.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    pub faces: usize,
    /// Mean absolute age error, years.
    pub age_mae: f64,
    /// Mean signed age error (read - true), years: below 0 when the group is read too young,
    /// which the absolute error cannot show.
    pub age_bias: f64,
    /// Share of faces whose gender is read right, percent.
    pub gender_accuracy: f64,
}

#[derive(Clone, Debug, Default)]
struct Tally {
    faces: usize,
    abs_error: f64,
    signed_error: f64,
    right: usize,
}

impl Tally {
    /// For an age-group label the absolute error is how far the reading lies outside the group
    /// (0 inside) and the signed error is measured from the group's midpoint.
    fn add(&mut self, sample: &Sample, e: &Estimate) {
        self.faces += 1;
        self.abs_error += sample.age_error(e.age) as f64;
        self.signed_error += e.age as f64 - sample.age as f64;
        self.right += usize::from((e.female >= 0.5) == sample.female);
    }

    fn figures(&self) -> Figures {
        let n = self.faces.max(1) as f64;
        Figures {
            faces: self.faces,
            age_mae: self.abs_error / n,
            age_bias: self.signed_error / n,
            gender_accuracy: 100.0 * self.right as f64 / n,
        }
    }
}

/// How a labelled age group is read: the reading inside the group, or at most one group off.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GroupFigures {
    pub name: String,
    pub faces: usize,
    /// Percent of faces whose reading lies in their labelled group.
    pub exact: f64,
    /// Percent whose reading lies in their group or a neighbouring one.
    pub within_one: f64,
    /// Mean (read - the group's midpoint), years.
    pub age_bias: f64,
    /// Percent of faces whose gender is read right.
    pub gender_accuracy: f64,
}

/// The figures of data labelled with age groups (FairFace's `20-29`): overall and per group.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgeGroupCheck {
    #[serde(flatten)]
    pub overall: GroupFigures,
    pub by_group: Vec<GroupFigures>,
}

impl AgeGroupCheck {
    /// None when no sample is labelled with a group. A reading's group is the one of the
    /// data's groups that holds it (the nearest, in a gap between groups).
    fn new(samples: &[Sample], outcomes: &[Outcome]) -> Option<AgeGroupCheck> {
        let mut groups: Vec<AgeGroup> = samples.iter().filter_map(|s| s.age_group).collect();
        if groups.is_empty() {
            return None;
        }
        groups.sort_by(|a, b| a.from.total_cmp(&b.from).then(a.to.total_cmp(&b.to)));
        groups.dedup();
        let group_of = |age: f32| -> usize {
            (0..groups.len())
                .min_by(|&a, &b| groups[a].distance(age).total_cmp(&groups[b].distance(age)))
                .unwrap_or(0)
        };
        #[derive(Clone, Default)]
        struct Count {
            faces: usize,
            exact: usize,
            within_one: usize,
            signed: f64,
            right: usize,
        }
        impl Count {
            fn figures(&self, name: String) -> GroupFigures {
                let n = self.faces.max(1) as f64;
                GroupFigures {
                    name,
                    faces: self.faces,
                    exact: 100.0 * self.exact as f64 / n,
                    within_one: 100.0 * self.within_one as f64 / n,
                    age_bias: self.signed / n,
                    gender_accuracy: 100.0 * self.right as f64 / n,
                }
            }
        }
        let mut overall = Count::default();
        let mut per_group = vec![Count::default(); groups.len()];
        for (sample, outcome) in samples.iter().zip(outcomes) {
            let (Some(label), Outcome::Read(e)) = (sample.age_group, outcome) else { continue };
            let truth = groups.iter().position(|g| *g == label).expect("every label's group is listed");
            let read = group_of(e.age);
            for c in [&mut overall, &mut per_group[truth]] {
                c.faces += 1;
                c.exact += usize::from(label.contains(e.age));
                c.within_one += usize::from(label.contains(e.age) || read.abs_diff(truth) <= 1);
                c.signed += e.age as f64 - label.midpoint() as f64;
                c.right += usize::from((e.female >= 0.5) == sample.female);
            }
        }
        Some(AgeGroupCheck {
            overall: overall.figures("all".into()),
            by_group: groups
                .iter()
                .zip(&per_group)
                .filter(|(_, c)| c.faces > 0)
                .map(|(g, c)| c.figures(g.to_string()))
                .collect(),
        })
    }
}

/// The age band a label puts a face in: its age's, or for an age group the band that holds
/// the whole group (None for a group across two bands, such as 10-19 across 3-12 and 13-19).
pub fn label_band(sample: &Sample) -> Option<usize> {
    match sample.age_group {
        None => Some(age_band_index(sample.age)),
        Some(g) => {
            let band = age_band_index(g.from);
            (band == age_band_index(g.to - 0.01)).then_some(band)
        }
    }
}

/// A named group's figures (an age band, a gender, a race group).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The counts per age band a counts log would hold for these faces, against the truth.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BandCountCheck {
    /// Faces truly in each band.
    pub truth: [usize; 6],
    /// Counted by the board's rule (each face's probability mass per band when the model gives
    /// it; see `counts::BandCounts`).
    pub counted: BandCounts,
    /// Sum over bands of |counted - truth|, in faces, and as a share of the faces (percent).
    pub off: f64,
    pub off_share: f64,
    /// Counted whole, in the band of the single age reading (the rule before band shares).
    pub by_reading: [usize; 6],
    pub by_reading_off: f64,
    /// Whether the model gives band shares (else `counted` is `by_reading`).
    pub model_gives_shares: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// Labelled images looked at.
    pub images: usize,
    /// Of which no face was found in.
    pub no_face: usize,
    /// Of which could not be read (missing, undecodable), each with its reason.
    pub unreadable: Vec<Rejected>,
    pub overall: Figures,
    pub by_band: Vec<Group>,
    pub by_gender: Vec<Group>,
    pub by_race: Vec<Group>,
    /// For data labelled with age groups: group exact, within one group, bias per group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_groups: Option<AgeGroupCheck>,
    /// Faces read whose label spans two age bands (an age group such as 10-19): left out of
    /// the per-band figures and the band counts.
    pub across_bands: usize,
    pub counts: BandCountCheck,
    /// Whether the band shares mean what they say, and the coverage of the count intervals
    /// (absent when no face was read).
    pub calibration: Option<Calibration>,
}

impl EvalReport {
    /// Figures of `outcomes` (in the order of `samples`).
    pub fn new(samples: &[Sample], outcomes: &[Outcome]) -> EvalReport {
        let mut overall = Tally::default();
        let mut bands = vec![Tally::default(); AGE_BANDS.len()];
        let mut genders = vec![Tally::default(); 2];
        let mut races = vec![Tally::default(); RACE_NAMES.len()];
        let (mut truth, mut counted, mut by_reading) = ([0usize; 6], [0f64; 6], [0usize; 6]);
        let (mut no_face, mut unreadable, mut shares_given, mut across_bands) = (0, Vec::new(), false, 0);
        let mut shares = Vec::new();
        for (sample, outcome) in samples.iter().zip(outcomes) {
            let e = match outcome {
                Outcome::Read(e) => e,
                Outcome::NoFace => {
                    no_face += 1;
                    continue;
                }
                Outcome::Unreadable(reason) => {
                    unreadable.push(Rejected { path: sample.path.clone(), reason: reason.clone() });
                    continue;
                }
            };
            overall.add(sample, e);
            genders[usize::from(sample.female)].add(sample, e);
            if let Some(race) = sample.race {
                races[race as usize].add(sample, e);
            }
            let Some(band) = label_band(sample) else {
                across_bands += 1;
                continue;
            };
            bands[band].add(sample, e);
            truth[band] += 1;
            by_reading[age_band_index(e.age)] += 1;
            shares_given |= e.age_bands.is_some();
            add_shares(&mut counted, None, &e.band_shares());
            shares.push((e.band_shares(), band));
        }
        let off = |read: &[f64; 6]| read.iter().zip(&truth).map(|(r, t)| (r - *t as f64).abs()).sum::<f64>();
        let by_reading_f = by_reading.map(|v| v as f64);
        let counted_off = off(&counted);
        let named = |names: &[&str], tallies: &[Tally]| -> Vec<Group> {
            names
                .iter()
                .zip(tallies)
                .filter(|(_, t)| t.faces > 0)
                .map(|(name, t)| Group { name: name.to_string(), figures: t.figures() })
                .collect()
        };
        let band_names: Vec<&str> = AGE_BANDS.iter().map(|(name, _, _)| *name).collect();
        EvalReport {
            images: samples.len(),
            no_face,
            unreadable,
            overall: overall.figures(),
            by_band: named(&band_names, &bands),
            by_gender: named(&["male", "female"], &genders),
            by_race: named(&RACE_NAMES, &races),
            age_groups: AgeGroupCheck::new(samples, outcomes),
            across_bands,
            counts: BandCountCheck {
                truth,
                counted: crate::counts::round_bands(&counted),
                off: (counted_off * 100.0).round() / 100.0,
                off_share: 100.0 * counted_off / truth.iter().sum::<usize>().max(1) as f64,
                by_reading,
                by_reading_off: off(&by_reading_f),
                model_gives_shares: shares_given,
            },
            calibration: calibration(&shares),
        }
    }

    /// The report as text: headline, tables by band, gender and race, counts per band.
    pub fn table(&self) -> String {
        let o = &self.overall;
        let mut out = format!(
            "{} images: {} faces read, no face found in {} ({:.2}%), {} unreadable\n\
             age MAE {:.2} years (bias {:+.2}), gender accuracy {:.2}%\n",
            self.images,
            o.faces,
            self.no_face,
            100.0 * self.no_face as f64 / self.images.max(1) as f64,
            self.unreadable.len(),
            o.age_mae,
            o.age_bias,
            o.gender_accuracy
        );
        if let Some(g) = &self.age_groups {
            out.push_str(&format!(
                "age group exact {:.2}%, within one group {:.2}% ({} faces labelled with groups; \
                 their age MAE is years outside the group, their bias from its midpoint)\n",
                g.overall.exact, g.overall.within_one, g.overall.faces
            ));
            out.push_str(&format!(
                "\n{:<12}{:>7}{:>9}{:>10}{:>8}{:>9}\n",
                "age group", "faces", "exact", "within 1", "bias", "gender"
            ));
            for f in &g.by_group {
                out.push_str(&format!(
                    "{:<12}{:>7}{:>8.2}%{:>9.2}%{:>+8.2}{:>8.2}%\n",
                    f.name, f.faces, f.exact, f.within_one, f.age_bias, f.gender_accuracy
                ));
            }
        }
        for (title, groups) in
            [("age band", &self.by_band), ("gender", &self.by_gender), ("race group", &self.by_race)]
        {
            if groups.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "\n{title:<12}{:>7}{:>9}{:>8}{:>9}\n",
                "faces", "age MAE", "bias", "gender"
            ));
            for g in groups {
                let f = &g.figures;
                out.push_str(&format!(
                    "{:<12}{:>7}{:>9.2}{:>+8.2}{:>8.2}%\n",
                    g.name, f.faces, f.age_mae, f.age_bias, f.gender_accuracy
                ));
            }
        }
        if let Some(worst) =
            self.by_race.iter().min_by(|a, b| a.figures.gender_accuracy.total_cmp(&b.figures.gender_accuracy))
        {
            out.push_str(&format!(
                "worst race group for gender: {} {:.2}%, {:.2} points under all faces' {:.2}%\n",
                worst.name,
                worst.figures.gender_accuracy,
                o.gender_accuracy - worst.figures.gender_accuracy,
                o.gender_accuracy
            ));
        }
        let c = &self.counts;
        if self.across_bands > 0 {
            out.push_str(&format!(
                "\n{} faces labelled with an age group across two bands are left out of the band rows and counts",
                self.across_bands
            ));
        }
        out.push_str(&format!("\n{:<12}", "counts"));
        for (name, _, _) in AGE_BANDS {
            out.push_str(&format!("{name:>8}"));
        }
        out.push_str(&format!("{:>10}\n{:<12}", "off by", "true"));
        for t in c.truth {
            out.push_str(&format!("{t:>8}"));
        }
        out.push_str(&format!("\n{:<12}", if c.model_gives_shares { "counted" } else { "counted (1)" }));
        for v in c.counted {
            out.push_str(&format!("{v:>8.1}"));
        }
        out.push_str(&format!("{:>10.1}  ({:.1}% of faces)\n", c.off, c.off_share));
        if c.model_gives_shares {
            out.push_str(&format!("{:<12}", "by reading"));
            for v in c.by_reading {
                out.push_str(&format!("{v:>8}"));
            }
            out.push_str(&format!("{:>10.1}\n", c.by_reading_off));
            out.push_str("(counted: each face's age distribution summed per band, as the counts log does)\n");
        } else {
            out.push_str("(1) this model gives no age distribution: each face counts whole in the band of its reading\n");
        }
        if let Some(c) = &self.calibration {
            out.push_str(&c.table());
        }
        out
    }
}

/// Samples of `split` (by the seeded hash every faceage tool uses), or all of them.
pub fn select(samples: Vec<Sample>, split: Option<(crate::labels::Split, u64)>) -> Vec<Sample> {
    match split {
        Some((split, seed)) => {
            samples.into_iter().filter(|s| crate::labels::split_of(&s.path, seed) == split).collect()
        }
        None => samples,
    }
}

/// Each image's label and reading as CSV, one row per sample in order: for a user who wants to
/// look past the averages (which faces are read too young, how sure the model was). `outcome`
/// is `read`, `no_face` or `unreadable`; the reading's columns are empty when nothing was read.
/// Then the face's share in each age band as the counts log adds it (`band_0-2` ... `band_60+`,
/// the file's band temperature applied; empty for a model without an age distribution).
pub fn write_readings(samples: &[Sample], outcomes: &[Outcome], out: impl std::io::Write) -> csv::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    let mut header: Vec<String> =
        ["path", "age", "gender", "race", "outcome", "read_age", "age_std", "p_female"]
            .map(String::from)
            .into();
    header.extend(AGE_BANDS.iter().map(|(name, _, _)| format!("band_{name}")));
    csv.write_record(&header)?;
    for (sample, outcome) in samples.iter().zip(outcomes) {
        let race = sample.race.and_then(|r| RACE_NAMES.get(r as usize)).copied().unwrap_or("");
        let what = match outcome {
            Outcome::Read(_) => "read",
            Outcome::NoFace => "no_face",
            Outcome::Unreadable(_) => "unreadable",
        };
        let mut row = vec![
            sample.path.to_string_lossy().into_owned(),
            sample.age_group.map_or_else(|| sample.age.to_string(), |g| g.to_string()),
            Gender::of(sample.female).letter().to_string(),
            race.to_string(),
            what.to_string(),
        ];
        if let Outcome::Read(e) = outcome {
            row.push(format!("{:.2}", e.age));
            row.push(e.age_std.map(|s| format!("{s:.2}")).unwrap_or_default());
            row.push(format!("{:.4}", e.female));
            // Six decimals: a rare band's small shares still add up right.
            row.extend(e.age_bands.iter().flatten().map(|p| format!("{p:.6}")));
        }
        // Empty cells for what was not read (or a model without band shares).
        row.resize(header.len(), String::new());
        csv.write_record(&row)?;
    }
    csv.flush()?;
    Ok(())
}

/// Paths of `outcomes` with no face, for a user who wants to look at them.
pub fn faceless(samples: &[Sample], outcomes: &[Outcome]) -> Vec<PathBuf> {
    samples
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| **o == Outcome::NoFace)
        .map(|(s, _)| s.path.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(age: f32, female: bool, race: u8) -> Sample {
        Sample::exact(format!("{age}_{}.jpg", u8::from(female)).into(), age, female, Some(race))
    }

    fn read(age: f32, female: f32, bands: Option<[f32; 6]>) -> Outcome {
        Outcome::Read(Estimate { age, female, age_std: None, age_bands: bands })
    }

    #[test]
    fn figures_groups_and_counts_follow_the_readings() {
        let samples = vec![
            sample(30.0, true, 0),
            sample(50.0, false, 1),
            sample(70.0, false, 1),
            sample(5.0, true, 2),
            sample(25.0, false, 0),
        ];
        let outcomes = vec![
            read(32.0, 0.9, Some([0.0, 0.0, 0.0, 1.0, 0.0, 0.0])),
            // Read 38: the reading's band is wrong, its shares half right.
            read(38.0, 0.2, Some([0.0, 0.0, 0.0, 0.5, 0.5, 0.0])),
            read(64.0, 0.7, Some([0.0, 0.0, 0.0, 0.0, 0.25, 0.75])),
            Outcome::NoFace,
            Outcome::Unreadable("x.jpg: not a decodable image".into()),
        ];
        let r = EvalReport::new(&samples, &outcomes);
        assert_eq!((r.images, r.no_face, r.unreadable.len(), r.overall.faces), (5, 1, 1, 3));
        assert!((r.overall.age_mae - (2.0 + 12.0 + 6.0) / 3.0).abs() < 1e-9);
        assert!((r.overall.gender_accuracy - 200.0 / 3.0).abs() < 1e-9, "the 70-year-old man read F");
        let band = |name: &str| r.by_band.iter().find(|g| g.name == name).unwrap().figures.clone();
        assert_eq!(band("40-59").faces, 1);
        assert_eq!(band("40-59").age_mae, 12.0);
        assert!(r.by_band.iter().all(|g| g.name != "3-12"), "no face read in 3-12");
        assert_eq!(r.by_race.iter().find(|g| g.name == "Black").unwrap().figures.faces, 2);
        assert_eq!(r.counts.truth, [0, 0, 0, 1, 1, 1]);
        assert_eq!(r.counts.by_reading, [0, 0, 0, 2, 0, 1]);
        assert_eq!(r.counts.by_reading_off, 2.0);
        assert_eq!(r.counts.counted, [0.0, 0.0, 0.0, 1.5, 0.75, 0.75]);
        assert_eq!(r.counts.off, 1.0);
        assert!(r.counts.model_gives_shares);
        let table = r.table();
        assert!(table.contains("age MAE 6.67 years") && table.contains("no face found in 1"), "{table}");
        // Read 2 years old, 12 young, 6 young: the signed error keeps the direction.
        assert!((r.overall.age_bias - (2.0 - 12.0 - 6.0) / 3.0).abs() < 1e-9);
        assert_eq!(band("40-59").age_bias, -12.0);
        assert!(table.contains("(bias -5.33)"), "{table}");
        let c = r.calibration.as_ref().unwrap();
        assert_eq!(c.faces, 3, "the faces read, each with its true band");
        assert_eq!(c.bands[5].frequency, 1.0 / 3.0);
        assert!(c.coverage.is_none() && table.contains("band shares"), "{table}");
        assert!(EvalReport::new(&samples[3..], &outcomes[3..]).calibration.is_none(), "nothing read");
    }

    #[test]
    fn the_readings_file_has_a_row_per_image_in_order() {
        let samples = vec![sample(30.0, true, 0), sample(50.0, false, 1), sample(5.0, true, 2)];
        let outcomes = vec![
            Outcome::Read(Estimate { age: 32.5, female: 0.9, age_std: Some(4.0), age_bands: None }),
            Outcome::NoFace,
            Outcome::Unreadable("not a decodable image".into()),
            Outcome::Read(Estimate {
                age: 6.0,
                female: 0.2,
                age_std: None,
                age_bands: Some([0.125, 0.75, 0.0625, 0.0625, 0.0, 0.0]),
            }),
        ];
        let samples = [samples, vec![sample(7.0, false, 3)]].concat();
        let mut out = Vec::new();
        write_readings(&samples, &outcomes, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(
            rows[0],
            "path,age,gender,race,outcome,read_age,age_std,p_female,\
             band_0-2,band_3-12,band_13-19,band_20-39,band_40-59,band_60+"
        );
        assert_eq!(rows[1], "30_1.jpg,30,F,White,read,32.50,4.00,0.9000,,,,,,");
        assert_eq!(rows[2], "50_0.jpg,50,M,Black,no_face,,,,,,,,,");
        assert_eq!(rows[3], "5_1.jpg,5,F,Asian,unreadable,,,,,,,,,");
        assert_eq!(
            rows[4],
            "7_0.jpg,7,M,Indian,read,6.00,,0.2000,0.125000,0.750000,0.062500,0.062500,0.000000,0.000000"
        );
        assert_eq!(rows.len(), 5);
    }

    #[test]
    fn age_group_labels_are_read_as_intervals() {
        let grouped = |age: &str, female: bool, race: u8| Sample {
            age_group: AgeGroup::parse(age),
            age: AgeGroup::parse(age).unwrap().midpoint(),
            ..sample(0.0, female, race)
        };
        let samples = vec![
            grouped("20-29", true, 5),
            grouped("20-29", false, 5),
            grouped("30-39", false, 1),
            grouped("10-19", true, 1),
            grouped("70+", false, 0),
            grouped("40-49", false, 0),
            grouped("50-59", true, 0),
        ];
        let outcomes = vec![
            read(27.0, 0.9, None), // exact
            read(33.0, 0.9, None), // one group off, gender wrong
            read(55.0, 0.1, None), // two groups off
            read(12.0, 0.8, None), // exact, across two bands
            read(71.0, 0.2, None), // exact
            read(45.0, 0.2, None),
            read(52.0, 0.9, None),
        ];
        let r = EvalReport::new(&samples, &outcomes);
        let g = r.age_groups.as_ref().unwrap();
        assert_eq!(g.overall.faces, 7);
        assert!((g.overall.exact - 500.0 / 7.0).abs() < 1e-9);
        assert!((g.overall.within_one - 600.0 / 7.0).abs() < 1e-9);
        let twenties = &g.by_group.iter().find(|f| f.name == "20-29").unwrap();
        assert_eq!((twenties.faces, twenties.exact, twenties.within_one), (2, 50.0, 100.0));
        assert_eq!(twenties.age_bias, (27.0 - 24.5 + 33.0 - 24.5) / 2.0);
        assert_eq!(twenties.gender_accuracy, 50.0);
        let names: Vec<&str> = g.by_group.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["10-19", "20-29", "30-39", "40-49", "50-59", "70+"]);
        // Years outside the group: 0, 3 (20-29 ends at 30), 15, then 0 for the rest.
        assert!((r.overall.age_mae - 18.0 / 7.0).abs() < 1e-4, "{}", r.overall.age_mae);
        // 10-19 spans the bands 3-12 and 13-19: out of the band figures and counts only.
        assert_eq!(r.across_bands, 1);
        assert_eq!(r.counts.truth, [0, 0, 0, 3, 2, 1]);
        assert_eq!(r.by_race.iter().find(|g| g.name == "East Asian").unwrap().figures.faces, 2);
        let table = r.table();
        assert!(table.contains("age group exact 71.43%, within one group 85.71%"), "{table}");
        assert!(table.contains("left out of the band rows"), "{table}");
        assert!(
            table.contains("worst race group for gender: East Asian 50.00%, 35.71 points under"),
            "{table}"
        );
        assert_eq!(EvalReport::new(&samples[..0], &[]).age_groups, None);
    }

    #[test]
    fn without_shares_faces_count_whole_in_their_reading_band() {
        let r = EvalReport::new(&[sample(30.0, true, 0)], &[read(45.0, 0.9, None)]);
        assert_eq!(r.counts.counted, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(r.counts.off, 2.0);
        assert!(!r.counts.model_gives_shares);
        assert!(r.table().contains("(1) this model gives no age distribution"));
    }

    #[test]
    fn a_scene_places_the_photo_at_a_quarter_of_the_height_where_its_key_says() {
        let photo = RgbImage::from_pixel(200, 200, Rgb([255, 0, 0]));
        let scene = Scene::default();
        let frame = scene.frame(&photo, 12345);
        assert_eq!(frame.dimensions(), (640, 480));
        let red: Vec<(u32, u32)> =
            frame.enumerate_pixels().filter(|(_, _, p)| p.0 == [255, 0, 0]).map(|(x, y, _)| (x, y)).collect();
        assert_eq!(red.len(), 120 * 120);
        assert_eq!(frame, scene.frame(&photo, 12345), "the same key places it alike");
        assert_ne!(frame, scene.frame(&photo, 99), "another key elsewhere");
    }
}
