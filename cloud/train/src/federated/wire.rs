//! A state as it would cross the network: one safetensors buffer of every tensor (no metadata),
//! in f32 as trained or with every floating-point tensor cast to f16 (halving the payload, as
//! federated systems commonly send updates). The byte counts of the accounting are the lengths
//! of these buffers.

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::State;
use crate::fit::FitError;

/// The precision of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

/// `state` serialized as it would be sent at `precision`.
pub fn serialize(state: &State, precision: Precision) -> Result<Vec<u8>, FitError> {
    let cast = |t: &Tensor| -> Result<Tensor, FitError> {
        Ok(match precision {
            Precision::F16 if t.dtype().is_float() => t.to_dtype(DType::F16)?,
            _ if t.dtype().is_float() => t.to_dtype(DType::F32)?,
            _ => t.clone(),
        })
    };
    let tensors: Vec<(&String, Tensor)> = state.iter().map(|(k, v)| Ok((k, cast(v)?))).collect::<Result<_, FitError>>()?;
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None).map_err(|e| FitError::Config(format!("cannot serialize a model state: {e}")))
}

/// The bytes of one payload at both precisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PayloadBytes {
    pub f32: u64,
    pub f16: u64,
}

impl PayloadBytes {
    /// The serialized sizes of `state`.
    pub fn of(state: &State) -> Result<Self, FitError> {
        Ok(Self { f32: serialize(state, Precision::F32)?.len() as u64, f16: serialize(state, Precision::F16)?.len() as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::state;
    use super::*;

    #[test]
    fn payload_bytes_are_the_sizes_of_the_files_a_receiver_would_read() {
        let s = state([1.5, -2.0], [0.25, 0.5], [1.0, 2.0], 3);
        let bytes = PayloadBytes::of(&s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update.safetensors");
        std::fs::write(&path, serialize(&s, Precision::F32).unwrap()).unwrap();
        // What a receiver reads back is the state, and the file is exactly the counted bytes.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes.f32);
        let back = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
        assert_eq!(back.len(), s.len());
        assert_eq!(back["model.0.conv.weight"].to_vec1::<f32>().unwrap(), [1.5, -2.0]);
        // The same as candle's own writer of the same tensors.
        let candle_path = dir.path().join("candle.safetensors");
        candle_core::safetensors::save(&s.clone().into_iter().collect::<std::collections::HashMap<_, _>>(), &candle_path).unwrap();
        assert_eq!(std::fs::metadata(&candle_path).unwrap().len(), bytes.f32);
        // f16: the float data halves (6 floats: 24 → 12 bytes), the i64 counter stays 8 bytes; the header
        // changes only by the dtype names ("F32" and "F16" are the same length).
        assert_eq!(bytes.f32 - bytes.f16, 12);
        let half = candle_core::safetensors::load_buffer(&serialize(&s, Precision::F16).unwrap(), &candle_core::Device::Cpu).unwrap();
        assert_eq!(half["model.0.bn.running_var"].dtype(), DType::F16);
        assert_eq!(half["model.0.bn.num_batches_tracked"].to_vec1::<i64>().unwrap(), [3]);
    }
}
