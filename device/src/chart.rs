//! Small PNG charts (training curves, people per hour) drawn with [`crate::draw`].

use image::{Rgb, RgbImage};

use crate::draw::{self, BLACK, Font, GREY, WHITE};

pub const PALETTE: [Rgb<u8>; 8] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
];

pub struct Series {
    pub name: String,
    pub color: Rgb<u8>,
    pub values: Vec<f64>,
}

const MARGIN_LEFT: i32 = 56;
const MARGIN_RIGHT: i32 = 12;
const MARGIN_BOTTOM: i32 = 44;
/// The title's top edge; the legend's rows start under it, the plot under them.
const TITLE_TOP: i32 = 8;
const LEGEND_ROW: i32 = 14;
const LEGEND_GAP: i32 = 12;
const SWATCH: i32 = 10;

/// Where a piece of text landed on a chart. Every label goes through [`Canvas::text`], so a
/// test can check that none runs off the picture or over another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextBox {
    pub text: String,
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl TextBox {
    pub fn overlaps(&self, other: &TextBox) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }

    pub fn inside(&self, width: u32, height: u32) -> bool {
        self.x >= 0 && self.y >= 0 && self.x + self.w <= width as i32 && self.y + self.h <= height as i32
    }
}

/// A chart being drawn, and the text boxes drawn on it.
pub struct Canvas {
    pub image: RgbImage,
    pub text_boxes: Vec<TextBox>,
}

impl Canvas {
    fn text(&mut self, x: i32, y: i32, s: &str, color: Rgb<u8>, font: Font) {
        draw::text(&mut self.image, x, y, s, color, font);
        let h = font.char_size().1 as i32;
        self.text_boxes.push(TextBox { text: s.to_string(), x, y, w: font.text_width(s) as i32, h });
    }
}

/// One legend entry: a swatch and the series' name.
fn legend_entry_width(name: &str) -> i32 {
    SWATCH + 3 + Font::Small.text_width(name) as i32
}

/// Top-left corners of the legend's entries, in rows under the title from the left margin
/// (wrapped within the width), and the y where the rows end.
fn legend_layout(series: &[Series], width: u32) -> (Vec<(i32, i32)>, i32) {
    let first_row = TITLE_TOP + Font::Large.char_size().1 as i32 + 6;
    let right = width as i32 - MARGIN_RIGHT;
    let (mut x, mut y) = (MARGIN_LEFT, first_row);
    let mut corners = Vec::with_capacity(series.len());
    for s in series {
        let w = legend_entry_width(&s.name);
        if x > MARGIN_LEFT && x + w > right {
            (x, y) = (MARGIN_LEFT, y + LEGEND_ROW);
        }
        corners.push((x, y));
        x += w + LEGEND_GAP;
    }
    let end = if series.is_empty() { first_row } else { y + LEGEND_ROW };
    (corners, end)
}

fn legend(canvas: &mut Canvas, series: &[Series]) {
    let (corners, _) = legend_layout(series, canvas.image.width());
    for (s, (x, y)) in series.iter().zip(corners) {
        draw::fill_rect(&mut canvas.image, x, y + 1, SWATCH as u32, 8, s.color);
        canvas.text(x + SWATCH + 3, y, &s.name, BLACK, Font::Small);
    }
}

