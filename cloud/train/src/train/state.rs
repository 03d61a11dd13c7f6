//! Checkpoint state as named tensors: counters as one-element i64 tensors, and lookups that say
//! which entry is missing or has the wrong shape.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::TrainError;

/// A counter as a `[1]` i64 tensor.
pub fn counter(value: i64) -> Result<Tensor, TrainError> {
    Ok(Tensor::new(&[value], &Device::Cpu)?)
}

/// Reads a counter written by [`counter`].
pub fn read_counter(state: &HashMap<String, Tensor>, key: &str) -> Result<i64, TrainError> {
    let t = state.get(key).ok_or_else(|| TrainError::State(format!("missing {key}")))?;
    if t.dims() != [1] {
        return Err(TrainError::State(format!("{key} must be a one-element counter, got shape {:?}", t.dims())));
    }
    Ok(t.to_dtype(DType::I64)?.to_vec1::<i64>()?[0])
}

/// The tensor `key`, which must have `shape`, moved to `device` as f32.
pub fn read_tensor(state: &HashMap<String, Tensor>, key: &str, shape: &[usize], device: &Device) -> Result<Tensor, TrainError> {
    let t = state.get(key).ok_or_else(|| TrainError::State(format!("missing {key}")))?;
    if t.dims() != shape {
        return Err(TrainError::State(format!("{key} has shape {:?}, the model needs {shape:?}", t.dims())));
    }
    Ok(t.to_dtype(DType::F32)?.to_device(device)?)
}
