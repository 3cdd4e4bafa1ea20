//! Training-time augmentation and batch assembly.
//!
//! Augmentation samples the model crop out of the wider cached crop with a random similarity
//! (rotation, zoom, small aspect change, shift, mirror) and jitters brightness, contrast and
//! saturation. On top, [`Camera`] makes some crops look like what a kiosk camera gives:
//! small faces upscaled, blur, sensor noise in low light, colour casts, JPEG at low quality,
//! part of the face covered. Evaluation takes the exact central crop, the one the board makes.

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
    /// Camera degradations (older runs' `train.json` have none).
    #[serde(default = "Camera::none")]
    pub camera: Camera,
}

/// What a camera frame does to a face that a UTKFace chip does not: each effect is applied to
/// a crop with its own probability, independently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    /// A small face: the crop is rendered at `low_res_px` (a range) and scaled back up, as the
    /// board upsamples a 30-60 px face to the model's input.
    pub low_res: f32,
    pub low_res_px: (u32, u32),
    /// Out of focus or moving: a Gaussian blur of sigma in `blur_sigma`.
    pub blur: f32,
    pub blur_sigma: (f32, f32),
    /// Low light: darker by a factor in `dark_gain`, with sensor noise.
    pub dark: f32,
    pub dark_gain: (f32, f32),
    /// Sensor noise alone (standard deviation in 0-255 levels, up to this).
    pub noise: f32,
    pub noise_sigma: f32,
    /// White balance off: per-channel gains in `1 ± cast_range`.
    pub cast: f32,
    pub cast_range: f32,
    /// A stream's or webcam's JPEG at a quality in `jpeg_quality`.
    pub jpeg: f32,
    pub jpeg_quality: (u8, u8),
    /// A hand, a mask, a shoulder: a rectangle of one colour over 10-30% of the side.
    pub occlude: f32,
}

impl Default for Camera {
    fn default() -> Self {
        Self {
            low_res: 0.25,
            low_res_px: (20, 48),
            blur: 0.15,
            blur_sigma: (0.4, 1.2),
            dark: 0.15,
            dark_gain: (0.35, 0.75),
            noise: 0.2,
            noise_sigma: 6.0,
            cast: 0.25,
            cast_range: 0.15,
            jpeg: 0.25,
            jpeg_quality: (25, 75),
            occlude: 0.1,
        }
    }
}

impl Camera {
    pub fn none() -> Self {
        Self {
            low_res: 0.0,
            blur: 0.0,
            dark: 0.0,
            noise: 0.0,
            cast: 0.0,
            jpeg: 0.0,
            occlude: 0.0,
            ..Self::default()
        }
    }

    /// Every probability of the default times `k` (capped at 1).
    pub fn scaled(k: f32) -> Self {
        let d = Self::default();
        let p = |v: f32| (v * k).clamp(0.0, 1.0);
        Self {
            low_res: p(d.low_res),
            blur: p(d.blur),
            dark: p(d.dark),
            noise: p(d.noise),
            cast: p(d.cast),
            jpeg: p(d.jpeg),
            occlude: p(d.occlude),
            ..d
        }
    }

    /// Degrades `rgb` (`size x size`, values 0-255) in place, in the order a camera does:
    /// the scene (occlusion), the optics (blur), the sensor (resolution, light, noise), the
    /// image processor (colour), the encoder (JPEG).
    fn apply(&self, rgb: &mut [[f32; 3]], size: usize, rng: &mut ChaCha8Rng) {
        let mut happens = |p: f32| p > 0.0 && rng.random::<f32>() < p;
        let (occlude, blur, low_res, dark, noise, cast, jpeg) = (
            happens(self.occlude),
            happens(self.blur),
            happens(self.low_res),
            happens(self.dark),
            happens(self.noise),
            happens(self.cast),
            happens(self.jpeg),
        );
        if !(occlude || blur || low_res || dark || noise || cast || jpeg) {
            return;
        }
        if occlude {
            let w = (size as f32 * rng.random_range(0.1..0.3)).round().max(1.0) as usize;
            let h = (size as f32 * rng.random_range(0.1..0.3)).round().max(1.0) as usize;
            let x0 = rng.random_range(0..=size - w);
            let y0 = rng.random_range(0..=size - h);
            let colour =
                [rng.random_range(0.0..255.0), rng.random_range(0.0..255.0), rng.random_range(0.0..255.0)];
            for y in y0..y0 + h {
                rgb[y * size + x0..y * size + x0 + w].fill(colour);
            }
        }
        let mut image = to_image(rgb, size);
        if blur {
            image = image::imageops::blur(&image, rng.random_range(self.blur_sigma.0..=self.blur_sigma.1));
        }
        if low_res {
            let px = rng.random_range(self.low_res_px.0..=self.low_res_px.1).min(size as u32);
            let filter = image::imageops::FilterType::Triangle;
            let small = image::imageops::resize(&image, px, px, filter);
            image = image::imageops::resize(&small, size as u32, size as u32, filter);
        }
        from_image(&image, rgb);
        let gain = if dark { rng.random_range(self.dark_gain.0..=self.dark_gain.1) } else { 1.0 };
        // Darker pictures are noisier: the camera's gain amplifies the sensor's noise.
        let sigma =
            if noise || dark { rng.random_range(1.0..=self.noise_sigma.max(1.0)) / gain } else { 0.0 };
        let cast: [f32; 3] = std::array::from_fn(|_| {
            if cast { 1.0 + rng.random_range(-self.cast_range..=self.cast_range) } else { 1.0 }
        });
        if dark || sigma > 0.0 || cast != [1.0; 3] {
            let normal = rand_distr_normal(rng, rgb.len() * 3, sigma);
            for (i, v) in rgb.iter_mut().enumerate() {
                for c in 0..3 {
                    v[c] = (v[c] * gain * cast[c] + normal[i * 3 + c]).clamp(0.0, 255.0);
                }
            }
        }
        if jpeg {
            let quality = rng.random_range(self.jpeg_quality.0..=self.jpeg_quality.1);
            let image = to_image(rgb, size);
            // The device library's own codec; a failure would only skip this effect.
            if let Ok(bytes) = faceage_device::imaging::encode_jpeg(&image, quality)
                && let Ok(back) = faceage_device::imaging::decode_rgb(&bytes)
            {
                from_image(&back, rgb);
            }
        }
    }
}