/// Rounded tick step giving about `target` ticks over `span`.
fn tick_step(span: f64, target: usize) -> f64 {
    let raw = (span / target as f64).max(1e-12);
    let magnitude = 10f64.powf(raw.log10().floor());
    let residual = raw / magnitude;
    let nice = if residual < 1.5 {
        1.0
    } else if residual < 3.0 {
        2.0
    } else if residual < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn format_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else if step >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

struct Frame {
    width: u32,
    height: u32,
    /// Top of the plot area: under the title and the legend.
    top: i32,
    y_min: f64,
    y_max: f64,
}

impl Frame {
    fn new(width: u32, height: u32, series: &[Series], (y_min, y_max): (f64, f64)) -> Frame {
        // The highest tick label sits 5 px above its grid line: room for it under the legend.
        let top = legend_layout(series, width).1 + 8;
        Frame { width, height, top, y_min, y_max }
    }
    fn plot_w(&self) -> f64 {
        (self.width as i32 - MARGIN_LEFT - MARGIN_RIGHT) as f64
    }
    fn plot_h(&self) -> f64 {
        (self.height as i32 - self.top - MARGIN_BOTTOM).max(1) as f64
    }
    fn y(&self, v: f64) -> i32 {
        let t = (v - self.y_min) / (self.y_max - self.y_min).max(1e-12);
        (self.top as f64 + self.plot_h() * (1.0 - t)).round() as i32
    }

    /// Background, title, y grid with labels, axis names.
    fn draw_axes(&self, title: &str, x_label: &str) -> Canvas {
        let image = RgbImage::from_pixel(self.width, self.height, WHITE);
        let mut c = Canvas { image, text_boxes: Vec::new() };
        c.text(MARGIN_LEFT, TITLE_TOP, title, BLACK, Font::Large);
        // Ticks at least two label heights apart, so their labels never touch.
        let most_ticks = (self.plot_h() / 24.0).floor().clamp(1.0, 5.0) as usize;
        let step = tick_step(self.y_max - self.y_min, most_ticks);
        let mut v = (self.y_min / step).ceil() * step;
        while v <= self.y_max + 1e-9 {
            let y = self.y(v);
            draw::line(
                &mut c.image,
                (MARGIN_LEFT, y),
                (self.width as i32 - MARGIN_RIGHT, y),
                Rgb([225, 225, 225]),
                1,
            );
            let s = format_tick(v, step);
            c.text(MARGIN_LEFT - 4 - Font::Small.text_width(&s) as i32, y - 5, &s, BLACK, Font::Small);
            v += step;
        }
        let bottom = self.height as i32 - MARGIN_BOTTOM;
        draw::line(&mut c.image, (MARGIN_LEFT, self.top), (MARGIN_LEFT, bottom), GREY, 1);
        draw::line(&mut c.image, (MARGIN_LEFT, bottom), (self.width as i32 - MARGIN_RIGHT, bottom), GREY, 1);
        let xl = x_label;
        c.text(
            MARGIN_LEFT + (self.plot_w() as i32 - Font::Small.text_width(xl) as i32) / 2,
            self.height as i32 - 14,
            xl,
            BLACK,
            Font::Small,
        );
        c
    }
}

fn value_range(series: &[Series], from_zero: bool) -> (f64, f64) {
    let finite = series.iter().flat_map(|s| s.values.iter().copied()).filter(|v| v.is_finite());
    let (mut lo, mut hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.05;
    (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
}

/// Lines over x = 1..=n (e.g. epochs).
pub fn line_chart(title: &str, x_label: &str, series: &[Series], width: u32, height: u32) -> RgbImage {
    line_chart_canvas(title, x_label, series, width, height).image
}

/// [`line_chart`] with the boxes of its text.
pub fn line_chart_canvas(title: &str, x_label: &str, series: &[Series], width: u32, height: u32) -> Canvas {
    let frame = Frame::new(width, height, series, value_range(series, false));
    let mut c = frame.draw_axes(title, x_label);
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let x = |i: usize| {
        let t = if n <= 1 { 0.5 } else { i as f64 / (n - 1) as f64 };
        (MARGIN_LEFT as f64 + frame.plot_w() * t).round() as i32
    };
    let bottom = height as i32 - MARGIN_BOTTOM;
    let step = tick_step(n.max(1) as f64, 8).max(1.0) as usize;
    for i in (0..n).filter(|i| (i + 1) % step == 0 || *i == 0) {
        let s = (i + 1).to_string();
        c.text(x(i) - Font::Small.text_width(&s) as i32 / 2, bottom + 4, &s, BLACK, Font::Small);
    }
    for s in series {
        let points: Vec<(i32, i32)> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| (x(i), frame.y(*v)))
            .collect();
        for pair in points.windows(2) {
            draw::line(&mut c.image, pair[0], pair[1], s.color, 2);
        }
        for p in &points {
            draw::fill_rect(&mut c.image, p.0 - 2, p.1 - 2, 5, 5, s.color);
        }
    }
    legend(&mut c, series);
    c
}

/// Stacked bars, one per category (e.g. hours), series stacked bottom-up.
pub fn stacked_bars(
    title: &str,
    x_label: &str,
    categories: &[String],
    series: &[Series],
    width: u32,
    height: u32,
) -> RgbImage {
    stacked_bars_canvas(title, x_label, categories, series, width, height).image
}

/// [`stacked_bars`] with the boxes of its text.
pub fn stacked_bars_canvas(
    title: &str,
    x_label: &str,
    categories: &[String],
    series: &[Series],
    width: u32,
    height: u32,
) -> Canvas {
    let totals: Vec<f64> = (0..categories.len())
        .map(|i| series.iter().map(|s| s.values.get(i).copied().unwrap_or(0.0)).sum())
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max).max(1.0);
    let frame = Frame::new(width, height, series, (0.0, max * 1.05));
    let mut c = frame.draw_axes(title, x_label);
    let n = categories.len().max(1);
    let slot = frame.plot_w() / n as f64;
    let bar_w = (slot * 0.8).max(1.0) as u32;
    let widest = categories.iter().map(|c| Font::Small.text_width(c)).max().unwrap_or(0);
    let label_every = ((widest as f64 + 6.0) / slot).ceil().max(1.0) as usize;
    let bottom = height as i32 - MARGIN_BOTTOM;
    for (i, category) in categories.iter().enumerate() {
        let x0 = (MARGIN_LEFT as f64 + slot * i as f64 + slot * 0.1).round() as i32;
        let mut base = 0.0;
        for s in series {
            let v = s.values.get(i).copied().unwrap_or(0.0);
            if v > 0.0 {
                let (top, low) = (frame.y(base + v), frame.y(base));
                draw::fill_rect(&mut c.image, x0, top, bar_w, (low - top).max(1) as u32, s.color);
            }
            base += v;
        }
        if i % label_every == 0 {
            let w = Font::Small.text_width(category) as i32;
            c.text(x0 + bar_w as i32 / 2 - w / 2, bottom + 4, category, BLACK, Font::Small);
        }
    }
    legend(&mut c, series);
    c
}

/// Places images side by side on a white background.
pub fn side_by_side(images: &[RgbImage]) -> RgbImage {
    let width = images.iter().map(|i| i.width()).sum::<u32>().max(1);
    let height = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let mut out = RgbImage::from_pixel(width, height, WHITE);
    let mut x = 0;
    for img in images {
        image::imageops::replace(&mut out, img, x as i64, 0);
        x += img.width();
    }
    out
}

/// Every label inside the picture and clear of every other (tests of every chart).
#[cfg(test)]
pub(crate) fn assert_readable(canvas: &Canvas) {
    let (w, h) = canvas.image.dimensions();
    for (i, a) in canvas.text_boxes.iter().enumerate() {
        assert!(a.inside(w, h), "{a:?} runs off the {w}x{h} chart");
        for b in &canvas.text_boxes[i + 1..] {
            assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(tick_step(10.0, 5), 2.0);
        assert!((tick_step(0.37, 5) - 0.1).abs() < 1e-12);
        assert!((tick_step(0.2, 5) - 0.05).abs() < 1e-12);
        assert_eq!(tick_step(730.0, 5), 100.0);
    }

    #[test]
    fn charts_draw_their_series() {
        let series = vec![
            Series { name: "train".into(), color: PALETTE[0], values: vec![5.0, 3.0, 2.0] },
            Series { name: "val".into(), color: PALETTE[1], values: vec![6.0, f64::NAN, 4.0] },
        ];
        let img = line_chart("MAE", "epoch", &series, 300, 200);
        assert_eq!(img.dimensions(), (300, 200));
        assert!(img.pixels().filter(|p| **p == PALETTE[0]).count() > 50);
        assert!(img.pixels().any(|p| *p == PALETTE[1]));

        let bars = stacked_bars("people", "hour", &["09:00".into(), "10:00".into()], &series, 300, 200);
        assert!(bars.pixels().filter(|p| **p == PALETTE[1]).count() > 50);
        assert_eq!(side_by_side(&[img, bars]).dimensions(), (600, 200));
    }

    #[test]
    fn a_legend_too_wide_for_one_row_wraps_under_the_title() {
        let series: Vec<Series> = (0..12)
            .map(|i| Series { name: format!("F {i}-{}", i + 9), color: PALETTE[i % 8], values: vec![1.0; 3] })
            .collect();
        let hours: Vec<String> = ["09", "10", "11"].map(String::from).to_vec();
        let canvas = stacked_bars_canvas("people per hour", "hour", &hours, &series, 640, 400);
        assert_readable(&canvas);
        let legend_rows: std::collections::BTreeSet<i32> =
            canvas.text_boxes.iter().filter(|b| b.text.starts_with("F ")).map(|b| b.y).collect();
        assert!(legend_rows.len() >= 2, "12 entries do not fit one row at 640 px: {legend_rows:?}");
        let curves = line_chart_canvas("age MAE (years)", "epoch", &series[..2], 360, 260);
        assert_readable(&curves);
    }
}
