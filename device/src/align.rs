//! From a detected face to the model's input crop: level the eyes, centre, scale, resample.
//!
//! The trainer builds its crops with this very code, and the geometry travels in the model
//! file, so the board crops exactly what the model was trained on.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::detect::Face;
use crate::geometry::{Affine, Point};
use crate::imaging::warp_affine;

/// Name of the crop recipe implemented here, written into model files.
pub const CROP_METHOD: &str = "blazeface-box-eyes-v1";

/// How a face box and its eye landmarks map to the square model input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropGeometry {
    /// Crop side as a multiple of the detector box's larger side.
    pub scale: f32,
    /// Crop centre moved down the face's vertical axis, in crop sides (negative moves up).
    pub shift_down: f32,
    /// Head roll corrected by levelling the eyes is limited to this many degrees, so a
    /// landmark glitch cannot turn a face upside down.
    pub max_roll_deg: f32,
}

impl Default for CropGeometry {
    fn default() -> Self {
        // Measured on UTKFace chips: the BlazeFace box spans brow to chin and ear to ear, so a
        // little more than the box keeps the hairline and jaw that age and gender depend on.
        Self { scale: 1.15, shift_down: 0.0, max_roll_deg: 35.0 }
    }
}

impl CropGeometry {
    /// The same crop with `factor` times the side around it, used to cache crops with room for
    /// augmentation: the central `size` pixels of a crop made at `size * factor` pixels are
    /// exactly the crop made at `size`.
    pub fn widened(&self, factor: f32) -> CropGeometry {
        CropGeometry { scale: self.scale * factor, ..self.clone() }
    }

    /// Head roll (radians) that levels the eyes, clamped to `max_roll_deg`.
    pub fn roll(&self, face: &Face) -> f32 {
        let (r, l) = (face.right_eye(), face.left_eye());
        let mut angle = (l.y - r.y).atan2(l.x - r.x);
        // The eye line has no direction: keep the angle within a half turn of upright.
        if angle > std::f32::consts::FRAC_PI_2 {
            angle -= std::f32::consts::PI;
        } else if angle < -std::f32::consts::FRAC_PI_2 {
            angle += std::f32::consts::PI;
        }
        let limit = self.max_roll_deg.to_radians();
        angle.clamp(-limit, limit)
    }

    /// Maps crop pixel coordinates (of a `size x size` crop) to frame coordinates.
    pub fn crop_to_frame(&self, face: &Face, size: u32) -> Affine {
        let side = self.scale * face.bbox.w.max(face.bbox.h);
        let angle = self.roll(face);
        let (sin, cos) = angle.sin_cos();
        let down = self.shift_down * side;
        let centre = Point::new(face.bbox.cx - sin * down, face.bbox.cy + cos * down);
        let pixel = side / size as f32;
        let half = size as f32 / 2.0;
        // crop (u, v) -> centre + R(angle) * ((u, v) - half) * pixel
        let rotate = Affine::similarity(pixel, angle, centre);
        rotate.then_after(&Affine::translation(-half, -half))
    }

    /// The `size x size` model input crop of `face` in `frame`.
    pub fn crop(&self, frame: &RgbImage, face: &Face, size: u32) -> RgbImage {
        warp_affine(frame, &self.crop_to_frame(face, size), size, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BBox;
    use image::Rgb;

    fn face_at(cx: f32, cy: f32, size: f32, roll_deg: f32) -> Face {
        let (s, c) = roll_deg.to_radians().sin_cos();
        let eye = |dx: f32| Point::new(cx + c * dx, cy + s * dx);
        let mut landmarks = [Point::new(cx, cy); 6];
        landmarks[0] = eye(-size / 4.0);
        landmarks[1] = eye(size / 4.0);
        Face { bbox: BBox { cx, cy, w: size, h: size }, landmarks, score: 0.9 }
    }

    #[test]
    fn crop_centre_lands_on_the_box_centre() {
        let geometry = CropGeometry { scale: 1.0, shift_down: 0.0, max_roll_deg: 35.0 };
        let map = geometry.crop_to_frame(&face_at(100.0, 80.0, 50.0, 0.0), 64);
        let centre = map.apply(Point::new(32.0, 32.0));
        assert!((centre.x - 100.0).abs() < 1e-4 && (centre.y - 80.0).abs() < 1e-4);
        let corner = map.apply(Point::new(0.0, 0.0));
        assert!((corner.x - 75.0).abs() < 1e-4 && (corner.y - 55.0).abs() < 1e-4);
    }

    #[test]
    fn roll_follows_the_eyes_and_is_clamped() {
        let geometry = CropGeometry::default();
        assert!((geometry.roll(&face_at(0.0, 0.0, 40.0, 20.0)).to_degrees() - 20.0).abs() < 1e-3);
        assert!((geometry.roll(&face_at(0.0, 0.0, 40.0, 80.0)).to_degrees() - 35.0).abs() < 1e-3);
    }

    #[test]
    fn a_tilted_face_comes_out_level() {
        // Two dots on the eye line of a 30 degree tilted face end up on one crop row.
        let mut frame = RgbImage::from_pixel(200, 200, Rgb([0, 0, 0]));
        let face = face_at(100.0, 100.0, 80.0, 30.0);
        for eye in [face.right_eye(), face.left_eye()] {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    frame.put_pixel(
                        (eye.x as i32 + dx) as u32,
                        (eye.y as i32 + dy) as u32,
                        Rgb([255, 255, 255]),
                    );
                }
            }
        }
        let crop = CropGeometry { scale: 1.0, shift_down: 0.0, max_roll_deg: 45.0 }.crop(&frame, &face, 80);
        let bright_rows: Vec<u32> =
            (0..80).filter(|&y| (0..80).any(|x| crop.get_pixel(x, y).0[0] > 120)).collect();
        assert!(!bright_rows.is_empty());
        let spread = bright_rows.last().unwrap() - bright_rows.first().unwrap();
        assert!(spread <= 4, "eye rows {bright_rows:?} should be level");
    }

    #[test]
    fn the_centre_of_a_widened_crop_is_the_crop() {
        let frame = RgbImage::from_fn(160, 140, |x, y| {
            Rgb([(x * 7 % 251) as u8, (y * 13 % 253) as u8, ((x + y) % 256) as u8])
        });
        let face = face_at(80.0, 70.0, 60.0, 12.0);
        let geometry = CropGeometry::default();
        let crop = geometry.crop(&frame, &face, 64);
        let wide = geometry.widened(96.0 / 64.0).crop(&frame, &face, 96);
        let centre = image::imageops::crop_imm(&wide, 16, 16, 64, 64).to_image();
        let max_diff = crop
            .as_raw()
            .iter()
            .zip(centre.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(max_diff <= 1, "central window differs by {max_diff}");
    }
}
