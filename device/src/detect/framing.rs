//! One way to find a face whatever its size in the picture: a detector pass over the frame,
//! then a second look, on a grey-padded window around it, at every face that is large or cut
//! by the frame edge, and at the whole frame padded when nothing was found.
//!
//! Why: BlazeFace's back model places its landmarks well on faces that sit in room (kiosk
//! faces of 30-150 px in 640x480), but on a face that fills the picture (an ID photo, a selfie,
//! a UTKFace chip) the eyes drift and one chip in twenty is not found at all; the crop, and the
//! reading with it, goes wrong (model card, "Finding the face"). Seen again centred in a window
//! about twice its size, the same face is found with the landmarks it has at kiosk distance.
//! `faceage classify`, `eval` and `run` and the trainer's crops all go through
//! [`FramedDetector`], so the model learns the crops the board makes.

use anyhow::Result;
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::{Face, FaceDetector, one_face_per_face};
use crate::geometry::{BBox, Point};

/// When and how faces are looked at again.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Framing {
    /// A face whose box side is at least this share of the frame's shorter side is detected
    /// again on a window around it.
    pub large_face: f32,
    /// So is a face whose box, grown by this factor about its centre, reaches the frame's edge.
    pub edge_room: f32,
    /// Side of the second look's window, in face-box sides.
    pub window: f32,
    /// When the frame gives no face, it is detected again centred on a grey square this many
    /// times its longer side (0 turns the retry off).
    pub pad_when_empty: f32,
    /// Windows are sampled at most this many pixels a side (the detector reads 256).
    pub max_window_px: u32,
}

impl Default for Framing {
    fn default() -> Self {
        // Measured on held-out UTKFace chips and kiosk scenes: see the model card. An edge rule
        // of 1.5 box sides read scenes no better (5.54 years against 5.52 at 1.0) and cost a
        // second 20 ms pass for a kiosk face merely near the frame's side.
        Self { large_face: 0.3, edge_room: 1.0, window: 2.2, pad_when_empty: 2.0, max_window_px: 512 }
    }
}

impl Framing {
    /// One detector pass over the frame as given: the board's path before framing, kept for
    /// comparison (`--plain-detector`).
    pub fn off() -> Self {
        Self { large_face: f32::INFINITY, edge_room: 0.0, pad_when_empty: 0.0, ..Self::default() }
    }
}

/// A square region of a frame, sampled onto a grey canvas: `frame = canvas / scale + origin`.
struct Window {
    canvas: RgbImage,
    origin: Point,
    scale: f32,
}

impl Window {
    /// The square of side `side` centred on `centre`, grey where it leaves the frame, at
    /// most `max_px` pixels a side.
    fn around(frame: &RgbImage, centre: Point, side: f32, max_px: u32) -> Window {
        let scale = (max_px as f32 / side).min(1.0);
        let canvas_side = (side * scale).round().max(1.0) as u32;
        let origin = Point::new(centre.x - side / 2.0, centre.y - side / 2.0);
        // The part of the frame inside the window, in whole frame pixels.
        let x0 = origin.x.max(0.0).floor() as u32;
        let y0 = origin.y.max(0.0).floor() as u32;
        let x1 = ((origin.x + side).ceil().max(0.0) as u32).min(frame.width());
        let y1 = ((origin.y + side).ceil().max(0.0) as u32).min(frame.height());
        let mut canvas = RgbImage::from_pixel(canvas_side, canvas_side, Rgb([128, 128, 128]));
        if x1 > x0 && y1 > y0 {
            let part = image::imageops::crop_imm(frame, x0, y0, x1 - x0, y1 - y0).to_image();
            let part = if scale < 1.0 {
                let w = ((x1 - x0) as f32 * scale).round().max(1.0) as u32;
                let h = ((y1 - y0) as f32 * scale).round().max(1.0) as u32;
                image::imageops::resize(&part, w, h, image::imageops::FilterType::Triangle)
            } else {
                part
            };
            let at_x = ((x0 as f32 - origin.x) * scale).round() as i64;
            let at_y = ((y0 as f32 - origin.y) * scale).round() as i64;
            image::imageops::replace(&mut canvas, &part, at_x, at_y);
        }
        Window { canvas, origin, scale }
    }

    fn to_frame(&self, p: Point) -> Point {
        Point::new(p.x / self.scale + self.origin.x, p.y / self.scale + self.origin.y)
    }

    fn face_to_frame(&self, f: &Face) -> Face {
        let centre = self.to_frame(f.bbox.centre());
        Face {
            bbox: BBox { cx: centre.x, cy: centre.y, w: f.bbox.w / self.scale, h: f.bbox.h / self.scale },
            landmarks: f.landmarks.map(|p| self.to_frame(p)),
            score: f.score,
        }
    }
}

/// A detector that frames every face the same way, whatever its size: see the module docs.
pub struct FramedDetector<D> {
    inner: D,
    pub framing: Framing,
}

