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
const MARGIN_TOP: i32 = 30;
const MARGIN_BOTTOM: i32 = 44;

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
    y_min: f64,
    y_max: f64,
}

impl Frame {
    fn plot_w(&self) -> f64 {
        (self.width as i32 - MARGIN_LEFT - MARGIN_RIGHT) as f64
    }
    fn plot_h(&self) -> f64 {
        (self.height as i32 - MARGIN_TOP - MARGIN_BOTTOM) as f64
    }
    fn y(&self, v: f64) -> i32 {
        let t = (v - self.y_min) / (self.y_max - self.y_min).max(1e-12);
        (MARGIN_TOP as f64 + self.plot_h() * (1.0 - t)).round() as i32
    }

    /// Background, title, y grid with labels, axis names.
    fn draw_axes(&self, title: &str, x_label: &str) -> RgbImage {
        let mut img = RgbImage::from_pixel(self.width, self.height, WHITE);
        draw::text(&mut img, MARGIN_LEFT, 8, title, BLACK, Font::Large);
        let step = tick_step(self.y_max - self.y_min, 5);
        let mut v = (self.y_min / step).ceil() * step;
        while v <= self.y_max + 1e-9 {
            let y = self.y(v);
            draw::line(
                &mut img,
                (MARGIN_LEFT, y),
                (self.width as i32 - MARGIN_RIGHT, y),
                Rgb([225, 225, 225]),
                1,
            );
            let s = format_tick(v, step);
            draw::text(
                &mut img,
                MARGIN_LEFT - 4 - Font::Small.text_width(&s) as i32,
                y - 5,
                &s,
                BLACK,
                Font::Small,
            );
            v += step;
        }
        let bottom = self.height as i32 - MARGIN_BOTTOM;
        draw::line(&mut img, (MARGIN_LEFT, MARGIN_TOP), (MARGIN_LEFT, bottom), GREY, 1);
        draw::line(&mut img, (MARGIN_LEFT, bottom), (self.width as i32 - MARGIN_RIGHT, bottom), GREY, 1);
        let xl = x_label;
        draw::text(
            &mut img,
            MARGIN_LEFT + (self.plot_w() as i32 - Font::Small.text_width(xl) as i32) / 2,
            self.height as i32 - 14,
            xl,
            BLACK,
            Font::Small,
        );
        img
    }
}

fn legend(img: &mut RgbImage, series: &[Series]) {
    let mut x = img.width() as i32 - MARGIN_RIGHT;
    for s in series.iter().rev() {
        let w = Font::Small.text_width(&s.name) as i32 + 16;
        x -= w + 6;
        draw::fill_rect(img, x, 12, 10, 8, s.color);
        draw::text(img, x + 13, 11, &s.name, BLACK, Font::Small);
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
    let (y_min, y_max) = value_range(series, false);
    let frame = Frame { width, height, y_min, y_max };
    let mut img = frame.draw_axes(title, x_label);
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let x = |i: usize| {
        let t = if n <= 1 { 0.5 } else { i as f64 / (n - 1) as f64 };
        (MARGIN_LEFT as f64 + frame.plot_w() * t).round() as i32
    };
    let bottom = height as i32 - MARGIN_BOTTOM;
    let step = tick_step(n.max(1) as f64, 8).max(1.0) as usize;
    for i in (0..n).filter(|i| (i + 1) % step == 0 || *i == 0) {
        let s = (i + 1).to_string();
        draw::text(
            &mut img,
            x(i) - Font::Small.text_width(&s) as i32 / 2,
            bottom + 4,
            &s,
            BLACK,
            Font::Small,
        );
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
            draw::line(&mut img, pair[0], pair[1], s.color, 2);
        }
        for p in &points {
            draw::fill_rect(&mut img, p.0 - 2, p.1 - 2, 5, 5, s.color);
        }
    }
    legend(&mut img, series);
    img
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
    let totals: Vec<f64> = (0..categories.len())
        .map(|i| series.iter().map(|s| s.values.get(i).copied().unwrap_or(0.0)).sum())
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max).max(1.0);
    let frame = Frame { width, height, y_min: 0.0, y_max: max * 1.05 };
    let mut img = frame.draw_axes(title, x_label);
    let n = categories.len().max(1);
    let slot = frame.plot_w() / n as f64;
    let bar_w = (slot * 0.8).max(1.0) as u32;
    let label_every = ((Font::Small.text_width("00:00") as f64 + 6.0) / slot).ceil().max(1.0) as usize;
    let bottom = height as i32 - MARGIN_BOTTOM;
    for (i, category) in categories.iter().enumerate() {
        let x0 = (MARGIN_LEFT as f64 + slot * i as f64 + slot * 0.1).round() as i32;
        let mut base = 0.0;
        for s in series {
            let v = s.values.get(i).copied().unwrap_or(0.0);
            if v > 0.0 {
                let (top, low) = (frame.y(base + v), frame.y(base));
                draw::fill_rect(&mut img, x0, top, bar_w, (low - top).max(1) as u32, s.color);
            }
            base += v;
        }
        if i % label_every == 0 {
            let w = Font::Small.text_width(category) as i32;
            draw::text(&mut img, x0 + bar_w as i32 / 2 - w / 2, bottom + 4, category, BLACK, Font::Small);
        }
    }
    legend(&mut img, series);
    img
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
}
