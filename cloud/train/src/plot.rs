//! PNG line plots (training curves, privacy against ε), drawn with plotters and an embedded font
//! (DejaVu Sans, `assets/DejaVuSans.LICENSE`), so no system font library is needed. The legend
//! sits right of the plot area, so it covers no curve; whole-number x values (epochs, rounds) get
//! ticks on whole numbers only.

use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

static FONT: Once = Once::new();

fn ensure_font() {
    FONT.call_once(|| {
        // The font is compiled in and valid; registration only fails on a malformed font.
        let _ = register_font("sans-serif", FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"));
    });
}

/// Errors from drawing or writing a plot.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw plot {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

/// One named curve.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line plot with optional horizontal reference lines.
#[derive(Debug, Clone, Default)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Horizontal lines `(y, label)`, drawn dashed.
    pub hlines: Vec<(f64, String)>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

impl LinePlot {
    /// Draws the plot into a `width × height` PNG at `path`.
    pub fn save_png(&self, path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
        self.draw(path, width, height, false)
    }

    /// [`LinePlot::save_png`] with a logarithmic x axis (bytes, say): points with x ≤ 0 are left
    /// out, ticks are labelled with the values in SI form (`340k`, `1.2M`).
    pub fn save_png_log_x(&self, path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
        let series = self
            .series
            .iter()
            .map(|s| Series { name: s.name.clone(), points: s.points.iter().filter(|(x, _)| *x > 0.0).map(|&(x, y)| (x.log10(), y)).collect() })
            .collect();
        LinePlot { series, ..self.clone() }.draw(path, width, height, true)
    }

    /// `log_x`: the x values are already log10 of what the ticks show.
    fn draw(&self, path: &Path, width: u32, height: u32, log_x: bool) -> Result<(), PlotError> {
        ensure_font();
        let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), message: e.to_string() };
        let points = self.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        for (y, _) in &self.hlines {
            (y0, y1) = (y0.min(*y), y1.max(*y));
        }
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let pad = |lo: f64, hi: f64, top: f64| if hi - lo < 1e-12 { (lo - 0.5, hi + 0.5) } else { (lo, hi + (hi - lo) * top) };
        let (x0, x1) = pad(x0, x1, 0.05);
        // On a log axis the leftmost point (often a lone one) would sit on the axis: room on that side too.
        let x0 = if log_x { x0 - (x1 - x0) * 0.05 } else { x0 };
        let (y0, y1) = pad(y0.min(0.0_f64.max(y0 - (y1 - y0) * 0.05)), y1, 0.05);
        // Whole-number x values (epochs) get ticks on whole numbers only.
        let whole_x = !log_x && self.series.iter().flat_map(|s| s.points.iter()).all(|(x, _)| x.fract() == 0.0);
        let x_tick = |x: &f64| {
            if log_x {
                si(10f64.powf(*x))
            } else if whole_x {
                format!("{x:.0}")
            } else {
                format!("{x}")
            }
        };

        let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let legend_width = if self.series.is_empty() { 0 } else { legend_width(self.series.iter().map(|s| s.name.as_str())).min(width / 3) };
        let (plot_area, legend_area) = root.split_horizontally(width - legend_width);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(Ticked { inner: (x0..x1).into(), ticks: ticks(x0, x1, whole_x) }, y0..y1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .x_label_formatter(&x_tick)
            .y_desc(&self.y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
        }
        for (y, label) in &self.hlines {
            let dashes: Vec<(f64, f64)> = (0..40)
                .filter(|k| k % 2 == 0)
                .flat_map(|k| [(x0 + (x1 - x0) * k as f64 / 40.0, *y), (x0 + (x1 - x0) * (k + 1) as f64 / 40.0, *y)])
                .collect();
            for seg in dashes.chunks(2) {
                chart.draw_series(LineSeries::new(seg.to_vec(), BLACK.stroke_width(1))).map_err(|e| err(&e))?;
            }
            chart
                .draw_series(std::iter::once(Text::new(label.clone(), (x0 + (x1 - x0) * 0.01, *y), ("sans-serif", 13))))
                .map_err(|e| err(&e))?;
        }
        // The legend, top-aligned with the plot area, right of it.
        let top = chart.plotting_area().get_pixel_range().1.start - plot_area.get_pixel_range().1.start;
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let y = top + 10 + LEGEND_ROW * i as i32;
            legend_area.draw(&PathElement::new(vec![(4, y), (24, y)], color.stroke_width(2))).map_err(|e| err(&e))?;
            legend_area.draw(&Text::new(s.name.clone(), (30, y - 8), ("sans-serif", 14))).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

/// An f64 axis with the given ticks (and no light mesh lines between them).
struct Ticked {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() { Vec::new() } else { self.ticks.clone() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// Pixel height of a legend row.
const LEGEND_ROW: i32 = 20;

/// Pixels the legend needs for these names: a 20 px line, a gap, the name (14 px DejaVu Sans, at
/// most 8.5 px a character), a margin.
fn legend_width<'a>(names: impl Iterator<Item = &'a str>) -> u32 {
    let chars = names.map(|n| n.chars().count()).max().unwrap_or(0);
    30 + (chars as u32 * 17).div_ceil(2) + 12
}

/// At most 10 ticks in `lo..=hi`: the multiples of the smallest step of 1, 2 or 5 × 10^k that
/// gives no more (a whole number when `whole`).
fn ticks(lo: f64, hi: f64, whole: bool) -> Vec<f64> {
    const MAX: f64 = 10.0;
    let count = |step: f64| (hi / step).floor() - (lo / step).ceil() + 1.0;
    let mut k = ((hi - lo).max(f64::MIN_POSITIVE) / MAX).log10().floor() as i32;
    loop {
        for m in [1.0, 2.0, 5.0] {
            let step = m * 10f64.powi(k);
            if (whole && step < 1.0) || count(step) > MAX {
                continue;
            }
            return ((lo / step).ceil() as i64..=(hi / step).floor() as i64).map(|i| i as f64 * step).collect();
        }
        k += 1;
    }
}

/// `v` with an SI prefix and two significant digits or so: 950, 34k, 1.2M, 7.1G.
fn si(v: f64) -> String {
    let (scaled, prefix) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")].into_iter().find(|(s, _)| v >= *s).map_or((v, ""), |(s, p)| (v / s, p));
    if scaled >= 10.0 { format!("{scaled:.0}{prefix}") } else { format!("{scaled:.1}{prefix}") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_of_epochs_are_whole_numbers() {
        assert_eq!(super::ticks(0.5, 3.1, true), [1.0, 2.0, 3.0]);
        assert_eq!(super::ticks(1.0, 20.95, true), [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0]);
        assert_eq!(super::ticks(0.0, 100.0, true), [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let fine = super::ticks(0.0, 0.46, false);
        assert_eq!(fine.len(), 10);
        assert!(fine.iter().enumerate().all(|(i, t)| (t - 0.05 * i as f64).abs() < 1e-12), "{fine:?}");
        for (lo, hi) in [(0.5, 1.5), (1.0, 2.05), (3.0, 47.3), (0.0, 1e6)] {
            let t = super::ticks(lo, hi, true);
            assert!(!t.is_empty() && t.len() <= 10 && t.iter().all(|x| x.fract() == 0.0 && *x >= lo && *x <= hi), "{lo}..{hi}: {t:?}");
        }
    }

    #[test]
    fn the_legend_covers_no_curve() {
        // Falling curves start in the upper left, where a legend inside the plot would sit.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let falling = |name: &str, top: f64| super::Series { name: name.into(), points: (1..=5).map(|e| (e as f64, top / e as f64)).collect() };
        let plot = super::LinePlot {
            title: "loss".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            series: vec![falling("box", 1.0), falling("objectness loss", 0.9), falling("cls", 0.8)],
            hlines: vec![],
        };
        plot.save_png(&path, 640, 400).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let legend_x = 640 - super::legend_width(plot.series.iter().map(|s| s.name.as_str()));
        let has = |rgb: [u8; 3], xs: std::ops::Range<u32>, ys: std::ops::Range<u32>| xs.clone().any(|x| ys.clone().any(|y| img.get_pixel(x, y).0 == rgb));
        for rgb in [[31, 119, 180], [255, 127, 14], [44, 160, 44]] {
            // Each curve is drawn, unhidden, at its start (the upper left of the plot), and has its legend line.
            assert!(has(rgb, 60..200, 0..150), "{rgb:?} at the start of its curve");
            assert!(has(rgb, legend_x..640, 0..400), "{rgb:?} in the legend");
        }
    }

    #[test]
    fn si_labels() {
        assert_eq!([950.0, 34_000.0, 1.25e6, 7.1e9].map(super::si), ["950", "34k", "1.2M", "7.1G"]);
    }

    #[test]
    fn a_log_x_plot_draws_its_positive_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.png");
        let plot = LinePlot {
            title: "mAP against bytes".into(),
            x_label: "bytes".into(),
            y_label: "mAP".into(),
            series: vec![Series { name: "a".into(), points: vec![(0.0, 0.1), (1e5, 0.2), (1e8, 0.6)] }],
            hlines: vec![(0.5, "line".into())],
        };
        plot.save_png_log_x(&path, 640, 400).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
    }

    use super::*;

    #[test]
    fn writes_a_png_with_curves_and_a_reference_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        let plot = LinePlot {
            title: "SSIM against ε".into(),
            x_label: "ε".into(),
            y_label: "SSIM".into(),
            series: vec![Series { name: "sue".into(), points: vec![(0.5, 0.1), (1.0, 0.2), (8.0, 0.6)] }],
            hlines: vec![(0.3, "0.3: unrecognisable".into())],
        };
        plot.save_png(&path, 640, 400).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (640, 400));
        // The curve's colour is present: something was drawn, not just a blank canvas.
        assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
    }
}
