//! `--mechanism` and `--epsilon`: the randomized response edges apply, one default everywhere.

use anyhow::{Result, bail};
use mistnet::codec::{EPSILON_HELP, MECHANISM_HELP, Mechanism, Privacy};

use crate::argv::{Argv, ToArgs};

/// The mechanism every command defaults to (Plato's MistNet).
pub const DEFAULT_MECHANISM: Mechanism = Mechanism::Sue;

#[derive(clap::Args, Debug, Clone, Copy, PartialEq)]
pub struct LdpArgs {
    /// Randomized response applied to every binarized element: sue, rr, oue or none.
    #[arg(long, default_value_t = DEFAULT_MECHANISM, long_help = MECHANISM_HELP)]
    pub mechanism: Mechanism,
    /// Privacy parameter ε, 0 < ε <= 64 (required unless --mechanism none).
    #[arg(long, long_help = EPSILON_HELP)]
    pub epsilon: Option<f64>,
}

impl LdpArgs {
    /// The validated mechanism and ε.
    pub fn privacy(&self) -> Result<Privacy> {
        if self.mechanism != Mechanism::None && self.epsilon.is_none() {
            bail!("--mechanism {} needs --epsilon (see --help for what ε guarantees), or use --mechanism none", self.mechanism);
        }
        Ok(Privacy::new(self.mechanism, self.epsilon)?)
    }
}

impl ToArgs for LdpArgs {
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        Argv::new().arg("--mechanism", self.mechanism.name()).opt("--epsilon", self.epsilon.map(|e| e.to_string())).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::reparse;

    #[test]
    fn every_mechanism_and_epsilon_parses_back() {
        for mechanism in Mechanism::ALL {
            for epsilon in [None, Some(0.1 + 0.2), Some(4.0), Some(1e-3)] {
                let a = LdpArgs { mechanism, epsilon };
                assert_eq!(reparse(&a).unwrap(), a);
            }
        }
    }

    #[test]
    fn a_mechanism_without_epsilon_is_refused_with_the_way_out() {
        let err = LdpArgs { mechanism: Mechanism::Sue, epsilon: None }.privacy().unwrap_err().to_string();
        assert!(err.contains("needs --epsilon") && err.contains("--mechanism none"), "{err}");
        assert!(LdpArgs { mechanism: Mechanism::None, epsilon: None }.privacy().is_ok());
        assert!(LdpArgs { mechanism: Mechanism::Rr, epsilon: Some(-1.0) }.privacy().is_err());
    }
}
