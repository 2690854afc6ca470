//! The one `--device` value of every command: `auto`, `cpu`, `cuda` or `cuda:N`. The encoder
//! maps it to an ONNX Runtime execution provider, the training crate to a libtorch device; what
//! `auto` and a missing GPU mean is decided there.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Device {
    /// The first CUDA device when the runtime has one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// This CUDA device, or an error.
    Cuda(i32),
}

impl Device {
    /// The seed's `--ngpu` count: 0 is the CPU, any other count the first GPU (one device is used).
    pub fn from_ngpu(count: u32) -> Self {
        if count == 0 { Device::Cpu } else { Device::Cuda(0) }
    }
}

impl FromStr for Device {
    type Err = String;
    /// Case-insensitive; `gpu` and `gpu:N` are accepted for `cuda` and `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .or_else(|| s.strip_prefix("gpu:"))
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_refuses_the_rest() {
        for (text, device) in [
            ("auto", Device::Auto),
            ("CPU", Device::Cpu),
            (" cuda ", Device::Cuda(0)),
            ("gpu", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
            ("GPU:1", Device::Cuda(1)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device), "{text}");
        }
        for bad in ["cuda:-1", "cuda:", "cuda:x", "tpu", "", "0", "1"] {
            let err = bad.parse::<Device>().unwrap_err();
            assert!(err.contains("expected auto, cpu, cuda or cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_and_serde_round_trip() {
        for device in [Device::Auto, Device::Cpu, Device::Cuda(0), Device::Cuda(7)] {
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
            let json = serde_json::to_string(&device).unwrap();
            assert_eq!(json, format!("\"{device}\""));
            assert_eq!(serde_json::from_str::<Device>(&json).unwrap(), device);
        }
        assert!(serde_json::from_str::<Device>("\"tpu\"").is_err());
    }

    #[test]
    fn ngpu_counts_map_to_cpu_or_the_first_gpu() {
        assert_eq!(Device::from_ngpu(0), Device::Cpu);
        assert_eq!(Device::from_ngpu(1), Device::Cuda(0));
        assert_eq!(Device::from_ngpu(4), Device::Cuda(0));
    }
}
