//! Training-time augmentation and batch assembly.
//!
//! Augmentation samples the model crop out of the wider cached crop with a random similarity
//! (rotation, zoom, small aspect change, shift, mirror) and jitters brightness, contrast and
//! saturation. Evaluation takes the exact central crop, the one the board makes.

use faceage_device::geometry::{Affine, Point};
use faceage_device::imaging::sample_bilinear;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::crops::CropSet;

/// Normalisation written into the model file: `x = (pixel / 255 - MEAN) / STD`.
pub const MEAN: [f32; 3] = [0.5, 0.5, 0.5];
pub const STD: [f32; 3] = [0.25, 0.25, 0.25];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Largest rotation, degrees.
    pub rotate_deg: f32,
    /// Zoom range: scale in `1 ± zoom`.
    pub zoom: f32,
    /// Width/height ratio jitter: `1 ± aspect`.
    pub aspect: f32,
    /// Largest shift as a fraction of the crop side.
    pub shift: f32,
    /// Mirror half of the faces.
    pub flip: bool,
    /// Brightness, contrast and saturation factors in `1 ± value`.
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            rotate_deg: 12.0,
            zoom: 0.1,
            aspect: 0.05,
            shift: 0.06,
            flip: true,
            brightness: 0.25,
            contrast: 0.25,
            saturation: 0.25,
        }
    }
}

impl Augment {
    /// Every range of the default augmentation times `k` (flips stay on unless `k` is 0).
    pub fn scaled(k: f32) -> Self {
        let d = Self::default();
        Self {
            rotate_deg: d.rotate_deg * k,
            zoom: d.zoom * k,
            aspect: d.aspect * k,
            shift: d.shift * k,
            flip: k > 0.0,
            brightness: d.brightness * k,
            contrast: d.contrast * k,
            saturation: d.saturation * k,
        }
    }

    pub fn none() -> Self {
        Self {
            rotate_deg: 0.0,
            zoom: 0.0,
            aspect: 0.0,
            shift: 0.0,
            flip: false,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
        }
    }
}

fn symmetric(rng: &mut ChaCha8Rng, range: f32) -> f32 {
    if range <= 0.0 { 0.0 } else { rng.random_range(-range..=range) }
}

/// Writes one augmented sample into `out` (3 planes of `size * size`, CNHW slice layout given
/// by `plane_stride`: channel `c` starts at `c * plane_stride`).
pub fn augment_into(
    set: &CropSet,
    index: usize,
    augment: &Augment,
    rng: &mut ChaCha8Rng,
    out: &mut [f32],
    plane_stride: usize,
) {
    let size = set.settings.input_size as usize;
    let wide = set.size() as f32;
    let pixels = set.pixels(index);
    let src = image::ImageBuffer::<image::Rgb<u8>, &[u8]>::from_raw(set.size(), set.size(), pixels)
        .expect("crop size");

    let angle = symmetric(rng, augment.rotate_deg).to_radians();
    let zoom = 1.0 + symmetric(rng, augment.zoom);
    let aspect = 1.0 + symmetric(rng, augment.aspect);
    let shift =
        Point::new(symmetric(rng, augment.shift) * size as f32, symmetric(rng, augment.shift) * size as f32);
    let mirror = augment.flip && rng.random_bool(0.5);
    let brightness = 1.0 + symmetric(rng, augment.brightness);
    let contrast = 1.0 + symmetric(rng, augment.contrast);
    let saturation = 1.0 + symmetric(rng, augment.saturation);

    // Output pixel -> wide crop point: centre, mirror, stretch, rotate, shift, re-centre.
    let half = size as f32 / 2.0;
    let to_centre = Affine::translation(-half, -half);
    let mirror_map = if mirror { Affine([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]) } else { Affine::IDENTITY };
    let stretch = Affine([aspect.sqrt() / zoom, 0.0, 0.0, 0.0, 1.0 / (aspect.sqrt() * zoom), 0.0]);
    let rotate = Affine::similarity(1.0, angle, Point::new(wide / 2.0 + shift.x, wide / 2.0 + shift.y));
    let map = rotate.then_after(&stretch.then_after(&mirror_map.then_after(&to_centre)));

    let mut rgb = vec![[0f32; 3]; size * size];
    let mut mean_luma = 0.0;
    for y in 0..size {
        for x in 0..size {
            let p = map.apply(Point::new(x as f32 + 0.5, y as f32 + 0.5));
            let v = sample_bilinear(&src, p);
            mean_luma += 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
            rgb[y * size + x] = v;
        }
    }
    mean_luma /= (size * size) as f32;
    for (i, v) in rgb.iter().enumerate() {
        let luma = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
        for c in 0..3 {
            // saturation around the pixel's grey, contrast around the image mean, then brightness
            let s = luma + (v[c] - luma) * saturation;
            let k = mean_luma + (s - mean_luma) * contrast;
            let value = (k * brightness).clamp(0.0, 255.0);
            out[c * plane_stride + i] = (value / 255.0 - MEAN[c]) / STD[c];
        }
    }
}

