//! Evaluation: age MAE and gender accuracy, overall and per age band, gender and race group.

use serde::{Deserialize, Serialize};

use crate::data::{AGE_BANDS, RACE_NAMES, Sample, age_band};

/// What a model said about one face.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub age: f32,
    /// Probability of female.
    pub female: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupMetrics {
    pub group: String,
    pub count: usize,
    pub age_mae: f64,
    /// Percent.
    pub gender_accuracy: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub overall: GroupMetrics,
    pub by_age_band: Vec<GroupMetrics>,
    pub by_gender: Vec<GroupMetrics>,
    pub by_race: Vec<GroupMetrics>,
    /// Faces *read* into each age band, in the order of `by_age_band` (whose counts are the
    /// faces truly there): the board logs counts per band, so these say how true its log is.
    #[serde(default)]
    pub read_per_band: Vec<usize>,
    /// Percent of faces read into their own age band.
    #[serde(default)]
    pub band_accuracy: f64,
}

fn group(name: &str, pairs: &[(&Sample, &Prediction)]) -> GroupMetrics {
    let count = pairs.len();
    let n = count.max(1) as f64;
    // An age-group label's error is the reading's distance to the group (0 inside it).
    let mae = pairs.iter().map(|(s, p)| s.age_error(p.age) as f64).sum::<f64>() / n;
    let correct = pairs.iter().filter(|(s, p)| (p.female >= 0.5) == s.female).count();
    GroupMetrics { group: name.to_string(), count, age_mae: mae, gender_accuracy: 100.0 * correct as f64 / n }
}

pub fn evaluate(samples: &[Sample], predictions: &[Prediction]) -> Evaluation {
    assert_eq!(samples.len(), predictions.len(), "one prediction per sample");
    let pairs: Vec<(&Sample, &Prediction)> = samples.iter().zip(predictions).collect();
    let select = |name: &str, keep: &dyn Fn(&Sample) -> bool| {
        let subset: Vec<_> = pairs.iter().copied().filter(|(s, _)| keep(s)).collect();
        group(name, &subset)
    };
    Evaluation {
        overall: group("all", &pairs),
        by_age_band: AGE_BANDS
            .iter()
            .map(|(name, _, _)| select(name, &|s| age_band(s.age) == *name))
            .collect(),
        by_gender: vec![select("male", &|s| !s.female), select("female", &|s| s.female)],
        by_race: RACE_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| select(name, &|s| s.race == Some(i as u8)))
            .filter(|g| g.count > 0)
            .collect(),
        read_per_band: AGE_BANDS
            .iter()
            .map(|(name, _, _)| predictions.iter().filter(|p| age_band(p.age) == *name).count())
            .collect(),
        band_accuracy: 100.0
            * pairs.iter().filter(|(s, p)| age_band(s.age) == age_band(p.age)).count() as f64
            / pairs.len().max(1) as f64,
    }
}

impl Evaluation {
    /// Markdown tables, for model cards and terminals alike.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let o = &self.overall;
        out.push_str(&format!(
            "**{} faces: age MAE {:.2} years, gender accuracy {:.2}%**\n",
            o.count, o.age_mae, o.gender_accuracy
        ));
        if self.read_per_band.len() == self.by_age_band.len() {
            let per_band: Vec<String> = self
                .by_age_band
                .iter()
                .zip(&self.read_per_band)
                .map(|(g, read)| format!("{} {read}/{}", g.group, g.count))
                .collect();
            out.push_str(&format!(
                "\nAge band right for {:.2}% of faces; faces read into each band / truly in it: {} (off by {} in all)\n",
                self.band_accuracy,
                per_band.join(", "),
                self.band_count_error()
            ));
        }
        for (title, rows) in
            [("age band", &self.by_age_band), ("gender", &self.by_gender), ("race group", &self.by_race)]
        {
            out.push_str(&format!("\n| {title} | faces | age MAE | gender acc. |\n|---|---:|---:|---:|\n"));
            for g in rows.iter() {
                out.push_str(&format!(
                    "| {} | {} | {:.2} | {:.2}% |\n",
                    g.group, g.count, g.age_mae, g.gender_accuracy
                ));
            }
        }
        out
    }

    /// Sum over the age bands of |faces read into the band - faces truly in it|.
    pub fn band_count_error(&self) -> usize {
        self.by_age_band.iter().zip(&self.read_per_band).map(|(g, &read)| read.abs_diff(g.count)).sum()
    }

    /// The group furthest below the overall gender accuracy (age bands and race groups).
    pub fn worst_gender_group(&self) -> Option<&GroupMetrics> {
        self.by_age_band
            .iter()
            .chain(&self.by_race)
            .filter(|g| g.count > 0)
            .min_by(|a, b| a.gender_accuracy.total_cmp(&b.gender_accuracy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(age: f32, female: bool, race: u8) -> Sample {
        Sample::exact("x".into(), age, female, Some(race))
    }

    #[test]
    fn metrics_by_group() {
        let samples = vec![sample(1.0, true, 0), sample(30.0, false, 1), sample(70.0, true, 1)];
        let preds = vec![
            Prediction { age: 3.0, female: 0.9 },
            Prediction { age: 30.0, female: 0.8 }, // wrong gender
            Prediction { age: 60.0, female: 0.6 },
        ];
        let e = evaluate(&samples, &preds);
        assert_eq!(e.overall.count, 3);
        assert!((e.overall.age_mae - 4.0).abs() < 1e-9);
        assert!((e.overall.gender_accuracy - 200.0 / 3.0).abs() < 1e-9);
        let band = |n: &str| e.by_age_band.iter().find(|g| g.group == n).unwrap();
        assert_eq!(band("0-2").count, 1);
        assert_eq!(band("3-12").count, 0);
        assert!((band("60+").age_mae - 10.0).abs() < 1e-9);
        let black = e.by_race.iter().find(|g| g.group == "Black").unwrap();
        assert_eq!((black.count, black.gender_accuracy), (2, 50.0));
        assert_eq!(e.worst_gender_group().unwrap().gender_accuracy, 0.0);
        assert!(e.markdown().contains("| Black | 2 |"));
        // The 1-year-old is read as 3 (band 3-12); the others stay in their bands.
        assert_eq!(e.read_per_band, vec![0, 1, 0, 1, 0, 1]);
        assert!((e.band_accuracy - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(e.band_count_error(), 2);
        assert!(e.markdown().contains("0-2 0/1, 3-12 1/0"), "{}", e.markdown());
    }
}
