//! Compute of a forward pass counted from the layer shapes: the multiply-accumulates (MACs) of
//! every convolution, as Ultralytics' model summary counts them (thop over the convolutions;
//! its "GFLOPs" are 2 × MACs). BatchNorm (folded at inference), SiLU, pooling, upsampling and
//! concatenation are elementwise and left out, as in that count.

use std::ops::Range;

use super::config::{LayerKind, LayerSpec};
use super::yolo::run_graph;

/// `[C, H, W]` of a layer's output (the Detect head's is a placeholder).
type Shape = [usize; 3];

/// Multiply-accumulates of one image through layers `layers` of `specs`, for a square
/// `imgsz` × `imgsz` input. `0..cut` is the Front; `0..specs.len()` the whole model.
pub fn forward_macs(specs: &[LayerSpec], imgsz: usize, layers: Range<usize>) -> Result<u64, candle_core::Error> {
    let mut macs = vec![0u64; specs.len()];
    run_graph(specs, 0, [3, imgsz, imgsz], false, |i, xs: &[&Shape]| {
        let [c, h, w] = *xs[0];
        let (out, m) = match &specs[i].kind {
            &LayerKind::Conv { c1, c2, k, s, p, g } => {
                let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
                ([c2, ho, wo], conv(c1 / g, c2, k, ho * wo))
            }
            &LayerKind::C3 { c1, c2, n, .. } => {
                let hidden = c2 / 2;
                let bottleneck = conv(hidden, hidden, 1, h * w) + conv(hidden, hidden, 3, h * w);
                ([c2, h, w], 2 * conv(c1, hidden, 1, h * w) + n as u64 * bottleneck + conv(2 * hidden, c2, 1, h * w))
            }
            &LayerKind::Sppf { c1, c2, .. } => ([c2, h, w], conv(c1, c1 / 2, 1, h * w) + conv(4 * (c1 / 2), c2, 1, h * w)),
            &LayerKind::Upsample { scale } => ([c, h * scale, w * scale], 0),
            LayerKind::Concat => ([xs.iter().map(|s| s[0]).sum(), h, w], 0),
            LayerKind::Detect { nc, anchors, .. } => {
                let no = anchors.first().map_or(0, Vec::len) * (nc + 5);
                ([0, 0, 0], xs.iter().map(|s| conv(s[0], no, 1, s[1] * s[2])).sum())
            }
        };
        macs[i] = m;
        Ok(out)
    })?;
    Ok(macs[layers].iter().sum())
}

/// MACs of a convolution from `c1` (per group) to `c2` channels with a `k`×`k` kernel over `pixels` outputs.
fn conv(c1: usize, c2: usize, k: usize, pixels: usize) -> u64 {
    (c1 * c2 * k * k * pixels) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::deploy::{model_yaml, specs_for};

    /// Ultralytics' fused model summaries (YOLOv5 7.0, 640 px, 80 classes): yolov5n 4.5 GFLOPs,
    /// yolov5s 16.5 (`python models/yolo.py --cfg yolov5{n,s}.yaml`; GFLOPs = 2 × MACs).
    #[test]
    fn whole_model_gflops_match_ultralytics_summaries() {
        for (name, gflops) in [("yolov5n", 4.5), ("yolov5s", 16.5)] {
            let specs = specs_for(&model_yaml(name).unwrap(), 80).unwrap();
            let ours = 2.0 * forward_macs(&specs, 640, 0..specs.len()).unwrap() as f64 / 1e9;
            assert!((ours - gflops).abs() / gflops < 0.02, "{name}: {ours:.3} GFLOPs, Ultralytics {gflops}");
        }
    }

    #[test]
    fn a_front_is_its_layers_and_compute_scales_with_pixels() {
        let specs = specs_for(&model_yaml("yolov5n").unwrap(), 5).unwrap();
        // The stem of yolov5n: Conv 3→16, k6 s2 p2, on 128 px gives 64×64 outputs.
        assert_eq!(forward_macs(&specs, 128, 0..1).unwrap(), (3 * 16 * 36 * 64 * 64) as u64);
        let front = forward_macs(&specs, 128, 0..4).unwrap();
        let whole = forward_macs(&specs, 128, 0..specs.len()).unwrap();
        assert_eq!(front + forward_macs(&specs, 128, 4..specs.len()).unwrap(), whole);
        assert!(front < whole / 2, "{front} of {whole}");
        assert_eq!(forward_macs(&specs, 256, 0..specs.len()).unwrap(), 4 * whole);
    }
}
