//! Model configs in the Ultralytics YOLOv5 YAML format, resolved into concrete layers.
//!
//! Mirrors `parse_model` of Ultralytics YOLOv5 7.0 (`models/yolo.py`): depth scaling
//! `n = max(round(n * depth_multiple), 1)` (Python's round-half-to-even), width scaling
//! `make_divisible(c * width_multiple, 8)`, argument name evaluation (`nc`, `anchors`, `None`),
//! and channel bookkeeping through `Concat` and `Detect`.

use std::path::Path;

use serde::Deserialize;
use serde_norway::Value;

use super::ModelError;

/// The embedded configs of the standard YOLOv5 sizes (v6.0/v7.0 architecture).
pub const EMBEDDED_CONFIGS: [(&str, &str); 5] = [
    ("yolov5n", include_str!("../../../models/yolov5n.yaml")),
    ("yolov5s", include_str!("../../../models/yolov5s.yaml")),
    ("yolov5m", include_str!("../../../models/yolov5m.yaml")),
    ("yolov5l", include_str!("../../../models/yolov5l.yaml")),
    ("yolov5x", include_str!("../../../models/yolov5x.yaml")),
];

/// The `from` index that names the input image (only layer 0 reads it).
pub const INPUT: usize = usize::MAX;

/// A model config as written in the YAML file.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    /// Number of classes.
    pub nc: usize,
    pub depth_multiple: f64,
    pub width_multiple: f64,
    /// Anchors per detection level in pixels: `[w0,h0, w1,h1, ...]`, or a count of anchors per level.
    pub anchors: Value,
    /// Input channels (3 unless given).
    #[serde(default = "default_ch")]
    pub ch: usize,
    pub backbone: Vec<Value>,
    pub head: Vec<Value>,
    /// Ultralytics allows another activation here; only SiLU (the default) is supported.
    #[serde(default)]
    pub activation: Option<String>,
}

fn default_ch() -> usize {
    3
}

/// One resolved layer of the network graph.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Position in the model (`model.{index}` in state dicts).
    pub index: usize,
    /// Absolute indices of the layers whose outputs feed this one.
    pub from: Vec<usize>,
    pub kind: LayerKind,
    /// Output channels.
    pub c_out: usize,
    /// Output stride relative to the input image (for `Detect`, the finest level's).
    pub stride: usize,
}

/// What a layer computes, with every size resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// Conv2d (no bias) → BatchNorm → SiLU.
    Conv { c1: usize, c2: usize, k: usize, s: usize, p: usize, g: usize },
    /// CSP bottleneck with three convolutions and `n` bottlenecks.
    C3 { c1: usize, c2: usize, n: usize, shortcut: bool },
    /// Spatial pyramid pooling, fast: three chained max-pools of size `k`.
    Sppf { c1: usize, c2: usize, k: usize },
    /// Nearest-neighbour upsampling by an integer factor.
    Upsample { scale: usize },
    /// Channel concatenation.
    Concat,
    /// Anchor-based detection head over several levels.
    Detect { nc: usize, anchors: Vec<Vec<(f32, f32)>>, ch: Vec<usize>, strides: Vec<usize> },
}

impl LayerKind {
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Conv { .. } => "Conv",
            LayerKind::C3 { .. } => "C3",
            LayerKind::Sppf { .. } => "SPPF",
            LayerKind::Upsample { .. } => "Upsample",
            LayerKind::Concat => "Concat",
            LayerKind::Detect { .. } => "Detect",
        }
    }
}