/// The exact board crop of sample `index`, normalised, into `out` (same layout as above).
pub fn centre_into(set: &CropSet, index: usize, out: &mut [f32], plane_stride: usize) {
    let crop = set.model_crop(index);
    for (i, px) in crop.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane_stride + i] = (px.0[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
}

/// A batch in CNHW layout with its labels.
pub struct Batch {
    /// `[3, N, S, S]` row-major.
    pub pixels: Vec<f32>,
    pub ages: Vec<f32>,
    pub female: Vec<f32>,
    pub indices: Vec<usize>,
}

/// Assembles a batch of `indices`; augmented with `rng` when given, else centre crops.
pub fn make_batch(set: &CropSet, indices: &[usize], augment: Option<(&Augment, &mut ChaCha8Rng)>) -> Batch {
    let s = set.settings.input_size as usize;
    let n = indices.len();
    let mut pixels = vec![0f32; 3 * n * s * s];
    let plane_stride = n * s * s;
    match augment {
        Some((aug, rng)) => {
            for (j, &i) in indices.iter().enumerate() {
                augment_into(set, i, aug, rng, &mut pixels[j * s * s..], plane_stride);
            }
        }
        None => {
            for (j, &i) in indices.iter().enumerate() {
                centre_into(set, i, &mut pixels[j * s * s..], plane_stride);
            }
        }
    }
    Batch {
        pixels,
        ages: indices.iter().map(|&i| set.samples[i].age).collect(),
        female: indices.iter().map(|&i| if set.samples[i].female { 1.0 } else { 0.0 }).collect(),
        indices: indices.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crops::CropSettings;
    use faceage_device::CropGeometry;
    use rand::SeedableRng;

    fn set_of_one() -> CropSet {
        let settings =
            CropSettings { input_size: 8, margin: 1.5, geometry: CropGeometry::default(), chip_padding: 0.5 };
        let size = settings.cache_size() as usize;
        let pixels: Vec<u8> = (0..size * size * 3).map(|i| (i * 7 % 256) as u8).collect();
        CropSet::from_parts(
            settings,
            vec![crate::data::Sample { path: "a".into(), age: 30.0, female: true, race: None }],
            pixels,
        )
    }

    #[test]
    fn no_augmentation_is_the_centre_crop() {
        let set = set_of_one();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let plain = make_batch(&set, &[0], Some((&Augment::none(), &mut rng)));
        let centre = make_batch(&set, &[0], None);
        let diff = plain.pixels.iter().zip(&centre.pixels).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "{diff}");
        assert_eq!(centre.ages, vec![30.0]);
        assert_eq!(centre.female, vec![1.0]);
    }

    #[test]
    fn augmentation_is_seeded() {
        let set = set_of_one();
        let run = |seed| {
            make_batch(&set, &[0], Some((&Augment::default(), &mut ChaCha8Rng::seed_from_u64(seed)))).pixels
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
