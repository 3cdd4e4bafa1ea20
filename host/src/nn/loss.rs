//! Multi-task loss: age and gender, balanced by learned uncertainty rather than hand-set
//! factors (Kendall, Gal and Cipolla, CVPR 2018): `sum_i exp(-s_i) L_i + s_i` with one
//! learned `s_i` per task. At the optimum `s_i = log L_i`, so each task is weighed by the
//! inverse of its own current size and none dominates because of its units.

use anyhow::{Result, ensure};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use faceage_device::labels::AgeGroup;

use super::model::NetOutput;
use super::params::{Params, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AgeLoss {
    /// Label-distribution learning: KL divergence to a Gaussian around the true age, plus L1
    /// on the distribution's mean (needs the distribution head).
    Ldl,
    /// KL + L1 as one age term under one learned weight (DLDL-v2, Gao et al., IJCAI 2018), so
    /// age and gender are weighed one to one; `ldl` gives age two weights against gender's one.
    Dldl,
    /// The KL term alone. The shipped model was trained this way: until the fix of the
    /// softmax's backward pass, `ldl`'s L1 term was reported but sent no gradient to the net.
    LdlKl,
    /// Mean absolute error in years.
    L1,
    /// Huber loss with a 5-year knee.
    SmoothL1,
}

pub struct MultiTaskLoss {
    pub age_loss: AgeLoss,
    /// Width (years) of the target age distribution for [`AgeLoss::Ldl`] and [`AgeLoss::LdlKl`].
    pub sigma: f32,
    /// Softness (years) of an age group's edges ([`interval_mask`]); 0: hard edges.
    pub group_edge: f32,
    /// One learned log-variance per task term.
    log_vars: Vec<Var>,
}

/// Loss of one batch: the weighted total to minimise and the plain task terms for reports.
pub struct LossValue {
    pub total: Tensor,
    /// Unweighted terms, in the order of [`MultiTaskLoss::term_names`].
    pub terms: Vec<Tensor>,
}

impl MultiTaskLoss {
    pub fn new(age_loss: AgeLoss, sigma: f32, params: &mut Params) -> Result<Self> {
        let n = Self::names_for(age_loss).len();
        let log_vars = (0..n)
            .map(|i| params.constant(&format!("loss.log_var{i}"), &[], 0.0, Role::NoDecay))
            .collect::<Result<_>>()?;
        Ok(Self { age_loss, sigma, group_edge: 1.0, log_vars })
    }

    fn names_for(age_loss: AgeLoss) -> &'static [&'static str] {
        match age_loss {
            AgeLoss::Ldl => &["age_kl", "age_l1", "gender_bce"],
            AgeLoss::Dldl => &["age_kl_plus_l1", "gender_bce"],
            AgeLoss::LdlKl => &["age_kl", "gender_bce"],
            AgeLoss::L1 => &["age_l1", "gender_bce"],
            AgeLoss::SmoothL1 => &["age_huber", "gender_bce"],
        }
    }

    pub fn term_names(&self) -> &'static [&'static str] {
        Self::names_for(self.age_loss)
    }

    /// `ages`: `[N]` years; `groups`: each row's age group where its label is one (empty:
    /// every label an exact age); `female`: `[N]` 0/1.
    pub fn compute(
        &self,
        out: &NetOutput,
        ages: &Tensor,
        groups: &[Option<AgeGroup>],
        female: &Tensor,
    ) -> Result<LossValue> {
        self.compute_taught(out, ages, groups, female, None)
    }

    /// [`Self::compute`], with the targets moved part of the way to a teacher's readings
    /// when `teacher` is given (knowledge distillation, Hinton et al. 2015): the age target
    /// becomes `(1 - w) gaussian + w teacher distribution`, the gender target
    /// `(1 - w) label + w teacher p(female)`. Both terms stay divergences (zero when the net
    /// reads exactly its target), so the learned task weights see the same scale as without one.
    ///
    /// A row labelled with an age group is trained on the probability the net puts inside the
    /// group, never on its midpoint: its distribution target is the net's own (or, taught, the
    /// teacher's) distribution cut to the group and renormalised ([`group_targets`]), whose KL
    /// term is `-log P(age in group)` with that loss's gradient; its L1 error is the distance
    /// from the reading to the group (0 inside).
    pub fn compute_taught(
        &self,
        out: &NetOutput,
        ages: &Tensor,
        groups: &[Option<AgeGroup>],
        female: &Tensor,
        teacher: Option<&Teaching>,
    ) -> Result<LossValue> {
        let grouped = groups.iter().any(Option::is_some);
        let age_error = if grouped {
            // Measured from the nearest age inside the group: no pull towards its middle.
            let read = out.age.detach().to_vec1::<f32>()?;
            let labels = ages.to_vec1::<f32>()?;
            let nearest: Vec<f32> = labels
                .iter()
                .zip(&read)
                .enumerate()
                .map(|(i, (&age, &r))| match groups.get(i).copied().flatten() {
                    Some(g) => r.clamp(g.from, g.to),
                    None => age,
                })
                .collect();
            (&out.age - Tensor::from_vec(nearest, labels.len(), ages.device())?)?
        } else {
            (&out.age - ages)?
        };
        let mut terms = Vec::new();
        match self.age_loss {
            AgeLoss::Ldl | AgeLoss::Dldl | AgeLoss::LdlKl => {
                let logits = out
                    .age_logits
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("LDL needs the distribution head"))?;
                let (_, bins) = logits.dims2()?;
                let mut target = gaussian_targets(&ages.to_vec1::<f32>()?, bins, self.sigma, ages.device())?;
                if grouped {
                    // Within the group the shape comes from the teacher where there is one,
                    // else from the net itself (the EM view of an interval label).
                    let shape = match (teacher, &out.age_probs) {
                        (Some(t), _) => t.age_probs.clone(),
                        (None, Some(p)) => p.detach(),
                        (None, None) => candle_nn::ops::softmax(&logits.detach(), 1)?,
                    };
                    target = group_targets(&target, &shape, groups, self.group_edge)?;
                }
                if let Some(t) = teacher {
                    ensure!(
                        t.age_probs.dims() == target.dims(),
                        "teacher distributions {:?} do not match the net's {:?}",
                        t.age_probs.dims(),
                        target.dims()
                    );
                    target = ((target * (1.0 - t.weight))? + (&t.age_probs * t.weight)?)?;
                }
                let log_p = candle_nn::ops::log_softmax(logits, 1)?;
                // KL(q || p) = sum q log q - sum q log p; the first term is a constant.
                let entropy = (&target * target.clamp(1e-12, 1.0)?.log()?)?.sum(1)?;
                let cross = (&target * &log_p)?.sum(1)?;
                let kl = (entropy - cross)?.mean_all()?;
                let l1 = age_error.abs()?.mean_all()?;
                match self.age_loss {
                    AgeLoss::Ldl => terms.extend([kl, l1]),
                    AgeLoss::Dldl => terms.push((kl + l1)?),
                    _ => terms.push(kl),
                }
            }
            AgeLoss::L1 => terms.push(age_error.abs()?.mean_all()?),
            AgeLoss::SmoothL1 => terms.push(huber(&age_error, 5.0)?),
        }
        match teacher {
            Some(t) => {
                let target = ((female * (1.0 - t.weight))? + (&t.female * t.weight)?)?;
                terms.push((bce_with_logits(&out.female_logit, &target)? - binary_entropy(&target)?)?);
            }
            None => terms.push(bce_with_logits(&out.female_logit, female)?),
        }
        let mut total: Option<Tensor> = None;
        for (term, s) in terms.iter().zip(&self.log_vars) {
            let weighted = ((term * s.as_tensor().neg()?.exp()?)? + s.as_tensor())?;
            total = Some(match total {
                Some(t) => (t + weighted)?,
                None => weighted,
            });
        }
        Ok(LossValue { total: total.expect("at least one term"), terms })
    }
}