fn to_image(rgb: &[[f32; 3]], size: usize) -> image::RgbImage {
    image::RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let v = rgb[y as usize * size + x as usize];
        image::Rgb(v.map(faceage_device::imaging::round_u8))
    })
}

fn from_image(image: &image::RgbImage, rgb: &mut [[f32; 3]]) {
    for (v, p) in rgb.iter_mut().zip(image.pixels()) {
        *v = p.0.map(f32::from);
    }
}

/// `n` draws of a normal with standard deviation `sigma` (Box-Muller; zeros when sigma is 0).
fn rand_distr_normal(rng: &mut ChaCha8Rng, n: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![0.0; n];
    }
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(f32::EPSILON..1.0);
            let u2: f32 = rng.random();
            sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
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
            camera: Camera::default(),
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
            camera: Camera::scaled(k),
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
            camera: Camera::none(),
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
    augment.camera.apply(&mut rgb, size, rng);
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
    /// Each face's age group where its label is one ([`crate::data::Sample::age_group`]).
    pub groups: Vec<Option<crate::data::AgeGroup>>,
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
        groups: indices.iter().map(|&i| set.samples[i].age_group).collect(),
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
            CropSettings { input_size: 8, margin: 1.5, geometry: CropGeometry::default(), in_scene: false };
        let size = settings.cache_size() as usize;
        let pixels: Vec<u8> = (0..size * size * 3).map(|i| (i * 7 % 256) as u8).collect();
        CropSet::from_parts(settings, vec![crate::data::Sample::exact("a".into(), 30.0, true, None)], pixels)
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

    /// Pixel statistics of many camera-degraded copies of one crop against the crop itself.
    fn camera_effect(camera: Camera) -> (f32, f32) {
        let size = 32;
        let crop: Vec<[f32; 3]> = (0..size * size)
            .map(|i| {
                let (x, y) = (i % size, i / size);
                // A sharp pattern, so blur and low resolution show.
                if (x / 4 + y / 4) % 2 == 0 { [200.0, 150.0, 100.0] } else { [40.0, 60.0, 80.0] }
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut mean_diff, mut mean_level) = (0.0, 0.0);
        for _ in 0..40 {
            let mut rgb = crop.clone();
            camera.apply(&mut rgb, size, &mut rng);
            mean_diff +=
                rgb.iter().zip(&crop).map(|(a, b)| (a[0] - b[0]).abs()).sum::<f32>() / rgb.len() as f32;
            mean_level += rgb.iter().map(|v| v[0] + v[1] + v[2]).sum::<f32>() / rgb.len() as f32;
        }
        (mean_diff / 40.0, mean_level / 40.0)
    }

    #[test]
    fn camera_effects_change_the_crop_only_when_asked() {
        let (untouched, plain_level) = camera_effect(Camera::none());
        assert_eq!(untouched, 0.0);
        // Half the pixels sum to 450 over the channels, half to 180.
        assert!((plain_level - 315.0).abs() < 1.0, "{plain_level}");
        let only = |f: fn(&mut Camera)| {
            let mut c = Camera::none();
            f(&mut c);
            camera_effect(c)
        };
        let (blurred, _) = only(|c| c.blur = 1.0);
        let (small, _) = only(|c| c.low_res = 1.0);
        let (jpeg, _) = only(|c| c.jpeg = 1.0);
        let (occluded, _) = only(|c| c.occlude = 1.0);
        let (_, dark_level) = only(|c| c.dark = 1.0);
        for (name, diff) in [("blur", blurred), ("low-res", small), ("jpeg", jpeg), ("occlusion", occluded)] {
            assert!(diff > 2.0, "{name} changed the crop by only {diff}");
        }
        assert!(dark_level < plain_level * 0.8, "low light is darker: {dark_level} vs {plain_level}");
    }

    #[test]
    fn the_default_recipe_degrades_some_crops_and_leaves_others() {
        let set = set_of_one();
        let mut camera_only = Augment::none();
        camera_only.camera = Camera::default();
        let plain = make_batch(&set, &[0], None).pixels;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let changed = (0..200)
            .filter(|_| make_batch(&set, &[0], Some((&camera_only, &mut rng))).pixels != plain)
            .count();
        // At least one of seven effects for 1 - prod(1 - p) of the crops: about 75%.
        assert!((100..190).contains(&changed), "{changed} of 200 crops degraded");
    }
}
