//! PNG line plots (training curves, privacy against ε), drawn with plotters and an embedded font
//! (DejaVu Sans, `assets/DejaVuSans.LICENSE`), so no system font library is needed.

use std::path::Path;
use std::sync::Once;

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
        // Headroom above the highest point for the legend, drawn in the upper left: the curves
        // plotted here (per epoch) rise to the right.
        let (y0, y1) = pad(y0.min(0.0_f64.max(y0 - (y1 - y0) * 0.05)), y1, 0.25);
        // Whole-number x values (epochs) get whole-number tick labels.
        let whole_x = !log_x && self.series.iter().flat_map(|s| s.points.iter()).all(|(x, _)| x.fract() == 0.0);
        let x_tick = |x: &f64| {
            if log_x {
                si(10f64.powf(*x))
            } else if whole_x && x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x}")
            }
        };

        let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
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
                .map_err(|e| err(&e))?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
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
        if !self.series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
        Ok(())
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
