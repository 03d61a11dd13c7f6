//! Validation of an uploaded sample against the served model ([`Expected`], from its manifest):
//! the sample id, the codec decoder, Front hash, cut and shape, then the image size and labels
//! (docs/feature-store.md, "Validation before storage"). Every failure is a sentence for the edge.

use mistnet_codec::{DecodeLimits, FrontHash, Shape, decode};
use mistnet_data::Label;
use mistnet_store::Upload;
use mistnet_proto::pb;

/// What every sample must match ([`crate::manifest::ServedFront::expected`]).
#[derive(Debug, Clone)]
pub struct Expected {
    pub front_hash: FrontHash,
    pub cut: u16,
    pub shape: Shape,
    /// Number of classes of the served model (its own, not a config's).
    pub nc: usize,
}

impl Expected {
    /// About the bytes of one upload message of this Front: its features bit-packed (what the
    /// noised bits of SUE or RR cost, zstd finding little to take out), plus room for the header,
    /// the sample id and a few dozen boxes. What a stream reserves before reading a message.
    pub fn typical_message_bytes(&self) -> usize {
        usize::try_from(self.shape.elements().div_ceil(8)).unwrap_or(usize::MAX).saturating_add(2048)
    }
}

/// Checks `sample` of `edge`; `Err` is the INVALID_ARGUMENT message.
pub fn validate(edge: &str, sample: pb::Sample, expected: &Expected) -> Result<Upload, String> {
    let id = &sample.sample_id;
    mistnet_proto::check_sample_id(id)?;
    let limits = DecodeLimits { max_elements: expected.shape.elements() };
    let decoded = decode(&sample.features, &limits).map_err(|e| format!("sample {id}: features: {e}"))?;
    let h = decoded.header;
    if h.front_hash != expected.front_hash {
        return Err(format!(
            "sample {id}: features were made by Front {}, this cloud serves Front {}; fetch the Front again",
            h.front_hash, expected.front_hash
        ));
    }
    if h.cut != expected.cut {
        return Err(format!("sample {id}: features are from cut {}, this cloud trains cut {}", h.cut, expected.cut));
    }
    if h.shape != expected.shape {
        return Err(format!("sample {id}: feature shape {:?}, expected {:?}", h.shape.0, expected.shape.0));
    }
    let (width, height) = (sample.image_width, sample.image_height);
    if width == 0 || height == 0 {
        return Err(format!("sample {id}: image size {width}x{height} must be at least 1x1"));
    }
    let mut labels = Vec::with_capacity(sample.labels.len());
    for (i, b) in sample.labels.iter().enumerate() {
        if b.class as usize >= expected.nc {
            return Err(format!("sample {id}: label {i}: class {} is not below nc = {}", b.class, expected.nc));
        }
        for (field, v, positive) in [("cx", b.cx, false), ("cy", b.cy, false), ("w", b.w, true), ("h", b.h, true)] {
            let ok = v.is_finite() && v <= 1.0 && if positive { v > 0.0 } else { v >= 0.0 };
            if !ok {
                let range = if positive { "(0, 1]" } else { "[0, 1]" };
                return Err(format!("sample {id}: label {i}: {field} = {v} is not in {range}"));
            }
        }
        labels.push(Label { class: b.class as usize, cx: b.cx, cy: b.cy, w: b.w, h: b.h });
    }
    Ok(Upload {
        edge: edge.to_string(),
        sample_id: sample.sample_id,
        epsilon: h.privacy.epsilon().unwrap_or(f64::INFINITY),
        labels,
        image_size: (width, height),
        features: sample.features,
    })
}