impl<D: FaceDetector> FramedDetector<D> {
    pub fn new(inner: D) -> Self {
        Self { inner, framing: Framing::default() }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Does this face need a second look?
    fn needs_window(&self, face: &Face, width: u32, height: u32) -> bool {
        let side = face.bbox.w.max(face.bbox.h);
        let large = side >= self.framing.large_face * width.min(height) as f32;
        let half = side * self.framing.edge_room / 2.0;
        let b = &face.bbox;
        let cut = self.framing.edge_room > 0.0
            && (b.cx - half <= 0.0
                || b.cy - half <= 0.0
                || b.cx + half >= width as f32
                || b.cy + half >= height as f32);
        large || cut
    }

    /// The face seen again in a window around it; the original when the window shows no face
    /// that overlaps it.
    fn second_look(&mut self, frame: &RgbImage, face: Face) -> Result<Face> {
        let side = face.bbox.w.max(face.bbox.h) * self.framing.window;
        let window = Window::around(frame, face.bbox.centre(), side, self.framing.max_window_px);
        let found = self.inner.detect(&window.canvas)?;
        let best =
            found.iter().map(|f| window.face_to_frame(f)).filter(|f| f.bbox.iou(&face.bbox) >= 0.3).min_by(
                |a, b| {
                    a.bbox
                        .centre()
                        .distance(face.bbox.centre())
                        .total_cmp(&b.bbox.centre().distance(face.bbox.centre()))
                },
            );
        Ok(best.unwrap_or(face))
    }
}

impl<D: FaceDetector> FaceDetector for FramedDetector<D> {
    /// Located faces, each refined; two looks that found the same face give it once.
    fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Face>> {
        let faces = self.locate(frame)?;
        let mut framed = Vec::with_capacity(faces.len());
        for face in faces {
            framed.push(self.refine(frame, face)?);
        }
        Ok(one_face_per_face(framed))
    }

    /// One pass over the frame, and one over the frame padded when that finds nothing; a face
    /// once ([`one_face_per_face`]), so a fragment of a face is neither tracked nor refined.
    fn locate(&mut self, frame: &RgbImage) -> Result<Vec<Face>> {
        let (w, h) = frame.dimensions();
        let faces = self.inner.detect(frame)?;
        if !faces.is_empty() || self.framing.pad_when_empty <= 0.0 {
            return Ok(one_face_per_face(faces));
        }
        let side = w.max(h) as f32 * self.framing.pad_when_empty;
        let centre = Point::new(w as f32 / 2.0, h as f32 / 2.0);
        let window = Window::around(frame, centre, side, self.framing.max_window_px);
        let padded = self.inner.detect(&window.canvas)?;
        let faces = padded
            .iter()
            .map(|f| window.face_to_frame(f))
            // A face is only of use if its centre is in the picture.
            .filter(|f| f.bbox.cx >= 0.0 && f.bbox.cy >= 0.0 && f.bbox.cx < w as f32 && f.bbox.cy < h as f32)
            .collect();
        Ok(one_face_per_face(faces))
    }

