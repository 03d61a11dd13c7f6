//! Statistics of a decoded message: what `mistnet-cloud inspect` and the benchmarks report.

use super::Decoded;

/// Sizes and bit statistics of one message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Elements in the tensor.
    pub elements: u64,
    /// Elements whose bit is 1.
    pub ones: u64,
    /// Bytes of the whole message, header included.
    pub message_bytes: u64,
    /// Bytes of the payload as stored (after compression, if any).
    pub payload_bytes: u64,
}

impl Stats {
    /// The statistics of `decoded`, which was read from a message of `message_bytes` bytes.
    pub fn of(decoded: &Decoded, message_bytes: usize) -> Self {
        Self {
            elements: decoded.bits.len() as u64,
            ones: decoded.bits.count_ones() as u64,
            message_bytes: message_bytes as u64,
            payload_bytes: decoded.header.payload_len,
        }
    }

    /// Fraction of elements that are 1.
    pub fn fraction_ones(&self) -> f64 {
        self.ones as f64 / self.elements as f64
    }

    /// How many times smaller the message is than the raw f32 feature map (4 bytes per element).
    pub fn compression_ratio(&self) -> f64 {
        (4 * self.elements) as f64 / self.message_bytes as f64
    }

    /// Message bits per element (the packing floor is 1).
    pub fn bits_per_element(&self) -> f64 {
        (8 * self.message_bytes) as f64 / self.elements as f64
    }
}
