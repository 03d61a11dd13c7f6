//! Privacy evaluation: white-box model-inversion attacks on the features edges send, scored
//! with SSIM and PSNR against the held-out originals, swept over cuts and ε.
//!
//! The attacker knows the Front's weights, the mechanism and ε. It sees what the cloud sees:
//! the decoded bits of each wire message ([`observe`]), or the raw float features as the
//! no-protection reference. Three attacks ([`Attack`]):
//! - [`decoder`]: an upsampling convolutional network trained on auxiliary images encoded exactly
//!   as edges encode them, mapping features back to images;
//! - [`optimize`]: gradient descent on an input image to match the observed features through the
//!   differentiable Front (He et al. 2019, as the MistNet paper does), with a sigmoid surrogate
//!   of the binarization, the exact randomized-response likelihood and a total-variation prior;
//! - combined: the optimization started from, and anchored to, the decoder's reconstruction.
//!
//! Each reconstruction is scored by SSIM/PSNR and by re-identification among all held-out
//! originals ([`reid`]); [`verdict`] turns that evidence, the blind guess and the calibration on
//! float features into a verdict per (cut, setting). [`sweep::evaluate`] runs every (cut,
//! setting, attack) and, with a trained model, the mAP each setting leaves ([`utility`]);
//! [`report`] writes the table, CSV, JSON, image grids and the privacy–utility plot. [`photos`]
//! holds the embedded photographs.

pub mod decoder;
pub mod images;
pub mod init;
pub mod observe;
pub mod optimize;
pub mod photos;
pub mod reid;
pub mod report;
pub mod sweep;
pub mod utility;
pub mod verdict;

use std::fmt;
use std::str::FromStr;

pub use observe::Setting;
pub use report::{Report, Row};
pub use sweep::{EvalConfig, evaluate};

/// The MistNet paper's threshold: a reconstruction with SSIM below it is unrecognisable.
pub const SSIM_UNRECOGNISABLE: f64 = 0.3;

/// A model-inversion attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    /// A learned inversion decoder.
    Decoder,
    /// Optimization-based inversion through the differentiable Front.
    Optimization,
    /// The optimization started from, and anchored to, the decoder's reconstruction.
    Combined,
}

impl Attack {
    pub const ALL: [Attack; 3] = [Attack::Decoder, Attack::Optimization, Attack::Combined];

    pub fn name(self) -> &'static str {
        match self {
            Attack::Decoder => "decoder",
            Attack::Optimization => "optimization",
            Attack::Combined => "combined",
        }
    }

    /// Whether the attack needs the trained decoder.
    pub fn uses_decoder(self) -> bool {
        matches!(self, Attack::Decoder | Attack::Combined)
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Attack {
    type Err = PrivacyError;

    fn from_str(s: &str) -> Result<Self, PrivacyError> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| PrivacyError::Config(format!("unknown attack {s:?}; known: decoder, optimization, combined")))
    }
}

/// Everything that can go wrong in a privacy evaluation.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("invalid evaluation settings: {0}")]
    Config(String),
    #[error("image {path}: {message}")]
    Image { path: String, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error(transparent)]
    Model(#[from] mistnet::model::ModelError),
    #[error(transparent)]
    Codec(#[from] mistnet::codec::CodecError),
    #[error(transparent)]
    Encoder(#[from] mistnet::encoder::EncoderError),
    #[error(transparent)]
    Metric(#[from] mistnet::metrics::ImageQualityError),
    #[error(transparent)]
    Plot(#[from] mistnet_train::plot::PlotError),
    #[error(transparent)]
    Fit(#[from] mistnet_train::fit::FitError),
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
}
