//! The edge's privacy flags (`--mechanism` and `--epsilon` of [`LdpArgs`], `--zstd-level`, `--seed`)
//! turned into wire settings and a noise generator.

use anyhow::Result;
use mistnet::codec::{CodecRng, DEFAULT_ZSTD_LEVEL, Encoding, Privacy, os_rng, seeded_rng};
use mistnet::encoder::WireSettings;
use mistnet_cli::LdpArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct PrivacyArgs {
    #[command(flatten)]
    pub ldp: LdpArgs,
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
        self.ldp.privacy()
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
