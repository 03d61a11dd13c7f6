//! The edge's privacy flags (`--mechanism`, `--epsilon`, `--encoding`, `--zstd-level`, `--seed`)
//! turned into wire settings and a noise generator.

use anyhow::{Result, bail};
use mistnet::codec::{CodecRng, DEFAULT_ZSTD_LEVEL, EPSILON_HELP, Encoding, MECHANISM_HELP, Mechanism, Privacy, os_rng, seeded_rng};
use mistnet::encoder::WireSettings;

#[derive(clap::Args, Debug, Clone)]
pub struct PrivacyArgs {
    /// Randomized response applied to every binarized element: sue, rr, oue or none.
    #[arg(long, default_value = "sue", long_help = MECHANISM_HELP)]
    pub mechanism: Mechanism,
    /// Privacy parameter ε, 0 < ε <= 64 (required unless --mechanism none).
    #[arg(long, long_help = EPSILON_HELP)]
    pub epsilon: Option<f64>,
    /// zstd level for the payload (0 = no compression).
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// For tests and benchmarks only: a fixed noise seed makes the noise predictable, which voids the privacy
    /// guarantee. By default the noise comes from a cryptographically secure generator seeded by the OS.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl PrivacyArgs {
    /// The validated mechanism and ε.
    pub fn privacy(&self) -> Result<Privacy> {
        if self.mechanism != Mechanism::None && self.epsilon.is_none() {
            bail!(
                "--mechanism {} needs --epsilon (see --help for what ε guarantees), or use --mechanism none",
                self.mechanism
            );
        }
        Ok(Privacy::new(self.mechanism, self.epsilon)?)
    }

    /// How the features leave the edge, serialized in `encoding`.
    pub fn wire(&self, encoding: Encoding) -> Result<WireSettings> {
        Ok(WireSettings { privacy: self.privacy()?, encoding, zstd_level: (self.zstd_level != 0).then_some(self.zstd_level) })
    }

    /// The noise generator: OS-seeded ChaCha20 unless `--seed` was given.
    pub fn rng(&self) -> Result<CodecRng> {
        match self.seed {
            Some(seed) => {
                tracing::warn!(seed, "fixed noise seed: the randomized response is predictable, no privacy guarantee");
                Ok(seeded_rng(seed))
            }
            None => Ok(os_rng()?),
        }
    }
}
