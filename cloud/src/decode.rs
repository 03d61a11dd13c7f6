//! `mistnet-cloud decode`: a feature message (`.mnf`) to a safetensors file of its bits.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use safetensors::{Dtype, tensor::TensorView};

use crate::inspect::read_message;

#[derive(clap::Args)]
#[command(after_help = "Writes OUT with one tensor `bits` (u8, each 0 or 1, shape [N, C, H, W] — [1, C, H, W] for one \
image) and the header in the file's metadata: cut, front_hash, mechanism, epsilon (absent for none), encoding, source.\n\
The file is fully validated first (checksum, header fields, payload); a malformed file is an error.\n\n\
Example:\n  mistnet-cloud decode features/bus.mnf --out bus_bits.safetensors")]
pub struct Args {
    /// A feature message in the MistNet wire format (docs/wire-format.md).
    file: PathBuf,
    /// The safetensors file to write (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let (decoded, _) = read_message(&args.file)?;
    let h = &decoded.header;
    let elements = decoded.bits.to_elements();
    let view = TensorView::new(Dtype::U8, h.shape.dims().to_vec(), &elements)?;
    let mut metadata = HashMap::from([
        ("cut".to_string(), h.cut.to_string()),
        ("front_hash".to_string(), h.front_hash.to_string()),
        ("mechanism".to_string(), h.privacy.mechanism().to_string()),
        ("encoding".to_string(), h.encoding.to_string()),
        ("source".to_string(), args.file.display().to_string()),
    ]);
    if let Some(e) = h.privacy.epsilon() {
        metadata.insert("epsilon".to_string(), e.to_string());
    }
    let tmp = args.out.with_extension("safetensors.tmp");
    safetensors::serialize_to_file([("bits", view)], Some(metadata), &tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    tracing::info!(shape = ?h.shape.dims(), out = %args.out.display(), "decoded");
    Ok(())
}
