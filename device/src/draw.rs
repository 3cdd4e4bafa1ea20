//! Drawing on RGB images with built-in bitmap fonts (embedded-graphics): overlays, galleries
//! and charts need no font file on the board.

use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_9X15_BOLD};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use image::{Rgb, RgbImage};

use crate::age_gender::Gender;
use crate::geometry::BBox;
use crate::pipeline::FaceReading;

pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
pub const GREY: Rgb<u8> = Rgb([150, 150, 150]);
pub const FEMALE: Rgb<u8> = Rgb([235, 90, 160]);
pub const MALE: Rgb<u8> = Rgb([60, 150, 235]);
pub const GREEN: Rgb<u8> = Rgb([40, 170, 70]);
pub const RED: Rgb<u8> = Rgb([215, 50, 40]);

/// Text sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Font {
    /// 6x10 pixels per character.
    Small,
    /// 9x15 bold.
    Large,
}

impl Font {
    fn style(self, color: Rgb<u8>) -> MonoTextStyle<'static, Rgb888> {
        let font = match self {
            Font::Small => &FONT_6X10,
            Font::Large => &FONT_9X15_BOLD,
        };
        MonoTextStyle::new(font, to_rgb888(color))
    }

    pub fn char_size(self) -> (u32, u32) {
        match self {
            Font::Small => (6, 10),
            Font::Large => (9, 15),
        }
    }

    pub fn text_width(self, text: &str) -> u32 {
        self.char_size().0 * text.chars().count() as u32
    }
}

fn to_rgb888(c: Rgb<u8>) -> Rgb888 {
    Rgb888::new(c.0[0], c.0[1], c.0[2])
}

/// An `RgbImage` as an embedded-graphics target; pixels outside the image are dropped.
struct Target<'a>(&'a mut RgbImage);

impl OriginDimensions for Target<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Target<'_> {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0.put_pixel(p.x as u32, p.y as u32, Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

/// Text with its top-left corner at (x, y).
pub fn text(image: &mut RgbImage, x: i32, y: i32, s: &str, color: Rgb<u8>, font: Font) {
    let _ =
        Text::with_baseline(s, Point::new(x, y), font.style(color), Baseline::Top).draw(&mut Target(image));
}

/// Text on a filled background box, padded by 2 pixels.
pub fn label(image: &mut RgbImage, x: i32, y: i32, s: &str, color: Rgb<u8>, background: Rgb<u8>, font: Font) {
    let (_, ch) = font.char_size();
    fill_rect(image, x, y, font.text_width(s) + 4, ch + 4, background);
    text(image, x + 2, y + 2, s, color, font);
}

pub fn fill_rect(image: &mut RgbImage, x: i32, y: i32, w: u32, h: u32, color: Rgb<u8>) {
    let _ = Rectangle::new(Point::new(x, y), Size::new(w, h))
        .into_styled(PrimitiveStyle::with_fill(to_rgb888(color)))
        .draw(&mut Target(image));
}

pub fn rect_outline(image: &mut RgbImage, bbox: &BBox, color: Rgb<u8>, thickness: u32) {
    let _ = Rectangle::new(
        Point::new(bbox.x0().round() as i32, bbox.y0().round() as i32),
        Size::new(bbox.w.round().max(1.0) as u32, bbox.h.round().max(1.0) as u32),
    )
    .into_styled(PrimitiveStyle::with_stroke(to_rgb888(color), thickness))
    .draw(&mut Target(image));
}

pub fn line(image: &mut RgbImage, from: (i32, i32), to: (i32, i32), color: Rgb<u8>, width: u32) {
    let _ = Line::new(Point::new(from.0, from.1), Point::new(to.0, to.1))
        .into_styled(PrimitiveStyle::with_stroke(to_rgb888(color), width))
        .draw(&mut Target(image));
}

/// "F 27" style label text for a reading.
pub fn reading_label(gender: Gender, age: f32) -> String {
    format!("{} {}", gender.letter(), age.round().max(0.0) as i64)
}

/// Box, label and a confidence bar for one face. `confidence` (0..1) fills the bar under
/// the label, and faint boxes mean the model is unsure.
pub fn overlay_face(image: &mut RgbImage, bbox: &BBox, gender: Gender, age: f32, confidence: f32) {
    let color = match gender {
        Gender::Female => FEMALE,
        Gender::Male => MALE,
    };
    let thickness = if confidence >= 0.75 { 3 } else { 1 };
    rect_outline(image, bbox, color, thickness);
    let s = reading_label(gender, age);
    let font = if bbox.w >= 80.0 { Font::Large } else { Font::Small };
    let (_, ch) = font.char_size();
    let x = bbox.x0().round() as i32;
    let y = (bbox.y0().round() as i32 - ch as i32 - 8).max(0);
    label(image, x, y, &s, WHITE, color, font);
    let bar_w = (font.text_width(&s) + 4).max(20);
    fill_rect(image, x, y + ch as i32 + 4, bar_w, 3, BLACK);
    fill_rect(
        image,
        x,
        y + ch as i32 + 4,
        (bar_w as f32 * confidence.clamp(0.0, 1.0)).round() as u32,
        3,
        WHITE,
    );
}

/// Draws every reading of a frame (per-frame estimates; the live view draws fused tracks).
pub fn overlay_readings(image: &mut RgbImage, readings: &[FaceReading]) {
    for r in readings {
        overlay_face(image, &r.face.bbox, r.estimate.gender(), r.estimate.age, r.estimate.gender_certainty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_boxes_change_pixels_inside_the_image_only() {
        let mut img = RgbImage::from_pixel(60, 40, BLACK);
        text(&mut img, 2, 2, "F 27", WHITE, Font::Small);
        let lit = img.pixels().filter(|p| p.0 != [0, 0, 0]).count();
        assert!(lit > 20, "the label must draw pixels ({lit})");
        // Partly outside: no panic, and something drawn.
        let mut img = RgbImage::from_pixel(20, 20, BLACK);
        rect_outline(&mut img, &BBox::from_corners(-10.0, -10.0, 10.0, 10.0), RED, 2);
        overlay_face(&mut img, &BBox::from_corners(15.0, 15.0, 40.0, 40.0), Gender::Female, 27.4, 0.9);
        assert!(img.pixels().any(|p| *p == RED));
        assert_eq!(reading_label(Gender::Female, 27.4), "F 27");
        assert_eq!(reading_label(Gender::Male, -0.4), "M 0");
    }
}