impl ModelConfig {
    /// Parses a config from YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ModelError> {
        serde_norway::from_str(text).map_err(|e| ModelError::Config(format!("invalid model YAML: {e}")))
    }

    /// Reads a config file, or one of the embedded names (`yolov5n` … `yolov5x`) when no such file exists.
    pub fn load(path_or_name: &str) -> Result<Self, ModelError> {
        let path = Path::new(path_or_name);
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ModelError::Config(format!("cannot read {}: {e}", path.display())))?;
            return Self::from_yaml(&text)
                .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())));
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(path_or_name);
        match EMBEDDED_CONFIGS.iter().find(|(name, _)| *name == stem) {
            Some((_, text)) => Self::from_yaml(text),
            None => Err(ModelError::Config(format!(
                "model config {path_or_name} not found (give a YAML file or one of yolov5n/s/m/l/x)"
            ))),
        }
    }

    /// Resolves the YAML into concrete layers, as Ultralytics `parse_model` does.
    pub fn layers(&self) -> Result<Vec<LayerSpec>, ModelError> {
        if let Some(act) = &self.activation
            && act != "nn.SiLU()" && act != "SiLU" {
                return Err(ModelError::Config(format!("activation {act} is not supported (only SiLU)")));
            }
        let anchors = self.anchor_pixels()?;
        let rows: Vec<&Value> = self.backbone.iter().chain(self.head.iter()).collect();
        let mut specs: Vec<LayerSpec> = Vec::with_capacity(rows.len());
        let mut chans: Vec<usize> = Vec::with_capacity(rows.len());
        let mut strides: Vec<usize> = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let err = |msg: String| ModelError::Config(format!("layer {i}: {msg}"));
            let row = row.as_sequence().filter(|r| r.len() == 4).ok_or_else(|| {
                err("each layer must be [from, number, module, args]".into())
            })?;
            let from = parse_from(&row[0], i).map_err(err)?;
            let number = row[1].as_u64().filter(|&n| n >= 1).ok_or_else(|| err("number must be a positive integer".into()))?;
            let module = row[2].as_str().ok_or_else(|| err("module must be a name".into()))?;
            let args = row[3].as_sequence().ok_or_else(|| err("args must be a list".into()))?;
            let n = if number > 1 { ((number as f64 * self.depth_multiple).round_ties_even() as usize).max(1) } else { 1 };
            let c_in = |j: usize| if j == INPUT { self.ch } else { chans[j] };
            let stride_of = |j: usize| if j == INPUT { 1 } else { strides[j] };
            let first = from[0];
            let (kind, c_out, stride) = match module {
                "Conv" => {
                    let c2 = self.width(arg_usize(args, 0, None).map_err(err)?);
                    let k = arg_usize(args, 1, Some(1)).map_err(err)?;
                    let s = arg_usize(args, 2, Some(1)).map_err(err)?;
                    let p = match args.get(3) {
                        None => k / 2,
                        Some(v) if is_none(v) => k / 2,
                        Some(_) => arg_usize(args, 3, None).map_err(err)?,
                    };
                    let g = arg_usize(args, 4, Some(1)).map_err(err)?;
                    if args.len() > 5 && arg_usize(args, 5, Some(1)).map_err(err)? != 1 {
                        return Err(err("dilated Conv is not supported".into()));
                    }
                    if n != 1 {
                        return Err(err("repeated Conv (number > 1) is not supported".into()));
                    }
                    (LayerKind::Conv { c1: c_in(first), c2, k, s, p, g }, c2, stride_of(first) * s)
                }
                "C3" => {
                    let c2 = self.width(arg_usize(args, 0, None).map_err(err)?);
                    let shortcut = match args.get(1) {
                        None => true,
                        Some(v) => v.as_bool().ok_or_else(|| err("C3 shortcut must be true/false".into()))?,
                    };
                    (LayerKind::C3 { c1: c_in(first), c2, n, shortcut }, c2, stride_of(first))
                }
                "SPPF" => {
                    let c2 = self.width(arg_usize(args, 0, None).map_err(err)?);
                    let k = arg_usize(args, 1, Some(5)).map_err(err)?;
                    (LayerKind::Sppf { c1: c_in(first), c2, k }, c2, stride_of(first))
                }
                "nn.Upsample" | "Upsample" => {
                    let scale = arg_usize(args, 1, None).map_err(err)?;
                    if let Some(mode) = args.get(2).and_then(|v| v.as_str())
                        && mode != "nearest" {
                            return Err(err(format!("upsample mode {mode} is not supported (only nearest)")));
                        }
                    if scale == 0 || stride_of(first) % scale != 0 {
                        return Err(err(format!("upsample scale {scale} does not divide the stride {}", stride_of(first))));
                    }
                    (LayerKind::Upsample { scale }, c_in(first), stride_of(first) / scale)
                }
                "Concat" => {
                    let dim = args.first().and_then(|v| v.as_i64()).unwrap_or(1);
                    if dim != 1 {
                        return Err(err("Concat is only supported over channels (dim 1)".into()));
                    }
                    let s = stride_of(first);
                    if let Some(&j) = from.iter().find(|&&j| stride_of(j) != s) {
                        return Err(err(format!("Concat of layers with different strides ({s} and {})", stride_of(j))));
                    }
                    (LayerKind::Concat, from.iter().map(|&j| c_in(j)).sum(), s)
                }
                "Detect" => {
                    if anchors.len() != from.len() {
                        return Err(err(format!("{} anchor levels for {} Detect inputs", anchors.len(), from.len())));
                    }
                    let ch: Vec<usize> = from.iter().map(|&j| c_in(j)).collect();
                    let level_strides: Vec<usize> = from.iter().map(|&j| stride_of(j)).collect();
                    let kind = LayerKind::Detect { nc: self.nc, anchors: anchors.clone(), ch, strides: level_strides.clone() };
                    (kind, 0, level_strides[0])
                }
                other => {
                    return Err(err(format!(
                        "module {other} is not supported (supported: Conv, C3, SPPF, nn.Upsample, Concat, Detect)"
                    )));
                }
            };
            if !matches!(kind, LayerKind::Concat | LayerKind::Detect { .. }) && from.len() != 1 {
                return Err(err(format!("{module} takes exactly one input")));
            }
            specs.push(LayerSpec { index: i, from, kind, c_out, stride });
            chans.push(c_out);
            strides.push(stride);
        }
        match specs.last() {
            Some(LayerSpec { kind: LayerKind::Detect { .. }, .. }) => {}
            _ => return Err(ModelError::Config("the last layer must be Detect".into())),
        }
        if specs[..specs.len() - 1].iter().any(|s| matches!(s.kind, LayerKind::Detect { .. })) {
            return Err(ModelError::Config("Detect may only be the last layer".into()));
        }
        Ok(specs)
    }

    fn width(&self, c: usize) -> usize {
        make_divisible(c as f64 * self.width_multiple, 8)
    }

    /// Anchors in pixels, per level: `[(w, h); na]`.
    fn anchor_pixels(&self) -> Result<Vec<Vec<(f32, f32)>>, ModelError> {
        let err = |m: &str| ModelError::Config(format!("anchors: {m}"));
        let levels = self.anchors.as_sequence().ok_or_else(|| err("must be a list of levels"))?;
        let mut out = Vec::with_capacity(levels.len());
        for level in levels {
            let vals: Vec<f32> = level
                .as_sequence()
                .ok_or_else(|| err("each level must be a list of numbers"))?
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| err("anchor values must be numbers")))
                .collect::<Result<_, _>>()?;
            if vals.is_empty() || !vals.len().is_multiple_of(2) {
                return Err(err("each level needs pairs of width, height"));
            }
            if vals.iter().any(|v| !v.is_finite() || *v <= 0.0) {
                return Err(err("anchor sizes must be positive"));
            }
            out.push(vals.chunks(2).map(|p| (p[0], p[1])).collect::<Vec<_>>());
        }
        let na = out.first().map(|l| l.len()).ok_or_else(|| err("no levels"))?;
        if out.iter().any(|l| l.len() != na) {
            return Err(err("every level needs the same number of anchors"));
        }
        Ok(out)
    }
}

