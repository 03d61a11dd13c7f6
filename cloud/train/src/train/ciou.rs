//! Complete IoU (CIoU) of predicted and target boxes, as YOLOv5's `bbox_iou(..., CIoU=True)`
//! with `xywh=True, eps=1e-7`, differentiable with respect to the predicted boxes.
//!
//! candle has no `atan`; [`atan`] composes it from differentiable operations in f64.

use std::f64::consts::PI;

use candle_core::{DType, Result, Tensor};

const EPS: f64 = 1e-7;

/// Half-angle reductions applied before the series: after three, |y| ≤ tan(π/16) < 0.2.
const REDUCTIONS: usize = 3;
/// Odd Taylor terms of the series (y, y³, ..., y^29): the next term is below 1e-21.
const TERMS: usize = 15;

/// Element-wise arctangent with its gradient `1/(1+x²)`, accurate to f32 rounding.
///
/// `atan(x) = 2·atan(x / (1 + √(1 + x²)))` three times, then the Taylor series of the reduced
/// argument; computed in f64 and returned in the input's dtype. Every step is an ordinary
/// candle operation, so it runs and differentiates on any device.
pub fn atan(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let mut y = x.to_dtype(DType::F64)?;
    for _ in 0..REDUCTIONS {
        let denom = ((y.sqr()? + 1.0)?.sqrt()? + 1.0)?;
        y = y.div(&denom)?;
    }
    // Horner in y²: y·(1 − y²/3 + y⁴/5 − ...).
    let y2 = y.sqr()?;
    let mut acc = y2.ones_like()?.affine(0.0, coefficient(TERMS - 1))?;
    for k in (0..TERMS - 1).rev() {
        acc = (acc.mul(&y2)? + coefficient(k))?;
    }
    (acc.mul(&y)? * (1u32 << REDUCTIONS) as f64)?.to_dtype(dtype)
}

/// Coefficient of y^(2k+1) in the arctangent series.
fn coefficient(k: usize) -> f64 {
    (-1f64).powi(k as i32) / (2 * k + 1) as f64
}

/// CIoU of boxes `pred` and `target`, both `[n, 4]` as (x centre, y centre, w, h); returns `[n]`.
///
/// `iou − (ρ²/c² + v·α)` with `v = 4/π² (atan(w₂/h₂) − atan(w₁/h₁))²` and
/// `α = v / (v − iou + 1 + eps)` treated as a constant, as YOLOv5 computes it under `no_grad`.
pub fn bbox_ciou(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let col = |t: &Tensor, i: usize| t.narrow(1, i, 1)?.squeeze(1);
    let (x1, y1, w1, h1) = (col(pred, 0)?, col(pred, 1)?, col(pred, 2)?, col(pred, 3)?);
    let (x2, y2, w2, h2) = (col(target, 0)?, col(target, 1)?, col(target, 2)?, col(target, 3)?);
    let (w1h, h1h, w2h, h2h) = ((&w1 / 2.0)?, (&h1 / 2.0)?, (&w2 / 2.0)?, (&h2 / 2.0)?);
    let (b1_x1, b1_x2, b1_y1, b1_y2) = ((&x1 - &w1h)?, (&x1 + &w1h)?, (&y1 - &h1h)?, (&y1 + &h1h)?);
    let (b2_x1, b2_x2, b2_y1, b2_y2) = ((&x2 - &w2h)?, (&x2 + &w2h)?, (&y2 - &h2h)?, (&y2 + &h2h)?);

    let inter_w = (b1_x2.minimum(&b2_x2)? - b1_x1.maximum(&b2_x1)?)?.relu()?;
    let inter_h = (b1_y2.minimum(&b2_y2)? - b1_y1.maximum(&b2_y1)?)?.relu()?;
    let inter = (inter_w * inter_h)?;
    let union = ((((&w1 * &h1)? + (&w2 * &h2)?)? - &inter)? + EPS)?;
    let iou = (&inter / union)?;

    let cw = (b1_x2.maximum(&b2_x2)? - b1_x1.minimum(&b2_x1)?)?;
    let ch = (b1_y2.maximum(&b2_y2)? - b1_y1.minimum(&b2_y1)?)?;
    let c2 = ((cw.sqr()? + ch.sqr()?)? + EPS)?;
    let dx = (((&b2_x1 + &b2_x2)? - &b1_x1)? - &b1_x2)?;
    let dy = (((&b2_y1 + &b2_y2)? - &b1_y1)? - &b1_y2)?;
    let rho2 = ((dx.sqr()? + dy.sqr()?)? / 4.0)?;
    let dangle = (atan(&(&w2 / &h2)?)? - atan(&(&w1 / &h1)?)?)?;
    let v = (dangle.sqr()? * (4.0 / (PI * PI)))?;
    let alpha = (&v / ((&v - &iou)? + (1.0 + EPS))?)?.detach();
    &iou - ((rho2 / c2)? + (v * alpha)?)?
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn atan_and_its_gradient_match_f64_to_f32_rounding() {
        let xs: Vec<f32> = [-1e6f32, -40.0, -3.0, -1.0, -0.41, -1e-4, 0.0, 1e-6, 0.2, 0.5, 0.999, 1.0, 1.7, 7.5, 123.0, 5e4]
            .into_iter()
            .chain((0..200).map(|i| (i as f32 - 100.0) * 0.037))
            .collect();
        let x = Var::new(xs.as_slice(), &Device::Cpu).unwrap();
        let y = atan(x.as_tensor()).unwrap();
        let grad = y.sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for ((&xi, yi), gi) in xs.iter().zip(y.to_vec1::<f32>().unwrap()).zip(grad) {
            let want = (xi as f64).atan();
            assert!((yi as f64 - want).abs() <= 1e-7 * want.abs().max(1.0), "atan({xi}) = {yi}, want {want}");
            let want_g = 1.0 / (1.0 + (xi as f64).powi(2));
            assert!((gi as f64 - want_g).abs() <= 1e-7 * want_g.max(1e-30) + 1e-30, "atan'({xi}) = {gi}, want {want_g}");
        }
    }

    #[test]
    fn ciou_of_identical_boxes_is_one_and_of_disjoint_boxes_is_negative() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0.5f32, 0.5, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]], &dev).unwrap();
        let b = Tensor::new(&[[0.5f32, 0.5, 2.0, 1.0], [5.0, 5.0, 1.0, 3.0]], &dev).unwrap();
        let c = bbox_ciou(&a, &b).unwrap().to_vec1::<f32>().unwrap();
        assert!((c[0] - 1.0).abs() < 1e-6, "{c:?}");
        // Disjoint: IoU 0, enclosing box 6 × 7, centres 5 apart in x and y: CIoU = −(ρ²/c² + v·α).
        let rho2_c2 = 50.0 / (36.0 + 49.0 + EPS);
        let v = 4.0 / (PI * PI) * ((1.0f64 / 3.0).atan() - 1.0f64.atan()).powi(2);
        let want = -(rho2_c2 + v * v / (v + 1.0 + EPS));
        assert!((c[1] as f64 - want).abs() < 1e-6, "{} vs {want}", c[1]);
    }
}
