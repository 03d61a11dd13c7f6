//! BatchNorm2d as YOLOv5 configures it: eps 1e-3, momentum 0.03.
//!
//! Train mode normalises with the batch statistics (biased variance) and updates the running
//! statistics with the unbiased variance, as PyTorch does; eval mode uses the running statistics.

use candle_core::{D, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

#[cfg(feature = "train")]
use super::bn_silu;
#[cfg(feature = "train")]
use super::kernels::on_cpu_f32;

/// BatchNorm hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormConfig {
    pub eps: f64,
    pub momentum: f64,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self { eps: 1e-3, momentum: 0.03 }
    }
}

/// `model.{i}...bn`: affine weight/bias and running statistics.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    /// Shared with the parameter store when the model was built from a `VarMap`, so that
    /// train-mode updates reach checkpoints.
    pub running_mean: Var,
    pub running_var: Var,
    pub config: BatchNormConfig,
}

impl BatchNorm2d {
    pub fn load(vb: VarBuilder, channels: usize, config: BatchNormConfig) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean = Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var = Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        Ok(Self { weight, bias, running_mean, running_var, config })
    }

    /// Per-channel `(scale, shift)` such that eval-mode BN is `x * scale + shift`.
    pub fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.as_tensor() + self.config.eps)?.sqrt()?.recip()?;
        let scale = (&self.weight * inv_std)?;
        let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        let as_col = |t: &Tensor| t.reshape((1, c, 1, 1));
        if !train {
            let (scale, shift) = self.eval_scale_shift()?;
            return x.broadcast_mul(&as_col(&scale)?)?.broadcast_add(&as_col(&shift)?);
        }
        let count = self.train_count(x)?;
        // Statistics per channel over (N, H, W).
        let flat = x.transpose(0, 1)?.reshape((c, count))?;
        let mean = flat.mean(D::Minus1)?;
        let centered = flat.broadcast_sub(&mean.unsqueeze(1)?)?;
        let var = centered.sqr()?.mean(D::Minus1)?;
        let inv_std = (&var + self.config.eps)?.sqrt()?.recip()?;
        let scale = (&self.weight * &inv_std)?;
        let shift = (&self.bias - (&mean * &scale)?)?;
        let y = x.broadcast_mul(&as_col(&scale)?)?.broadcast_add(&as_col(&shift)?)?;
        self.update_running(&mean.detach(), &var.detach(), count)?;
        Ok(y)
    }

    /// `silu(forward_t(x))`; in train mode on CPU f32 one fused operation (`bn_silu`, with the
    /// `train` feature).
    pub fn forward_silu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        #[cfg(feature = "train")]
        if train && on_cpu_f32(x) {
            return self.fused_train_silu(x);
        }
        self.forward_t(x, train)?.silu()
    }

    #[cfg(feature = "train")]
    fn fused_train_silu(&self, x: &Tensor) -> Result<Tensor> {
        let count = self.train_count(x)?;
        let (y, stats) = bn_silu::forward(x, &self.weight, &self.bias, self.config.eps)?;
        let c = stats.mean.len();
        let mean = Tensor::from_vec(stats.mean, c, x.device())?;
        let var = Tensor::from_vec(stats.var, c, x.device())?;
        self.update_running(&mean, &var, count)?;
        Ok(y)
    }

    /// Values per channel in a train-mode batch, which must be more than one.
    fn train_count(&self, x: &Tensor) -> Result<usize> {
        let (n, _, h, w) = x.dims4()?;
        let count = n * h * w;
        if count < 2 {
            candle_core::bail!("BatchNorm in train mode needs more than one value per channel, got {count}");
        }
        Ok(count)
    }

    /// Moves the running statistics towards the batch's mean and biased variance (stored
    /// unbiased, as PyTorch does).
    fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let m = self.config.momentum;
        let unbiased = (var * (count as f64 / (count as f64 - 1.0)))?;
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)
    }
}
