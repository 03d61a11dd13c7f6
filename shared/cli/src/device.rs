//! `--device`: where a command computes, chosen the same way everywhere (never a GPU unasked);
//! `--precision`: the arithmetic of the Front's CPU convolutions.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result};
use candle_core::Device;
use mistnet::model::Front;
use mistnet::model::direct::Precision;

use crate::argv::{Argv, ToArgs};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// CUDA device N (needs a build with `--features cuda`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "cpu" {
            return Ok(Self::Cpu);
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Self::Cuda)
            .ok_or_else(|| format!("--device must be cpu or cuda:N, got {s}"))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => Device::new_cuda(n).with_context(|| format!("--device {self}: cannot open it (CUDA needs a build with `--features cuda`)")),
        }
    }
}

#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Default)]
pub struct DeviceArgs {
    /// Device to compute on: cpu, or cuda:N (needs a build with `--features cuda`).
    #[arg(id = "device", long = "device", value_name = "cpu|cuda:N", default_value_t = DeviceSpec::Cpu)]
    pub spec: DeviceSpec,
}

impl DeviceArgs {
    pub fn open(&self) -> Result<Device> {
        self.spec.open()
    }
}

impl ToArgs for DeviceArgs {
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        Argv::new().arg("--device", self.spec.to_string()).build()
    }
}

#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Default)]
pub struct PrecisionArgs {
    /// Arithmetic of the Front's convolutions on the CPU: f32 (the reference; the default), or bf16
    /// (needs AVX512-BF16: inputs and weights rounded to bf16, products summed in f32; faster, and a
    /// small fraction of the sent bits differ from f32's: BENCHMARKS.md, "Edge Front").
    #[arg(id = "precision", long = "precision", value_name = "f32|bf16", default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl PrecisionArgs {
    /// Sets the Front's precision; an error where this CPU lacks the instructions.
    pub fn apply(&self, front: &mut Front) -> Result<()> {
        front.set_precision(self.precision).with_context(|| format!("--precision {}", self.precision))
    }
}

impl ToArgs for PrecisionArgs {
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        Argv::new().arg("--precision", self.precision.to_string()).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::reparse;

    #[test]
    fn devices_parse_back_and_bad_names_are_refused() {
        for spec in [DeviceSpec::Cpu, DeviceSpec::Cuda(0), DeviceSpec::Cuda(3)] {
            let a = DeviceArgs { spec };
            assert_eq!(reparse(&a).unwrap(), a);
        }
        for bad in ["gpu", "cuda", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceSpec>().unwrap_err().contains("cpu or cuda:N"), "{bad}");
        }
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }

    #[test]
    fn precisions_parse_back_and_bad_names_are_refused() {
        for precision in [Precision::F32, Precision::Bf16] {
            let a = PrecisionArgs { precision };
            assert_eq!(reparse(&a).unwrap(), a);
        }
        for bad in ["fp32", "BF16", "int8", ""] {
            assert!(bad.parse::<Precision>().unwrap_err().contains("f32 or bf16"), "{bad}");
        }
    }
}
