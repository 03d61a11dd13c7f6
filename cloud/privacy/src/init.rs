//! Seeded initialisation of the attack's decoder (a `VarMap` of its own; the Front's store is
//! seeded by `ParamStore::fresh`). candle's CPU random generator cannot be seeded, so the
//! decoder's tensors are drawn here from ChaCha8, making a run reproducible for its `--seed`.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Overwrites `var` in place with U(±1/√fan_in) (PyTorch's default for convolutions), where
/// fan_in is the product of all dimensions but the first.
pub fn uniform_fan_in(var: &Var, rng: &mut ChaCha8Rng) -> candle_core::Result<()> {
    let dims = var.dims().to_vec();
    let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
    let bound = 1.0 / (fan_in as f32).sqrt();
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?.to_device(var.device())?)
}

/// A generator for one named stream of a run: the same `(seed, stream)` always draws the same numbers.
pub fn stream(seed: u64, stream: &str) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)));
    rng
}