    /// The second look, for a face that is large or cut by the frame's edge.
    fn refine(&mut self, frame: &RgbImage, face: Face) -> Result<Face> {
        let (w, h) = frame.dimensions();
        if self.needs_window(&face, w, h) { self.second_look(frame, face) } else { Ok(face) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finds the one bright square in an image (a stand-in for a face), with its "eyes" at
    /// fixed places in it; records the sizes of the images it was given.
    struct SquareFinder {
        seen: Vec<(u32, u32)>,
    }

    impl FaceDetector for SquareFinder {
        fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Face>> {
            self.seen.push(frame.dimensions());
            let bright: Vec<(u32, u32)> =
                frame.enumerate_pixels().filter(|(_, _, p)| p.0[0] > 200).map(|(x, y, _)| (x, y)).collect();
            let Some(x0) = bright.iter().map(|p| p.0).min() else { return Ok(Vec::new()) };
            let x1 = bright.iter().map(|p| p.0).max().unwrap() + 1;
            let y0 = bright.iter().map(|p| p.1).min().unwrap();
            let y1 = bright.iter().map(|p| p.1).max().unwrap() + 1;
            let b = BBox::from_corners(x0 as f32, y0 as f32, x1 as f32, y1 as f32);
            let mut landmarks = [b.centre(); 6];
            landmarks[0] = Point::new(b.x0() + b.w * 0.3, b.y0() + b.h * 0.4);
            landmarks[1] = Point::new(b.x0() + b.w * 0.7, b.y0() + b.h * 0.4);
            Ok(vec![Face { bbox: b, landmarks, score: 0.9 }])
        }
    }

    fn frame_with_square(w: u32, h: u32, x: u32, y: u32, side: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |px, py| {
            if (x..x + side).contains(&px) && (y..y + side).contains(&py) {
                Rgb([255, 255, 255])
            } else {
                Rgb([40, 40, 40])
            }
        })
    }

    #[test]
    fn a_small_face_in_room_is_detected_once() {
        let mut d = FramedDetector::new(SquareFinder { seen: Vec::new() });
        let faces = d.detect(&frame_with_square(640, 480, 300, 200, 60)).unwrap();
        assert_eq!(faces.len(), 1);
        assert_eq!(d.inner().seen, vec![(640, 480)], "no second look for a kiosk-sized face");
    }

    #[test]
    fn a_large_face_is_seen_again_and_mapped_back_to_frame_pixels() {
        let mut d = FramedDetector::new(SquareFinder { seen: Vec::new() });
        let faces = d.detect(&frame_with_square(200, 200, 20, 30, 150)).unwrap();
        assert_eq!(d.inner().seen.len(), 2, "one pass over the frame, one over the window");
        let window = d.inner().seen[1];
        assert_eq!(window, (330, 330), "2.2 face sides");
        let f = &faces[0];
        assert!((f.bbox.x0() - 20.0).abs() < 1.0 && (f.bbox.y0() - 30.0).abs() < 1.0, "{f:?}");
        assert!((f.bbox.w - 150.0).abs() < 1.0, "{f:?}");
        assert!((f.right_eye().x - (20.0 + 45.0)).abs() < 1.0, "{f:?}");
    }

    #[test]
    fn a_window_larger_than_its_cap_is_downsampled_and_still_maps_back() {
        let mut d = FramedDetector::new(SquareFinder { seen: Vec::new() });
        d.framing.max_window_px = 200;
        let faces = d.detect(&frame_with_square(1000, 800, 200, 100, 600)).unwrap();
        assert_eq!(d.inner().seen[1], (200, 200));
        let f = &faces[0];
        assert!((f.bbox.x0() - 200.0).abs() < 8.0 && (f.bbox.w - 600.0).abs() < 8.0, "{f:?}");
    }

    #[test]
    fn a_face_cut_by_the_edge_is_seen_again() {
        let mut d = FramedDetector::new(SquareFinder { seen: Vec::new() });
        d.detect(&frame_with_square(640, 480, 0, 200, 60)).unwrap();
        assert_eq!(d.inner().seen.len(), 2);
        // Near the side but whole, as a kiosk face often is: one pass, no second look.
        d.detect(&frame_with_square(640, 480, 13, 200, 110)).unwrap();
        assert_eq!(d.inner().seen.len(), 3);
    }

    #[test]
    fn an_empty_frame_is_tried_again_padded() {
        let mut d = FramedDetector::new(SquareFinder { seen: Vec::new() });
        let faces = d.detect(&RgbImage::from_pixel(100, 80, Rgb([10, 10, 10]))).unwrap();
        assert!(faces.is_empty());
        assert_eq!(d.inner().seen, vec![(100, 80), (200, 200)]);
        d.framing.pad_when_empty = 0.0;
        d.detect(&RgbImage::from_pixel(100, 80, Rgb([10, 10, 10]))).unwrap();
        assert_eq!(d.inner().seen.len(), 3, "no retry when turned off");
    }

    /// The square, and on whole frames (not windows) a fragment of it too, as BlazeFace gives
    /// an eye region of a face that fills the picture.
    struct SquareAndFragment(SquareFinder);

    impl FaceDetector for SquareAndFragment {
        fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Face>> {
            let mut faces = self.0.detect(frame)?;
            if let (Some(face), true) = (faces.first().cloned(), self.0.seen.len() == 1) {
                let b = face.bbox;
                let part =
                    BBox { cx: b.x0() + b.w * 0.25, cy: b.y0() + b.h * 0.25, w: b.w * 0.45, h: b.h * 0.45 };
                faces.push(Face { bbox: part, landmarks: [part.centre(); 6], score: 0.55 });
            }
            Ok(faces)
        }
    }

    #[test]
    fn a_fragment_of_a_face_is_neither_located_nor_detected() {
        let mut d = FramedDetector::new(SquareAndFragment(SquareFinder { seen: Vec::new() }));
        let frame = frame_with_square(200, 200, 20, 30, 150);
        let faces = d.detect(&frame).unwrap();
        assert_eq!(faces.len(), 1, "{faces:?}");
        assert_eq!(faces[0].score, 0.9);
        assert_eq!(d.inner().0.seen.len(), 2, "the fragment had no second look of its own");
        d.inner.0.seen.clear();
        assert_eq!(d.locate(&frame).unwrap().len(), 1, "the live path tracks one face too");
    }

    #[test]
    fn framing_off_is_one_plain_pass() {
        let mut d = FramedDetector::new(SquareFinder { seen: Vec::new() });
        d.framing = Framing::off();
        for frame in [frame_with_square(200, 200, 20, 30, 150), frame_with_square(640, 480, 0, 200, 60)] {
            d.detect(&frame).unwrap();
        }
        d.detect(&RgbImage::from_pixel(100, 80, Rgb([10, 10, 10]))).unwrap();
        assert_eq!(d.inner().seen.len(), 3);
    }
}