/// What a teacher hands on for one batch ([`MultiTaskLoss::compute_taught`]).
pub struct Teaching {
    /// `[N, bins]` the teacher's age distributions.
    pub age_probs: Tensor,
    /// `[N]` the teacher's p(female).
    pub female: Tensor,
    /// Share of the target that is the teacher's, 0 to 1.
    pub weight: f64,
}

/// Mean entropy of Bernoulli targets `t` (0 for hard 0/1 labels): the floor of the BCE.
fn binary_entropy(t: &Tensor) -> Result<Tensor> {
    let h = |p: &Tensor| -> Result<Tensor> { Ok((p * p.clamp(1e-12, 1.0)?.log()?)?) };
    Ok((h(t)? + h(&t.affine(-1.0, 1.0)?)?)?.neg()?.mean_all()?)
}

/// Numerically stable binary cross-entropy on logits, averaged.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    // max(x, 0) - x t + log(1 + exp(-|x|))
    let loss = ((logits.relu()? - (logits * targets)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(loss.mean_all()?)
}

fn huber(error: &Tensor, delta: f64) -> Result<Tensor> {
    let abs = error.abs()?;
    let quadratic = abs.clamp(0.0, delta)?;
    let linear = (&abs - &quadratic)?;
    Ok(((quadratic.sqr()? * 0.5)? + (linear * delta)?)?.mean_all()?)
}

/// The edge weights of an age group over whole-year bins: 1 inside `[from, to)`, 0 outside,
/// each edge a logistic ramp of scale `edge` years (hard at 0). Bin `b` stands for age `b`, the
/// last bin for every age past it.
pub fn interval_mask(group: AgeGroup, bins: usize, edge: f32) -> Vec<f32> {
    let last = (bins - 1) as f32;
    let (from, to) = (group.from.min(last), group.to.min(last + 1.0));
    let step = |x: f32| {
        if edge <= 0.0 { if x > 0.0 { 1.0 } else { 0.0 } } else { 1.0 / (1.0 + (-x / edge).exp()) }
    };
    (0..bins).map(|b| (step(b as f32 + 0.5 - from) - step(b as f32 + 0.5 - to)).max(0.0)).collect()
}

/// `targets` with every grouped row replaced by `shape`'s row cut to the group's
/// [`interval_mask`] and renormalised (a whisker of the mask itself keeps it defined where
/// `shape` puts nothing inside). Its KL to the net's `p` is `-log sum(mask p)` when `shape` is
/// `p`: the interval likelihood.
pub fn group_targets(
    targets: &Tensor,
    shape: &Tensor,
    groups: &[Option<AgeGroup>],
    edge: f32,
) -> Result<Tensor> {
    let (n, bins) = targets.dims2()?;
    ensure!(
        shape.dims() == targets.dims(),
        "age distributions {:?} for targets {:?}",
        shape.dims(),
        targets.dims()
    );
    let mut rows = targets.to_vec2::<f32>()?;
    let shape = shape.to_vec2::<f32>()?;
    for (i, group) in groups.iter().enumerate().take(n) {
        let Some(group) = group else { continue };
        let mask = interval_mask(*group, bins, edge);
        let mask_sum: f32 = mask.iter().sum::<f32>().max(1e-12);
        let cut: Vec<f32> = mask.iter().zip(&shape[i]).map(|(m, p)| m * (p + 1e-6 / mask_sum)).collect();
        let sum: f32 = cut.iter().sum::<f32>().max(1e-30);
        rows[i] = cut.into_iter().map(|v| v / sum).collect();
    }
    Ok(Tensor::from_vec(rows.concat(), (n, bins), targets.device())?)
}

/// `[N, bins]` Gaussian distributions over whole years centred on each age.
pub fn gaussian_targets(ages: &[f32], bins: usize, sigma: f32, device: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(ages.len() * bins);
    for &age in ages {
        let age = age.clamp(0.0, (bins - 1) as f32);
        let row: Vec<f32> =
            (0..bins).map(|b| (-((b as f32 - age).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
        let sum: f32 = row.iter().sum();
        data.extend(row.into_iter().map(|v| v / sum));
    }
    Ok(Tensor::from_vec(data, (ages.len(), bins), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_targets_are_distributions_centred_on_the_age() {
        let t = gaussian_targets(&[30.0, 0.0, 150.0], 101, 2.0, &Device::Cpu).unwrap();
        let rows = t.to_vec2::<f32>().unwrap();
        for row in &rows {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        let argmax = |r: &Vec<f32>| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax(&rows[0]), 30);
        assert_eq!(argmax(&rows[1]), 0);
        assert_eq!(argmax(&rows[2]), 100, "ages beyond the last bin go to the last bin");
    }

    #[test]
    fn ldl_kl_drops_the_l1_term_and_dldl_joins_it_to_the_kl() {
        let (_, net, x) = crate::nn::test_support::net_and_batch(crate::nn::model::NetConfig::tiny(16), 5);
        let out = net.forward(&x, false).unwrap();
        let ages = Tensor::new(&[3f32, 30.0, 60.0, 90.0], &Device::Cpu).unwrap();
        let female = Tensor::new(&[0f32, 1.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let value = |age_loss| {
            let loss = MultiTaskLoss::new(age_loss, 2.0, &mut Params::new(0, &Device::Cpu)).unwrap();
            let v = loss.compute(&out, &ages, &[], &female).unwrap();
            assert_eq!(v.terms.len(), loss.term_names().len());
            v.terms.iter().map(|t| t.to_scalar::<f32>().unwrap()).collect::<Vec<_>>()
        };
        let (full, kl) = (value(AgeLoss::Ldl), value(AgeLoss::LdlKl));
        assert_eq!(kl, vec![full[0], full[2]], "the same KL and BCE, no L1");
        let joint = value(AgeLoss::Dldl);
        assert_eq!(joint.len(), 2, "one age term, one gender term, so two learned weights");
        assert!((joint[0] - (full[0] + full[1])).abs() < 1e-5, "{} vs {} + {}", joint[0], full[0], full[1]);
        assert_eq!(joint[1], full[2]);
    }

    #[test]
    fn a_teacher_moves_the_targets_by_its_weight() {
        let (_, net, x) = crate::nn::test_support::net_and_batch(crate::nn::model::NetConfig::tiny(16), 5);
        let out = net.forward(&x, false).unwrap();
        let ages = Tensor::new(&[3f32, 30.0, 60.0, 90.0], &Device::Cpu).unwrap();
        let female = Tensor::new(&[0f32, 1.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let loss = MultiTaskLoss::new(AgeLoss::LdlKl, 2.0, &mut Params::new(0, &Device::Cpu)).unwrap();
        let terms = |teacher: Option<&Teaching>| -> Vec<f32> {
            let v = loss.compute_taught(&out, &ages, &[], &female, teacher).unwrap();
            v.terms.iter().map(|t| t.to_scalar::<f32>().unwrap()).collect()
        };
        // A teacher that reads exactly what the net reads.
        let own = |weight| Teaching {
            age_probs: out.age_probs.clone().unwrap(),
            female: candle_nn::ops::sigmoid(&out.female_logit).unwrap(),
            weight,
        };
        let plain = terms(None);
        let unweighted = terms(Some(&own(0.0)));
        for (a, b) in plain.iter().zip(&unweighted) {
            assert!((a - b).abs() < 1e-5, "weight 0 is no teacher: {plain:?} vs {unweighted:?}");
        }
        let copied = terms(Some(&own(1.0)));
        assert!(
            copied.iter().all(|t| t.abs() < 1e-4),
            "both terms vanish on the teacher's own readings: {copied:?}"
        );
        let halfway = terms(Some(&own(0.5)));
        for i in 0..2 {
            assert!(
                halfway[i] > copied[i] + 1e-3 && halfway[i] < plain[i],
                "term {i}: {halfway:?} between {copied:?} and {plain:?}"
            );
        }
    }

    #[test]
    fn a_group_label_trains_the_probability_inside_the_group() {
        let (_, net, x) = crate::nn::test_support::net_and_batch(crate::nn::model::NetConfig::tiny(16), 5);
        let out = net.forward(&x, false).unwrap();
        let p = out.age_probs.clone().unwrap().to_vec2::<f32>().unwrap();
        let ages = Tensor::new(&[3f32, 24.5, 60.0, 90.0], &Device::Cpu).unwrap();
        let female = Tensor::new(&[0f32, 1.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let mut loss = MultiTaskLoss::new(AgeLoss::LdlKl, 2.0, &mut Params::new(0, &Device::Cpu)).unwrap();
        loss.group_edge = 0.0;
        let twenties = AgeGroup { from: 20.0, to: 30.0 };
        let kl_of = |loss: &MultiTaskLoss, groups: &[Option<AgeGroup>]| -> f32 {
            loss.compute(&out, &ages, groups, &female).unwrap().terms[0].to_scalar::<f32>().unwrap()
        };
        let exact = kl_of(&loss, &[]);
        let grouped = kl_of(&loss, &[None, Some(twenties), None, None]);
        // Hand-computed: row 1's term becomes -log of its mass in bins 20..=29; the batch mean
        // changes by that less its Gaussian KL, over 4 rows.
        let inside: f32 = p[1][20..30].iter().sum();
        let gaussian =
            gaussian_targets(&[24.5], p[1].len(), 2.0, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let kl_row: f32 =
            gaussian[0].iter().zip(&p[1]).filter(|(q, _)| **q > 0.0).map(|(q, pp)| q * (q / pp).ln()).sum();
        let expected = exact + (-inside.ln() - kl_row) / 4.0;
        assert!((grouped - expected).abs() < 1e-4, "{grouped} vs hand-computed {expected}");

        // A soft edge lets a little mass past the edges count.
        loss.group_edge = 1.0;
        assert!(kl_of(&loss, &[None, Some(twenties), None, None]) < grouped);

        // The L1 reading error of a grouped row is its distance to the group: 0 inside.
        let l1 = MultiTaskLoss::new(AgeLoss::L1, 2.0, &mut Params::new(0, &Device::Cpu)).unwrap();
        let read = out.age.to_vec1::<f32>().unwrap();
        let wide = AgeGroup { from: 0.0, to: 121.0 };
        let all_inside = l1.compute(&out, &ages, &[Some(wide); 4], &female).unwrap();
        assert!(all_inside.terms[0].to_scalar::<f32>().unwrap().abs() < 1e-6, "{read:?}");
    }

    #[test]
    fn interval_masks_are_hard_or_soft_at_the_edges() {
        let hard = interval_mask(AgeGroup { from: 20.0, to: 30.0 }, 101, 0.0);
        assert_eq!(hard.iter().sum::<f32>(), 10.0);
        assert_eq!((hard[19], hard[20], hard[29], hard[30]), (0.0, 1.0, 1.0, 0.0));
        let soft = interval_mask(AgeGroup { from: 20.0, to: 30.0 }, 101, 1.0);
        assert!(soft[19] > 0.1 && soft[19] < 0.5 && soft[25] > 0.98 && soft[35] < 0.01, "{soft:?}");
        let open = interval_mask(AgeGroup { from: 70.0, to: 121.0 }, 101, 0.0);
        assert_eq!(open[100], 1.0, "an open group reaches the last bin");
        assert_eq!(open.iter().sum::<f32>(), 31.0);
    }

    #[test]
    fn bce_matches_the_formula_and_survives_huge_logits() {
        let logits = Tensor::new(&[0.0f32, 2.0, -1000.0, 1000.0], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1.0f32, 0.0, 0.0, 1.0], &Device::Cpu).unwrap();
        let got = bce_with_logits(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        let expected = ((2f32).ln() + (1.0 + 2f32.exp()).ln() + 0.0 + 0.0) / 4.0;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }
}
