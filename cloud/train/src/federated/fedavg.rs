//! McMahan et al.'s FedAvg (2017, Algorithm 1): the next global state is the mean of the states
//! the round's clients returned, each weighted by its client's sample count `nₖ / Σ nₖ`. BatchNorm
//! running statistics are averaged the same way; the previous global state only gives the
//! non-float tensors (kept) and the names every update must hold.

use super::{ClientUpdate, State, Strategy, check_update, weighted_mean};
use crate::fit::FitError;

/// Sample-weighted FedAvg; stateless between rounds.
#[derive(Debug, Clone, Copy, Default)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn aggregate(&mut self, global: &State, updates: &[ClientUpdate]) -> Result<State, FitError> {
        if updates.is_empty() {
            return Err(FitError::Config("a FedAvg round needs at least one client update".into()));
        }
        for u in updates {
            check_update(global, u)?;
        }
        let parts: Vec<(&State, f64)> = updates.iter().map(|u| (&u.state, u.samples as f64)).collect();
        weighted_mean(global, &parts)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, state, update, values};
    use super::*;

    #[test]
    fn fedavg_is_the_sample_weighted_mean_computed_by_hand() {
        let global = state([1.0, 2.0], [0.0, 0.0], [1.0, 1.0], 5);
        let a = update("a", 1, state([3.0, 6.0], [1.0, 1.0], [2.0, 4.0], 7));
        let b = update("b", 3, state([7.0, 10.0], [2.0, 4.0], [6.0, 8.0], 9));
        let next = FedAvg.aggregate(&global, &[a.clone(), b.clone()]).unwrap();
        // (1·[3, 6] + 3·[7, 10]) / 4 = [24, 36] / 4
        assert_close(&next, "model.0.conv.weight", &[6.0, 9.0]);
        // Running statistics by the same weights: (1·[1, 1] + 3·[2, 4]) / 4 and (1·[2, 4] + 3·[6, 8]) / 4.
        assert_close(&next, "model.0.bn.running_mean", &[1.75, 3.25]);
        assert_close(&next, "model.0.bn.running_var", &[5.0, 7.0]);
        // The integer counter is the global model's, not averaged.
        assert_eq!(next["model.0.bn.num_batches_tracked"].to_vec1::<i64>().unwrap(), [5]);
        // Order does not matter, dtypes are kept, and the previous global weights play no part.
        let swapped = FedAvg.aggregate(&state([100.0; 2], [9.0; 2], [9.0; 2], 5), &[b, a]).unwrap();
        assert_eq!(values(&swapped, "model.0.conv.weight"), values(&next, "model.0.conv.weight"));
        assert_eq!(next["model.0.conv.weight"].dtype(), candle_core::DType::F32);
        // One client: its state.
        let only = FedAvg.aggregate(&global, &[update("c", 2, state([4.0, 4.0], [0.5; 2], [3.0; 2], 1))]).unwrap();
        assert_close(&only, "model.0.conv.weight", &[4.0, 4.0]);
    }
}
