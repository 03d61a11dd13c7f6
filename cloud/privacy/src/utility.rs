//! The utility side of the sweep: what each setting costs in detection accuracy. A trained
//! MistNet model (Front + a Back trained on binarized features, from `mistnet-cloud train`) is
//! evaluated on a labelled dataset as `mistnet-cloud val` does, except that the Front's features
//! cross the real codec under the setting's mechanism and ε before the Back sees them.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use mistnet::codec::{CodecRng, Privacy};
use mistnet::encoder::{EdgeEncoder, WireSettings};
use mistnet::data::{BadDataPolicy, Split};
use mistnet::model::Front;
use mistnet::model::deploy::Detector;

use super::PrivacyError;
use super::observe::through_codec;
use mistnet_train::fit::{EvalSet, Metrics};

/// Where the utility evaluation comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct UtilityConfig {
    /// Labelled dataset (its val split is evaluated).
    pub val: PathBuf,
    /// A deployable MistNet model (`binarized_cut` set): the Front and the trained Back.
    pub back: PathBuf,
}

/// Images per forward pass of the utility evaluation.
const BATCH: usize = 16;

/// A trained model and the split it is scored on.
pub struct Utility {
    detector: Detector,
    set: EvalSet,
    device: Device,
}

impl Utility {
    /// Loads the model and letterboxes the val split to the size the model was trained at.
    pub fn load(cfg: &UtilityConfig, device: &Device) -> Result<Self, PrivacyError> {
        let detector = Detector::load(&cfg.back, device)?;
        if detector.front().is_none() {
            return Err(PrivacyError::Config(format!(
                "--back {} is a whole model (from `pretrain`); the mAP cost of ε needs a MistNet model from `train`, whose Back takes the binarized features",
                cfg.back.display()
            )));
        }
        let imgsz = detector.meta().imgsz;
        let set = EvalSet::open(&cfg.val, Split::Val, BadDataPolicy::Fail, &detector, imgsz)?;
        if set.images.is_empty() {
            return Err(PrivacyError::Config(format!("{}: the val split holds no images", cfg.val.display())));
        }
        Ok(Self { detector, set, device: device.clone() })
    }

    /// The Front the Back was trained behind.
    pub fn front(&self) -> &Front {
        self.detector.front().expect("checked at load")
    }

    /// Images of the val split: the progress units of one [`Utility::measure`].
    pub fn len(&self) -> usize {
        self.set.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.images.is_empty()
    }

    /// The model's mAP on the val split when the Front's features cross the codec under
    /// `privacy` (noise from `rng`). With `Privacy::none()` this is `mistnet-cloud val`'s figure.
    pub fn measure(&self, privacy: Privacy, rng: &mut CodecRng, progress: &ProgressBar) -> Result<Metrics, PrivacyError> {
        let front = self.front();
        let encoder = EdgeEncoder::new(front.clone(), self.detector.meta().imgsz, WireSettings::packed(privacy))?;
        let eval = self.set.evaluate_with(&self.detector, BATCH, |images| -> Result<Tensor, PrivacyError> {
            let features = front.forward(&images.to_device(&self.device)?)?;
            let received = through_codec(&encoder, &features, rng)?;
            let preds = self.detector.predict_back(&received)?.to_device(&Device::Cpu)?;
            progress.inc(images.dim(0)? as u64);
            Ok(preds)
        })?;
        Ok(eval.metrics())
    }
}