/// `math.ceil(x / divisor) * divisor`, as Ultralytics `make_divisible`.
fn make_divisible(x: f64, divisor: usize) -> usize {
    ((x / divisor as f64).ceil() as usize) * divisor
}

fn is_none(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("None")
}

fn parse_from(v: &Value, i: usize) -> Result<Vec<usize>, String> {
    let raw: Vec<i64> = match v {
        Value::Number(n) => vec![n.as_i64().ok_or("from must be an integer")?],
        Value::Sequence(s) => s.iter().map(|x| x.as_i64().ok_or("from must hold integers")).collect::<Result<_, _>>()?,
        _ => return Err("from must be an integer or a list of integers".into()),
    };
    if raw.is_empty() {
        return Err("from is empty".into());
    }
    raw.into_iter()
        .map(|f| {
            let abs = if f < 0 { i as i64 + f } else { f };
            if i == 0 && f == -1 {
                return Ok(INPUT);
            }
            if abs < 0 || abs >= i as i64 {
                Err(format!("from {f} does not name an earlier layer"))
            } else {
                Ok(abs as usize)
            }
        })
        .collect()
}

fn arg_usize(args: &[Value], idx: usize, default: Option<usize>) -> Result<usize, String> {
    match (args.get(idx), default) {
        (Some(v), _) if v.as_u64().is_some() => Ok(v.as_u64().unwrap() as usize),
        (Some(v), Some(d)) if is_none(v) => Ok(d),
        (None, Some(d)) => Ok(d),
        (Some(v), _) => Err(format!("argument {idx} must be a non-negative integer, got {v:?}")),
        (None, None) => Err(format!("argument {idx} is missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ParamStore, Yolo, batch_norm::BatchNormConfig};
    use candle_core::Device;

    /// Parameter counts Ultralytics prints for its model summaries (80 classes; BN affine
    /// parameters included, running statistics and anchors not).
    #[test]
    fn parameter_counts_match_ultralytics() {
        for (name, expected) in [
            ("yolov5n", 1_872_157),
            ("yolov5s", 7_235_389),
            ("yolov5m", 21_190_557),
            ("yolov5l", 46_563_709),
            ("yolov5x", 86_749_405),
        ] {
            let specs = ModelConfig::load(name).unwrap().layers().unwrap();
            let store = ParamStore::fresh(0);
            Yolo::load(store.var_builder(&Device::Cpu), &specs, 0, BatchNormConfig::default()).unwrap();
            let n: usize = store.trainable().iter().map(|(_, v)| v.elem_count()).sum();
            assert_eq!(n, expected, "{name}");
        }
    }

    #[test]
    fn yolov5s_shapes_and_strides() {
        let specs = ModelConfig::load("yolov5s").unwrap().layers().unwrap();
        assert_eq!(specs.len(), 25);
        assert_eq!(specs[0].kind, LayerKind::Conv { c1: 3, c2: 32, k: 6, s: 2, p: 2, g: 1 });
        assert_eq!((specs[3].c_out, specs[3].stride), (128, 8)); // cut 4 at 640: [128, 80, 80]
        assert_eq!(specs[4].kind, LayerKind::C3 { c1: 128, c2: 128, n: 2, shortcut: true });
        assert_eq!(specs[6].kind, LayerKind::C3 { c1: 256, c2: 256, n: 3, shortcut: true });
        assert_eq!(specs[13].kind, LayerKind::C3 { c1: 512, c2: 256, n: 1, shortcut: false });
        match &specs[24].kind {
            LayerKind::Detect { ch, strides, .. } => {
                assert_eq!(ch, &vec![128, 256, 512]);
                assert_eq!(strides, &vec![8, 16, 32]);
            }
            k => panic!("last layer is {k:?}"),
        }
    }

    #[test]
    fn bad_configs_get_clear_errors() {
        let base = include_str!("../../../models/yolov5n.yaml");
        let unknown = base.replace("SPPF, [1024, 5]", "Focus, [1024, 5]");
        let e = ModelConfig::from_yaml(&unknown).unwrap().layers().unwrap_err().to_string();
        assert!(e.contains("layer 9") && e.contains("Focus"), "{e}");
        let forward_ref = base.replace("[[-1, 6], 1, Concat, [1]]", "[[-1, 16], 1, Concat, [1]]");
        let e = ModelConfig::from_yaml(&forward_ref).unwrap().layers().unwrap_err().to_string();
        assert!(e.contains("layer 12") && e.contains("earlier layer"), "{e}");
        assert!(ModelConfig::from_yaml("nc: [").is_err());
        assert!(ModelConfig::load("no-such-model").unwrap_err().to_string().contains("not found"));
    }
}
