//! The edge agent's flags: what leaves the edge ([`PrivacyArgs`]: mechanism and ε, zstd level,
//! noise seed) and the whole command line of `mistnet-edge run` ([`RunArgs`]), so that
//! `mistnet-cloud job` renders an edge's argv from the very types the edge parses.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use mistnet::codec::{CodecRng, DEFAULT_ZSTD_LEVEL, ENCODING_HELP, Encoding, Privacy, os_rng, seeded_rng};
use mistnet::encoder::WireSettings;

use crate::argv::{Argv, ToArgs};
use crate::client::ClientArgs;
use crate::device::PrecisionArgs;
use crate::ldp::LdpArgs;

#[derive(clap::Args, Debug, Clone, PartialEq)]
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

impl ToArgs for PrivacyArgs {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new().group(&self.ldp).arg("--zstd-level", self.zstd_level.to_string()).opt("--seed", self.seed.map(|s| s.to_string())).build()
    }
}

/// The default cache directory of `mistnet-edge run`.
pub const DEFAULT_CACHE: &str = ".mistnet-edge";

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Prints on stdout how fast it extracted (`extracted: N images in S s (R images/s, T ms each)`: decode, \
letterbox, Front, binarization, noise, packing, compression and the spool write) and, at the end, the upload's goodput \
(`uploaded: ... goodput ... kB/s`). Exits 0 only when every sample is acknowledged as stored; otherwise non-zero with the reason.\n\n\
Example:\n  mistnet-edge run --server https://cloud:50051 --ca-cert ca.pem --edge edge-1 --token-file edge-1.token \\\n    \
--data edge-1.yaml --mechanism sue --epsilon 2")]
pub struct RunArgs {
    // The cloud (`mistnet-cloud serve`) and this edge's token.
    #[command(flatten)]
    pub client: ClientArgs,
    /// This edge's id, as in the cloud's tokens file.
    #[arg(long)]
    pub edge: String,
    /// Local dataset: a dataset YAML or a YOLO-format directory (its train split is uploaded).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub privacy: PrivacyArgs,
    /// How the bits are serialized: packed (1 bit per element), f16 or f32 (baselines).
    #[arg(long, default_value = "packed", long_help = ENCODING_HELP)]
    pub encoding: Encoding,
    /// Cache directory: the Front (by hash) and the spool of encoded messages awaiting acknowledgement.
    #[arg(long, default_value = DEFAULT_CACHE)]
    pub cache: PathBuf,
    /// Failed connection attempts in a row before giving up.
    #[arg(long, default_value_t = 8)]
    pub max_attempts: u32,
    /// Send at most this many samples per second (to share a thin uplink); default: as fast as acks allow.
    #[arg(long)]
    pub max_rate: Option<f64>,
    /// Skip bad samples of the dataset (missing or undecodable images, malformed labels, ids the cloud
    /// would refuse: over 256 bytes or with control characters) instead of stopping; each is counted.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

impl ToArgs for RunArgs {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .group(&self.client)
            .arg("--edge", &self.edge)
            .arg("--data", &self.data)
            .group(&self.privacy)
            .arg("--encoding", self.encoding.to_string())
            .arg("--cache", &self.cache)
            .arg("--max-attempts", self.max_attempts.to_string())
            .opt("--max-rate", self.max_rate.map(|r| r.to_string()))
            .switch("--skip-bad", self.skip_bad)
            .group(&self.precision)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::reparse;
    use mistnet::codec::Mechanism;

    #[test]
    fn the_edge_flags_parse_back() {
        let client = ClientArgs {
            server: "https://cloud:50051".into(),
            token_file: "edge-1.token".into(),
            ca_cert: Some("ca.pem".into()),
            client_cert: None,
            client_key: None,
            insecure_plaintext: false,
        };
        let privacy = PrivacyArgs { ldp: LdpArgs { mechanism: Mechanism::Sue, epsilon: Some(2.0) }, zstd_level: DEFAULT_ZSTD_LEVEL, seed: None };
        let a = RunArgs {
            client,
            edge: "edge-1".into(),
            data: "data/edge-1.yaml".into(),
            privacy,
            encoding: Encoding::Packed,
            cache: DEFAULT_CACHE.into(),
            max_attempts: 8,
            max_rate: None,
            skip_bad: false,
            precision: PrecisionArgs::default(),
        };
        assert_eq!(reparse(&a).unwrap(), a);
        let b = RunArgs {
            privacy: PrivacyArgs { ldp: LdpArgs { mechanism: Mechanism::None, epsilon: None }, zstd_level: 0, seed: Some(7) },
            encoding: Encoding::F16,
            max_rate: Some(12.5),
            skip_bad: true,
            precision: PrecisionArgs { precision: mistnet::model::direct::Precision::Bf16 },
            ..a
        };
        assert_eq!(reparse(&b).unwrap(), b);
    }
}
