//! The edge pipeline, written once: image → letterbox → Front → binarize → randomized response →
//! pack → zstd → wire message. `mistnet-edge extract` and `run`, the trainer's simulated edges and
//! the privacy attacker all go through [`EdgeEncoder`], so what they measure is what edges send.
//!
//! Coordinate frames: a [`Sample`]'s labels are normalized to the original image, and that is how
//! they travel (the proto's `Box`) and are stored. The model sees the letterboxed canvas; the
//! [`Letterbox`] geometry depends on the original size and `imgsz` alone ([`Letterbox::fit`]), so
//! [`EncodedSample::letterboxed_labels`] and the trainer reading the store place every box the
//! same way.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::codec::{self, CodecError, CodecRng, DEFAULT_ZSTD_LEVEL, EncodeParams, Encoding, Privacy};
use crate::data::letterbox::{Letterbox, letterbox, read_rgb};
use crate::model::image_to_tensor;
use crate::data::{Label, Sample};
use crate::model::{Front, ModelError};

/// Errors of the edge pipeline.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("{0}")]
    Image(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("cut {0} does not fit the wire format's 16-bit field")]
    Cut(usize),
}

/// How the Front's output leaves the edge: mechanism and ε, serialization, compression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WireSettings {
    pub privacy: Privacy,
    pub encoding: Encoding,
    /// zstd level, or `None` for an uncompressed payload.
    pub zstd_level: Option<i32>,
}

impl WireSettings {
    /// What `mistnet-edge run` sends by default: packed bits, zstd at the default level.
    pub fn packed(privacy: Privacy) -> Self {
        Self { privacy, encoding: Encoding::Packed, zstd_level: Some(DEFAULT_ZSTD_LEVEL) }
    }
}

/// An image letterboxed for the Front: what can be made ahead of it (a pipeline decodes the next
/// image while the Front runs on this one).
pub struct Letterboxed {
    pub image: RgbImage,
    pub letterbox: Letterbox,
}

/// One image through the Front: `[1, C, h, w]` f32 features and where the image sits in the canvas.
pub struct Features {
    pub tensor: Tensor,
    pub letterbox: Letterbox,
}

/// A sample as it leaves the edge: the wire message, its labels as sent, and the geometry.
#[derive(Debug, Clone)]
pub struct EncodedSample {
    pub message: Vec<u8>,
    /// The sample's labels, normalized to the original image (the wire and store frame).
    pub labels: Vec<Label>,
    pub letterbox: Letterbox,
}

impl EncodedSample {
    /// The labels normalized to the letterboxed canvas the features come from (the trainer's frame).
    pub fn letterboxed_labels(&self) -> Vec<Label> {
        self.labels.iter().map(|l| l.to_letterboxed(&self.letterbox)).collect()
    }
}

/// The Front at a letterbox size, and the codec parameters of what an edge sends.
pub struct EdgeEncoder {
    front: Front,
    imgsz: u32,
    params: EncodeParams,
    /// Where the Front's weights live (the CPU on an edge device).
    device: Device,
}

impl EdgeEncoder {
    /// An encoder running `front` on `imgsz`×`imgsz` letterboxed images, sending with `wire`.
    pub fn new(front: Front, imgsz: u32, wire: WireSettings) -> Result<Self, EncoderError> {
        let cut = u16::try_from(front.cut()).map_err(|_| EncoderError::Cut(front.cut()))?;
        let params = EncodeParams { privacy: wire.privacy, encoding: wire.encoding, zstd_level: wire.zstd_level, cut, front_hash: front.hash() };
        Ok(Self { front, imgsz, params, device: Device::Cpu })
    }

    /// The same encoder feeding a Front loaded on `device`.
    pub fn on_device(self, device: Device) -> Self {
        Self { device, ..self }
    }

    pub fn front(&self) -> &Front {
        &self.front
    }

    pub fn imgsz(&self) -> u32 {
        self.imgsz
    }

    /// The codec parameters every message of this encoder carries.
    pub fn params(&self) -> &EncodeParams {
        &self.params
    }

    /// The same Front and image size, sending with other settings (the privacy sweep).
    pub fn with_wire(&self, wire: WireSettings) -> Result<Self, EncoderError> {
        Ok(Self::new(self.front.clone(), self.imgsz, wire)?.on_device(self.device.clone()))
    }

    /// `img` letterboxed to this encoder's size.
    pub fn letterbox(&self, img: &RgbImage) -> Letterboxed {
        let (image, letterbox) = self::letterbox(img, self.imgsz);
        Letterboxed { image, letterbox }
    }

    /// Letterboxes `img` and runs the Front on it (the float features, before binarization).
    pub fn features(&self, img: &RgbImage) -> Result<Features, EncoderError> {
        self.features_of(&self.letterbox(img))
    }

    /// Runs the Front on a letterboxed image.
    pub fn features_of(&self, boxed: &Letterboxed) -> Result<Features, EncoderError> {
        let tensor = self.front.forward(&image_to_tensor(&boxed.image, &self.device)?)?;
        Ok(Features { tensor, letterbox: boxed.letterbox })
    }

    /// One feature map (`[1, C, h, w]` or `[C, h, w]`) as a wire message: binarized, randomized
    /// with noise from `rng`, serialized and compressed.
    pub fn encode_features(&self, features: &Tensor, rng: &mut CodecRng) -> Result<Vec<u8>, EncoderError> {
        let values = features.flatten_all()?.to_vec1::<f32>()?;
        Ok(codec::encode(&values, features.dims(), &self.params, rng)?)
    }

    /// A dataset sample: reads its image, encodes it, and keeps its labels with the geometry.
    pub fn encode_sample(&self, sample: &Sample, rng: &mut CodecRng) -> Result<EncodedSample, EncoderError> {
        let f = self.features_of(&self.read_sample(sample)?)?;
        Ok(EncodedSample { message: self.encode_features(&f.tensor, rng)?, labels: sample.labels.clone(), letterbox: f.letterbox })
    }

    /// A dataset sample's image, read and letterboxed. Its decoded size must be the size the dataset
    /// recorded (it travels as the image size).
    pub fn read_sample(&self, sample: &Sample) -> Result<Letterboxed, EncoderError> {
        let img = read_rgb(&sample.image_path).map_err(EncoderError::Image)?;
        if img.dimensions() != sample.size {
            return Err(EncoderError::Image(format!(
                "{}: decodes to {:?} pixels, the dataset recorded {:?}",
                sample.image_path.display(),
                img.dimensions(),
                sample.size
            )));
        }
        Ok(self.letterbox(&img))
    }
}
