//! Ground-truth boxes and YOLOv5's target assignment (`ComputeLoss.build_targets`).
//!
//! Per level, a target is tried against each anchor and kept where both its width and height
//! ratios to the anchor (and their inverses) are below `anchor_t`. Each kept target is assigned
//! to the grid cell holding its centre and to the two neighbouring cells nearest to the centre
//! (left/up when the centre lies in the cell's first half, right/down otherwise; never beyond
//! the border), so the network's `2σ − 0.5` offsets in (−0.5, 1.5) can reach it.
//! Arithmetic is in f32 exactly as the PyTorch code does it, so borderline cases agree.

use candle_core::{DType, Tensor};

use super::TrainError;

/// One ground-truth box: image index in the batch, class, and centre/size normalised to 0..1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub image: usize,
    pub class: usize,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl Target {
    /// Reads YOLOv5's target rows `[nt, 6]` = (image, class, x, y, w, h).
    pub fn from_rows(rows: &Tensor) -> Result<Vec<Self>, TrainError> {
        let (_, cols) = rows.dims2().map_err(|_| TrainError::Target { index: 0, reason: format!("target rows must be [n, 6], got {:?}", rows.dims()) })?;
        if cols != 6 {
            return Err(TrainError::Target { index: 0, reason: format!("target rows must have 6 columns (image, class, x, y, w, h), got {cols}") });
        }
        let index_of = |i: usize, v: f32, what: &str| {
            if v >= 0.0 && v.fract() == 0.0 {
                Ok(v as usize)
            } else {
                Err(TrainError::Target { index: i, reason: format!("{what} must be a non-negative integer, got {v}") })
            }
        };
        rows.to_dtype(DType::F32)?
            .to_vec2::<f32>()?
            .into_iter()
            .enumerate()
            .map(|(i, r)| Ok(Self { image: index_of(i, r[0], "image index")?, class: index_of(i, r[1], "class")?, x: r[2], y: r[3], w: r[4], h: r[5] }))
            .collect()
    }

    /// Checks the target against a batch of `bs` images and `nc` classes.
    pub fn validate(&self, index: usize, bs: usize, nc: usize) -> Result<(), TrainError> {
        let bad = |reason: String| Err(TrainError::Target { index, reason });
        if self.image >= bs {
            return bad(format!("image index {} is outside the batch of {bs}", self.image));
        }
        if self.class >= nc {
            return bad(format!("class {} is outside 0..{nc}", self.class));
        }
        let inside = |v: f32| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(inside(self.x) && inside(self.y)) {
            return bad(format!("centre ({}, {}) is not inside the image (normalised 0..1)", self.x, self.y));
        }
        if !(self.w.is_finite() && self.h.is_finite() && self.w > 0.0 && self.h > 0.0 && self.w <= 1.0 && self.h <= 1.0) {
            return bad(format!("size {} × {} must be in (0, 1]", self.w, self.h));
        }
        Ok(())
    }
}

/// One target assigned to one cell of one anchor at one level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment {
    pub image: usize,
    pub anchor: usize,
    pub gj: usize,
    pub gi: usize,
    pub class: usize,
    /// Target box in grid units relative to the cell's corner: (x, y, w, h).
    pub tbox: [f32; 4],
    /// The anchor's size in grid units.
    pub anchor_wh: [f32; 2],
}

/// The neighbour offsets YOLOv5 tries, in its order: the cell itself, then x−, y−, x+, y+ (as
/// subtracted from the centre).
const OFFSETS: [[f32; 2]; 5] = [[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.5, 0.0], [0.0, -0.5]];
const G: f32 = 0.5;

