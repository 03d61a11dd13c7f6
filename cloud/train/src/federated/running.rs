//! The seed Flask server's aggregation: one running, sample-weighted average that every posted
//! client state is folded into as it arrives, `server ← (a·server + b·client)/(a + b)`, `b` the
//! client's samples and `a` the samples folded in before it, over all rounds (the server never
//! resets it). The starting model counts for `a = 0`: the first update replaces it. Within the
//! first round this is FedAvg; later rounds move the model by `b / (a + b)`, less and less.

use super::{ClientUpdate, State, Strategy, check_update, weighted_mean};
use crate::fit::FitError;

/// The running average and the samples folded into it so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Running {
    /// `a`: samples averaged in so far, over every round.
    pub seen: f64,
}

impl Strategy for Running {
    fn name(&self) -> &'static str {
        "running"
    }

    fn aggregate(&mut self, global: &State, updates: &[ClientUpdate]) -> Result<State, FitError> {
        if updates.is_empty() {
            return Err(FitError::Config("a round needs at least one client update".into()));
        }
        for u in updates {
            check_update(global, u)?;
        }
        let mut server = global.clone();
        for u in updates {
            let b = u.samples as f64;
            server = weighted_mean(global, &[(&server, self.seen), (&u.state, b)])?;
            self.seen += b;
        }
        Ok(server)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fedavg::FedAvg;
    use super::super::tests::{assert_close, state, update};
    use super::*;

    #[test]
    fn the_running_average_computed_by_hand_over_two_rounds() {
        let global = state([1.0, 2.0], [0.0, 0.0], [1.0, 1.0], 5);
        let a = update("a", 1, state([3.0, 6.0], [1.0, 1.0], [2.0, 4.0], 7));
        let b = update("b", 3, state([7.0, 10.0], [2.0, 4.0], [6.0, 8.0], 9));
        let mut running = Running::default();
        let first = running.aggregate(&global, &[a.clone(), b.clone()]).unwrap();
        // a = 0: a's state replaces the start ([3, 6]), then (1·[3, 6] + 3·[7, 10]) / 4 = [6, 9]: FedAvg's.
        assert_close(&first, "model.0.conv.weight", &[6.0, 9.0]);
        assert_close(&first, "model.0.bn.running_mean", &[1.75, 3.25]);
        assert_close(&first, "model.0.bn.running_var", &[5.0, 7.0]);
        assert_eq!(first["model.0.bn.num_batches_tracked"].to_vec1::<i64>().unwrap(), [5]);
        assert_eq!(running.seen, 4.0);
        // Round 2, one client of 2 samples at [0, 0]: (4·[6, 9] + 2·[0, 0]) / 6 = [4, 6] ...
        let c = update("c", 2, state([0.0, 0.0], [3.0, 3.0], [1.0, 1.0], 11));
        let second = running.aggregate(&first, std::slice::from_ref(&c)).unwrap();
        assert_close(&second, "model.0.conv.weight", &[4.0, 6.0]);
        // (4·[1.75, 3.25] + 2·[3, 3]) / 6
        assert_close(&second, "model.0.bn.running_mean", &[13.0 / 6.0, 19.0 / 6.0]);
        assert_eq!(running.seen, 6.0);
        // ... where FedAvg takes the round's only update as it is.
        assert_close(&FedAvg.aggregate(&first, &[c]).unwrap(), "model.0.conv.weight", &[0.0, 0.0]);
    }
}
