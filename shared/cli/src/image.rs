//! `--imgsz`: the letterbox size, checked once for every command.

use crate::argv::{Argv, ToArgs};

/// The letterbox size every command defaults to (YOLOv5's).
pub const DEFAULT_IMGSZ: u32 = 640;

#[derive(clap::Args, Debug, Clone, Copy, PartialEq)]
pub struct ImageSizeArgs {
    /// Letterbox size in pixels (square; a positive multiple of 32).
    #[arg(id = "imgsz", long = "imgsz", value_name = "PX", default_value_t = DEFAULT_IMGSZ, value_parser = parse_imgsz)]
    pub px: u32,
}

impl ToArgs for ImageSizeArgs {
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        Argv::new().arg("--imgsz", self.px.to_string()).build()
    }
}

/// An image size, or why it is not one: a positive multiple of 32 (the largest stride of YOLOv5).
pub fn check_imgsz(px: u32) -> Result<u32, String> {
    if px == 0 || !px.is_multiple_of(32) {
        return Err(format!("--imgsz must be a positive multiple of 32, got {px}"));
    }
    Ok(px)
}

/// The value parser of `--imgsz` (also for commands whose size defaults to a model's own).
pub fn parse_imgsz(s: &str) -> Result<u32, String> {
    check_imgsz(s.parse::<u32>().map_err(|e| format!("--imgsz must be a number of pixels: {e}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::reparse;

    #[test]
    fn sizes_are_positive_multiples_of_32_and_parse_back() {
        assert_eq!(parse_imgsz("128"), Ok(128));
        for bad in ["0", "100", "-32", "x"] {
            assert!(parse_imgsz(bad).is_err(), "{bad}");
        }
        assert!(parse_imgsz("100").unwrap_err().contains("multiple of 32"));
        let a = ImageSizeArgs { px: 320 };
        assert_eq!(reparse(&a).unwrap(), a);
    }
}
