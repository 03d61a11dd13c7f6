//! Binary cross-entropy on logits, numerically stable for any logit, as PyTorch's
//! `BCEWithLogitsLoss(pos_weight=w)` with mean reduction:
//! `(1 − z)·x + (1 + (w − 1)·z)·softplus(−x)`, where `softplus(−x) = max(x, 0) − x + log(1 + e^{−|x|})`.
//!
//! Written so that candle's derivative conventions (`relu'(0) = 1`, `|x|'(0) = 1`) give the exact
//! gradient `σ(x) − z` (for `w = 1`) at every point, including `x = 0`.

use candle_core::{Result, Tensor};

/// Mean BCE of `logits` against `targets` (same shape), with positive weight `pos_weight`.
pub fn bce_with_logits_mean(logits: &Tensor, targets: &Tensor, pos_weight: f64) -> Result<Tensor> {
    let log1p_exp_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let softplus_neg = ((logits.relu()? - logits)? + log1p_exp_neg_abs)?;
    let neg_part = (targets.ones_like()? - targets)?.mul(logits)?;
    let loss = if pos_weight == 1.0 {
        (neg_part + softplus_neg)?
    } else {
        let log_weight = ((targets * (pos_weight - 1.0))? + 1.0)?;
        (neg_part + log_weight.mul(&softplus_neg)?)?
    };
    loss.mean_all()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn reference(x: f64, z: f64, w: f64) -> (f64, f64) {
        // Loss and d/dx in f64: (1-z)x + lw·softplus(-x), d/dx = (1-z) - lw·σ(-x).
        let lw = 1.0 + (w - 1.0) * z;
        let sp = (-x).max(0.0) + (-x.abs()).exp().ln_1p();
        let sig_neg = 1.0 / (1.0 + x.exp());
        ((1.0 - z) * x + lw * sp, (1.0 - z) - lw * sig_neg)
    }

    #[test]
    fn matches_the_f64_formula_with_gradients_and_stays_finite_for_huge_logits() {
        let xs = [-200.0f32, -30.0, -1.5, -1e-3, 0.0, 1e-3, 0.7, 25.0, 150.0];
        let zs = [0.0f32, 1.0, 0.3, 0.0, 1.0, 0.5, 0.9, 0.0, 1.0];
        for w in [1.0, 2.5] {
            let x = Var::new(&xs[..], &Device::Cpu).unwrap();
            let z = Tensor::new(&zs[..], &Device::Cpu).unwrap();
            let loss = bce_with_logits_mean(x.as_tensor(), &z, w).unwrap();
            let grad = loss.backward().unwrap().get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            let n = xs.len() as f64;
            let mut want = 0.0;
            for (i, (&xi, &zi)) in xs.iter().zip(&zs).enumerate() {
                let (l, g) = reference(xi as f64, zi as f64, w);
                want += l / n;
                assert!((grad[i] as f64 - g / n).abs() < 1e-7, "w {w} x {xi}: grad {} vs {}", grad[i], g / n);
            }
            let got = loss.to_scalar::<f32>().unwrap() as f64;
            assert!(got.is_finite() && (got - want).abs() < 1e-5 * want.abs(), "w {w}: {got} vs {want}");
        }
    }
}