/// Assigns (validated) targets at one level with grid `ny × nx` and `anchors` (grid units).
/// The order is YOLOv5's (offset, anchor, target), which decides which value wins where two
/// assignments write the same objectness cell.
pub fn assign(targets: &[Target], anchors: &[[f32; 2]], ny: usize, nx: usize, anchor_t: f32) -> Vec<Assignment> {
    let (gx_gain, gy_gain) = (nx as f32, ny as f32);
    let mut matched = Vec::new();
    for (a, anchor) in anchors.iter().enumerate() {
        for t in targets {
            let (gw, gh) = (t.w * gx_gain, t.h * gy_gain);
            let (rw, rh) = (gw / anchor[0], gh / anchor[1]);
            if rw.max(1.0 / rw).max(rh.max(1.0 / rh)) < anchor_t {
                matched.push((a, t, [t.x * gx_gain, t.y * gy_gain], [gw, gh]));
            }
        }
    }
    let mut out = Vec::new();
    for (o, off) in OFFSETS.iter().enumerate() {
        for &(a, t, gxy, gwh) in &matched {
            let gxi = [gx_gain - gxy[0], gy_gain - gxy[1]];
            let near = |v: f32| v.rem_euclid(1.0) < G && v > 1.0;
            let use_it = match o {
                0 => true,
                1 => near(gxy[0]),
                2 => near(gxy[1]),
                3 => near(gxi[0]),
                _ => near(gxi[1]),
            };
            if !use_it {
                continue;
            }
            // `.long()` truncates towards zero; the clamp also changes the cell the box is
            // measured from, as YOLOv5's in-place `clamp_` on `gij` does.
            let gi = ((gxy[0] - off[0]).trunc() as i64).clamp(0, nx as i64 - 1);
            let gj = ((gxy[1] - off[1]).trunc() as i64).clamp(0, ny as i64 - 1);
            out.push(Assignment {
                image: t.image,
                anchor: a,
                gj: gj as usize,
                gi: gi as usize,
                class: t.class,
                tbox: [gxy[0] - gi as f32, gxy[1] - gj as f32, gwh[0], gwh[1]],
                anchor_wh: anchors[a],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(x: f32, y: f32, w: f32, h: f32) -> Target {
        Target { image: 0, class: 3, x, y, w, h }
    }

    #[test]
    fn a_centre_gets_its_cell_and_the_two_nearest_neighbours() {
        // 8×8 grid, centre at (2.25, 5.75): left neighbour (x−) and lower neighbour (y+).
        let a = assign(&[target(2.25 / 8.0, 5.75 / 8.0, 0.25, 0.25)], &[[2.0, 2.0]], 8, 8, 4.0);
        let cells: Vec<_> = a.iter().map(|a| (a.gi, a.gj)).collect();
        assert_eq!(cells, vec![(2, 5), (1, 5), (2, 6)]);
        assert_eq!(a[1].tbox[..2], [1.25, 0.75]);
        assert_eq!(a[2].tbox[..2], [0.25, -0.25]);
    }

    #[test]
    fn anchor_ratio_threshold_filters_anchors() {
        // Box 2×2 cells: anchor 0.4 (ratio 5) rejected, anchor 1 (ratio 2) and 7.9 (3.95) kept.
        let a = assign(&[target(0.5, 0.5, 0.25, 0.25)], &[[0.4, 0.4], [1.0, 1.0], [7.9, 7.9]], 8, 8, 4.0);
        // The centre (4, 4) lies exactly on a cell corner: all four neighbours are used.
        let anchors: Vec<_> = a.iter().map(|a| a.anchor).collect();
        assert_eq!(anchors, [1, 2].repeat(5));
    }

    #[test]
    fn cells_at_the_border_do_not_leave_the_grid() {
        // Centres in the first cell get no x−/y− neighbour (needs gxy > 1); the last cell's
        // far neighbour would need gxi > 1 too.
        let a = assign(&[target(0.01, 0.99, 0.2, 0.2)], &[[1.6, 1.6]], 8, 8, 4.0);
        assert!(a.iter().all(|a| a.gi < 8 && a.gj < 8), "{a:?}");
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn bad_rows_name_the_row_and_field() {
        let t = Target { image: 2, ..target(0.5, 0.5, 0.1, 0.1) };
        assert!(t.validate(7, 2, 80).unwrap_err().to_string().contains("target 7: image index 2"));
        let t = Target { class: 80, ..target(0.5, 0.5, 0.1, 0.1) };
        assert!(t.validate(0, 1, 80).unwrap_err().to_string().contains("class 80"));
        assert!(target(0.5, 0.5, 0.0, 0.1).validate(0, 1, 80).is_err());
        assert!(target(1.5, 0.5, 0.1, 0.1).validate(0, 1, 80).is_err());
        let rows = Tensor::new(&[[0.0f32, 1.5, 0.5, 0.5, 0.1, 0.1]], &candle_core::Device::Cpu).unwrap();
        assert!(Target::from_rows(&rows).unwrap_err().to_string().contains("class must be"));
    }
}
