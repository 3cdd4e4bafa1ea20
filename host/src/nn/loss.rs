//! Multi-task loss: age and gender, balanced by learned uncertainty rather than hand-set
//! factors (Kendall, Gal and Cipolla, CVPR 2018): `sum_i exp(-s_i) L_i + s_i` with one
//! learned `s_i` per task. At the optimum `s_i = log L_i`, so each task is weighed by the
//! inverse of its own current size and none dominates because of its units.

use anyhow::{Result, ensure};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

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
        Ok(Self { age_loss, sigma, log_vars })
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

    /// `ages`: `[N]` years; `female`: `[N]` 0/1.
    pub fn compute(&self, out: &NetOutput, ages: &Tensor, female: &Tensor) -> Result<LossValue> {
        self.compute_taught(out, ages, female, None)
    }

    /// [`Self::compute`], with the targets moved part of the way to a teacher's readings
    /// when `teacher` is given (knowledge distillation, Hinton et al. 2015): the age target
    /// becomes `(1 - w) gaussian + w teacher distribution`, the gender target
    /// `(1 - w) label + w teacher p(female)`. Both terms stay divergences (zero when the net
    /// reads exactly its target), so the learned task weights see the same scale as without one.
    pub fn compute_taught(
        &self,
        out: &NetOutput,
        ages: &Tensor,
        female: &Tensor,
        teacher: Option<&Teaching>,
    ) -> Result<LossValue> {
        let age_error = (&out.age - ages)?;
        let mut terms = Vec::new();
        match self.age_loss {
            AgeLoss::Ldl | AgeLoss::Dldl | AgeLoss::LdlKl => {
                let logits = out
                    .age_logits
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("LDL needs the distribution head"))?;
                let (_, bins) = logits.dims2()?;
                let mut target = gaussian_targets(&ages.to_vec1::<f32>()?, bins, self.sigma, ages.device())?;
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
            let v = loss.compute(&out, &ages, &female).unwrap();
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
            let v = loss.compute_taught(&out, &ages, &female, teacher).unwrap();
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
    fn bce_matches_the_formula_and_survives_huge_logits() {
        let logits = Tensor::new(&[0.0f32, 2.0, -1000.0, 1000.0], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1.0f32, 0.0, 0.0, 1.0], &Device::Cpu).unwrap();
        let got = bce_with_logits(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        let expected = ((2f32).ln() + (1.0 + 2f32.exp()).ln() + 0.0 + 0.0) / 4.0;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }
}
