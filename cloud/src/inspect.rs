//! `mistnet-cloud inspect`: the header and statistics of a feature message (`.mnf`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mistnet::codec::{DecodeLimits, Decoded, Stats, decode};
use serde::Serialize;

#[derive(clap::Args)]
#[command(after_help = "Fields: shape [N, C, H, W]; cut (the edge ran modules 0..cut-1); the SHA-256 of the Front \
weights; mechanism and ε of the randomized response; encoding (packed, f16, f32) and compression (zstd or none); \
bytes (whole message, header included) and payload_bytes; ones and fraction_ones (elements whose bit is 1); \
compression_ratio = 4 × elements / bytes (how many times smaller than the raw f32 feature map); \
bits_per_element = 8 × bytes / elements (the packing floor is 1).\n\n\
The file is fully validated (checksum, header fields, payload); a malformed file is an error.\n\
Format: docs/wire-format.md.\n\n\
Example:\n  mistnet-cloud inspect features/bus.mnf --json")]
pub struct Args {
    /// A feature message in the MistNet wire format, as `mistnet-edge extract --encoding ...` writes.
    file: PathBuf,
    /// Print one JSON object (keys as listed below) instead of text.
    #[arg(long)]
    json: bool,
}

/// What `inspect` prints; also the JSON object's keys.
#[derive(Serialize)]
struct Report {
    file: String,
    version: u16,
    shape: [usize; 4],
    elements: u64,
    cut: u16,
    front_hash: String,
    mechanism: String,
    epsilon: Option<f64>,
    encoding: String,
    compression: String,
    bytes: u64,
    payload_bytes: u64,
    ones: u64,
    fraction_ones: f64,
    compression_ratio: f64,
    bits_per_element: f64,
}

/// Reads and validates a feature message; returns it decoded, with its size in bytes.
pub fn read_message(path: &Path) -> Result<(Decoded, usize)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let decoded = decode(&bytes, &DecodeLimits::default())
        .with_context(|| format!("{} is not a valid MistNet feature message", path.display()))?;
    Ok((decoded, bytes.len()))
}

pub fn run(args: Args) -> Result<()> {
    let (decoded, len) = read_message(&args.file)?;
    let stats = Stats::of(&decoded, len);
    let h = &decoded.header;
    let report = Report {
        file: args.file.display().to_string(),
        version: mistnet::codec::VERSION,
        shape: h.shape.dims(),
        elements: stats.elements,
        cut: h.cut,
        front_hash: h.front_hash.to_string(),
        mechanism: h.privacy.mechanism().to_string(),
        epsilon: h.privacy.epsilon(),
        encoding: h.encoding.to_string(),
        compression: h.compression.to_string(),
        bytes: stats.message_bytes,
        payload_bytes: stats.payload_bytes,
        ones: stats.ones,
        fraction_ones: stats.fraction_ones(),
        compression_ratio: stats.compression_ratio(),
        bits_per_element: stats.bits_per_element(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &Report) {
    println!("file               {}", r.file);
    println!("format version     {}", r.version);
    println!("shape              {:?} ({} elements)", r.shape, r.elements);
    println!("cut                {}", r.cut);
    println!("front hash         {}", r.front_hash);
    println!("mechanism          {}", r.mechanism);
    println!("epsilon            {}", r.epsilon.map_or("-".to_string(), |e| e.to_string()));
    println!("encoding           {}", r.encoding);
    println!("compression        {}", r.compression);
    println!("bytes              {} (payload {}, header {})", r.bytes, r.payload_bytes, r.bytes - r.payload_bytes);
    println!("ones               {} ({:.4} of elements)", r.ones, r.fraction_ones);
    println!("compression ratio  {:.2}x smaller than f32 ({:.4} bits per element)", r.compression_ratio, r.bits_per_element);
}
