//! Plane geometry in image pixel coordinates (x right, y down, pixel centres at +0.5).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

impl Point {
    pub const fn new(x: f32, y: f32) -> Self {
        Self { x, y }
    }

    pub fn distance(self, other: Point) -> f32 {
        ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt()
    }
}

/// An axis-aligned box given by its centre and size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct BBox {
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
}

impl BBox {
    pub fn from_corners(x0: f32, y0: f32, x1: f32, y1: f32) -> Self {
        Self { cx: (x0 + x1) / 2.0, cy: (y0 + y1) / 2.0, w: x1 - x0, h: y1 - y0 }
    }

    pub fn x0(&self) -> f32 {
        self.cx - self.w / 2.0
    }
    pub fn y0(&self) -> f32 {
        self.cy - self.h / 2.0
    }
    pub fn x1(&self) -> f32 {
        self.cx + self.w / 2.0
    }
    pub fn y1(&self) -> f32 {
        self.cy + self.h / 2.0
    }

    pub fn area(&self) -> f32 {
        self.w.max(0.0) * self.h.max(0.0)
    }

    pub fn centre(&self) -> Point {
        Point::new(self.cx, self.cy)
    }

    /// Area of the overlap of two boxes; 0 when they are disjoint.
    pub fn intersection(&self, other: &BBox) -> f32 {
        let ix = (self.x1().min(other.x1()) - self.x0().max(other.x0())).max(0.0);
        let iy = (self.y1().min(other.y1()) - self.y0().max(other.y0())).max(0.0);
        ix * iy
    }

    /// Intersection over union; 0 for disjoint or degenerate boxes.
    pub fn iou(&self, other: &BBox) -> f32 {
        let inter = self.intersection(other);
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    pub fn contains(&self, p: Point) -> bool {
        p.x >= self.x0() && p.x <= self.x1() && p.y >= self.y0() && p.y <= self.y1()
    }
}

/// A 2-D affine map `p' = A p + t`, stored row-major as `[a, b, tx, c, d, ty]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine(pub [f32; 6]);

impl Affine {
    pub const IDENTITY: Affine = Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);

    pub fn apply(&self, p: Point) -> Point {
        let [a, b, tx, c, d, ty] = self.0;
        Point::new(a * p.x + b * p.y + tx, c * p.x + d * p.y + ty)
    }

    /// `self ∘ other`: first `other`, then `self`.
    pub fn then_after(&self, other: &Affine) -> Affine {
        let [a, b, tx, c, d, ty] = self.0;
        let [e, f, ux, g, h, uy] = other.0;
        Affine([
            a * e + b * g,
            a * f + b * h,
            a * ux + b * uy + tx,
            c * e + d * g,
            c * f + d * h,
            c * ux + d * uy + ty,
        ])
    }

    /// Similarity transform: rotate by `angle` (radians), scale by `scale`, then translate.
    pub fn similarity(scale: f32, angle: f32, translate: Point) -> Affine {
        let (s, c) = angle.sin_cos();
        Affine([scale * c, -scale * s, translate.x, scale * s, scale * c, translate.y])
    }

    pub fn translation(dx: f32, dy: f32) -> Affine {
        Affine([1.0, 0.0, dx, 0.0, 1.0, dy])
    }

    /// Mirror around the vertical line `x = width / 2` of an image `width` pixels wide.
    pub fn flip_horizontal(width: f32) -> Affine {
        Affine([-1.0, 0.0, width, 0.0, 1.0, 0.0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_identical_disjoint_and_half_overlapping_boxes() {
        let a = BBox::from_corners(0.0, 0.0, 10.0, 10.0);
        assert!((a.iou(&a) - 1.0).abs() < 1e-6);
        assert_eq!(a.iou(&BBox::from_corners(20.0, 20.0, 30.0, 30.0)), 0.0);
        let half = BBox::from_corners(5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&half) - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn composition_applies_right_operand_first() {
        let t = Affine::translation(3.0, 4.0);
        let s = Affine::similarity(2.0, 0.0, Point::default());
        let p = s.then_after(&t).apply(Point::new(1.0, 1.0));
        assert_eq!(p, Point::new(8.0, 10.0));
        let q = Affine::similarity(1.0, std::f32::consts::FRAC_PI_2, Point::default())
            .apply(Point::new(1.0, 0.0));
        assert!((q.x).abs() < 1e-6 && (q.y - 1.0).abs() < 1e-6);
    }
}
