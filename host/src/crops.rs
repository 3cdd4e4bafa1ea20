//! Training crops made by the board's own detect -> align -> crop code, cached on disk.
//!
//! Each image is decoded, its face found with BlazeFace and cropped with the model's
//! [`CropGeometry`] widened by `margin`, so augmentation can rotate and zoom without running
//! out of picture. The central `input_size` pixels of a cached crop are exactly the crop the
//! board makes (same sample points), which evaluation uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail, ensure};
use faceage_device::detect::{FramedDetector, load_board_detector};
use faceage_device::eval::Scene;
use faceage_device::geometry::{BBox, Point};
use faceage_device::imaging::load_rgb;
use faceage_device::pipeline::{MIN_FACE_PX, find_faces, primary_face};
use faceage_device::{BlazeFace, CropGeometry, Face, FaceDetector};
use image::RgbImage;

/// The board's default detector score threshold (`faceage --min-score`).
const BOARD_MIN_SCORE: f32 = 0.5;
use serde::{Deserialize, Serialize};

use crate::data::{Rejected, Sample, fnv1a};
use crate::progress::Progress;
use crate::tensor_file::{self, RawTensor, TensorFile};
use safetensors::Dtype;

/// The cache's layout, in its metadata and its key. v5: the detector's letterbox box-filtered
/// when it shrinks and one face per face (the crops of the board since then; the layout is
/// v4's); v4: safetensors (the Python tools read it with the library; v3 was a magic, a JSON
/// header and the pixels); v3: faces found by the board's framed detector (was: chips padded
/// by the trainer alone).
const CACHE_FORMAT: &str = "faceage-crops-v5";
/// Metadata keys of a cache file: its layout, and the [`CacheHeader`] as JSON.
const FORMAT_KEY: &str = "faceage.format";
const HEADER_KEY: &str = "faceage.crops";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropSettings {
    /// Model input side in pixels.
    pub input_size: u32,
    /// Cached crops cover `margin` times the model crop (at the same pixel scale).
    pub margin: f32,
    pub geometry: CropGeometry,
    /// Each photo placed small on a camera-sized frame first ([`Scene`], as `faceage eval
    /// --scene` places it) and its face found there: the crops a kiosk camera gives, with the
    /// detector's jitter on a small face. Off for the plain crops (and absent from their
    /// caches' keys, which stay as they were).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_scene: bool,
}

impl CropSettings {
    /// The settings `train` uses for a model of this input size and crop geometry (the margin
    /// is training's own, not in the model file), so crops made to measure or read a model
    /// file match the ones its run trained on.
    pub fn for_model(input_size: u32, geometry: CropGeometry) -> Self {
        Self { input_size, margin: 1.25, geometry, in_scene: false }
    }

    /// Side of a cached crop: the input plus an even margin on both sides.
    pub fn cache_size(&self) -> u32 {
        let extra = ((self.input_size as f32 * (self.margin - 1.0)) / 2.0).round() as u32;
        self.input_size + 2 * extra
    }
}

/// Cached crops with their samples; pixels are RGB, `size x size` per crop.
pub struct CropSet {
    pub settings: CropSettings,
    pub samples: Vec<Sample>,
    pub faces: Vec<Face>,
    pixels: Vec<u8>,
}

/// A face and its cached crop pixels, or why the image gave none.
type CropOutcome = Result<(Face, Vec<u8>), String>;

/// What the cache file remembers about one image, keyed by its path and size.
#[derive(Clone, Serialize, Deserialize)]
struct CachedImage {
    path: PathBuf,
    /// File size when cropped: a replaced image is cropped again.
    len: u64,
    /// The face and the index of its crop in the pixel block, or why there is none.
    outcome: Result<(Face, usize), String>,
}

#[derive(Serialize, Deserialize)]
struct CacheHeader {
    settings: CropSettings,
    images: Vec<CachedImage>,
    crops: usize,
}

impl CropSet {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn size(&self) -> u32 {
        self.settings.cache_size()
    }

    /// Raw RGB bytes of cached crop `i`.
    pub fn pixels(&self, i: usize) -> &[u8] {
        let n = (self.size() * self.size() * 3) as usize;
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn wide_crop(&self, i: usize) -> RgbImage {
        RgbImage::from_raw(self.size(), self.size(), self.pixels(i).to_vec()).expect("crop buffer size")
    }

    /// The exact crop the board would feed the model for this image.
    pub fn model_crop(&self, i: usize) -> RgbImage {
        let offset = (self.size() - self.settings.input_size) / 2;
        let s = self.settings.input_size;
        image::imageops::crop_imm(&self.wide_crop(i), offset, offset, s, s).to_image()
    }

    /// The board's crops of the whole set in order, `size` at a time: what a model file reads
    /// (the device library normalises them itself).
    pub fn model_crop_batches(&self, size: usize) -> impl Iterator<Item = Vec<RgbImage>> + '_ {
        let size = size.max(1);
        (0..self.len())
            .step_by(size)
            .map(move |start| (start..(start + size).min(self.len())).map(|i| self.model_crop(i)).collect())
    }

    /// Two views of every face of `self`: its own crops, then in the same order the crops
    /// `other` holds of the same images (another crop path of the same photos), or its own
    /// again where `other` has none. Crop `i + len()` is the second view of crop `i`. Returns
    /// the set and how many second views came from `other`.
    pub fn with_second_views(&self, other: &CropSet) -> Result<(CropSet, usize)> {
        ensure!(
            self.settings.cache_size() == other.settings.cache_size(),
            "second views of {} px crops for crops of {} px",
            other.settings.cache_size(),
            self.settings.cache_size()
        );
        let in_other: HashMap<&Path, usize> =
            other.samples.iter().enumerate().map(|(i, s)| (s.path.as_path(), i)).collect();
        let mut views = CropSet {
            settings: self.settings.clone(),
            samples: [self.samples.clone(), self.samples.clone()].concat(),
            faces: self.faces.clone(),
            pixels: self.pixels.clone(),
        };
        let mut found = 0;
        for (i, sample) in self.samples.iter().enumerate() {
            let (set, at) = match in_other.get(sample.path.as_path()) {
                Some(&j) => {
                    found += 1;
                    (other, j)
                }
                None => (self, i),
            };
            views.faces.push(set.faces[at].clone());
            views.pixels.extend_from_slice(set.pixels(at));
        }
        Ok((views, found))
    }

    /// A set from already made crops (tests, tools).
    pub fn from_parts(settings: CropSettings, samples: Vec<Sample>, pixels: Vec<u8>) -> CropSet {
        let faces = samples.iter().map(|_| whole_crop_face(settings.cache_size())).collect();
        CropSet { settings, samples, faces, pixels }
    }

    /// A subset, in the given order (used for splits).
    pub fn subset(&self, indices: &[usize]) -> CropSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.pixels(0).len());
        for &i in indices {
            pixels.extend_from_slice(self.pixels(i));
        }
        CropSet {
            settings: self.settings.clone(),
            samples: indices.iter().map(|&i| self.samples[i].clone()).collect(),
            faces: indices.iter().map(|&i| self.faces[i].clone()).collect(),
            pixels,
        }
    }

    /// The crops for `samples`, from the cache in `cache_dir` where it has them; the others
    /// are detected and cropped now and added to the cache. One cache per crop settings and
    /// detector serves every subset of a dataset (a `--limit` smoke run, then the full run).
    /// Images that cannot be used (undecodable, no face found) are returned with the reason.
    pub fn build_or_load(
        samples: &[Sample],
        settings: &CropSettings,
        detector_path: &Path,
        cache_dir: &Path,
        threads: usize,
    ) -> Result<(CropSet, Vec<Rejected>)> {
        let file = cache_dir.join(format!("crops-{:016x}.safetensors", cache_key(settings, detector_path)));
        let (mut header, mut pixels) = match Self::read_cache(&file, settings) {
            Ok(cache) => cache,
            Err(e) => {
                if file.exists() {
                    eprintln!("crops: cache {} unusable ({e:#}); starting a new one", file.display());
                }
                (CacheHeader { settings: settings.clone(), images: Vec::new(), crops: 0 }, Vec::new())
            }
        };
        let file_len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let known: std::collections::HashMap<(PathBuf, u64), usize> =
            header.images.iter().enumerate().map(|(i, c)| ((c.path.clone(), c.len), i)).collect();
        let lens: Vec<u64> = samples.iter().map(|s| file_len(&s.path)).collect();
        // Images are known by their absolute path, so `--data ../x` and `--data /abs/x` share
        // one cache rather than cropping everything again.
        let keys: Vec<PathBuf> = samples
            .iter()
            .map(|s| std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone()))
            .collect();
        let missing: Vec<usize> =
            (0..samples.len()).filter(|&i| !known.contains_key(&(keys[i].clone(), lens[i]))).collect();
        if !missing.is_empty() {
            let todo: Vec<Sample> = missing.iter().map(|&i| samples[i].clone()).collect();
            let outcomes = Self::detect_and_crop(&todo, settings, detector_path, threads)?;
            let crop_len = settings.cache_size() as usize * settings.cache_size() as usize * 3;
            for (&i, outcome) in missing.iter().zip(outcomes) {
                let outcome = outcome.map(|(face, crop)| {
                    debug_assert_eq!(crop.len(), crop_len);
                    pixels.extend_from_slice(&crop);
                    header.crops += 1;
                    (face, header.crops - 1)
                });
                header.images.push(CachedImage { path: keys[i].clone(), len: lens[i], outcome });
            }
            std::fs::create_dir_all(cache_dir)
                .with_context(|| format!("{}: cannot create", cache_dir.display()))?;
            Self::write_cache(&file, &header, &pixels)?;
            eprintln!(
                "crops: {} new images cropped, cache {} holds {}",
                missing.len(),
                file.display(),
                header.images.len()
            );
        } else {
            eprintln!("crops: all {} images from cache {}", samples.len(), file.display());
        }

        let index: std::collections::HashMap<(&Path, u64), &CachedImage> =
            header.images.iter().map(|c| ((c.path.as_path(), c.len), c)).collect();
        let crop_len = settings.cache_size() as usize * settings.cache_size() as usize * 3;
        let mut set = CropSet {
            settings: settings.clone(),
            samples: Vec::new(),
            faces: Vec::new(),
            pixels: Vec::new(),
        };
        let mut rejected = Vec::new();
        for ((sample, key), len) in samples.iter().zip(&keys).zip(lens) {
            match &index[&(key.as_path(), len)].outcome {
                Ok((face, at)) => {
                    set.samples.push(sample.clone());
                    set.faces.push(face.clone());
                    set.pixels.extend_from_slice(&pixels[at * crop_len..(at + 1) * crop_len]);
                }
                Err(reason) => rejected.push(Rejected { path: sample.path.clone(), reason: reason.clone() }),
            }
        }
        Ok((set, rejected))
    }

    /// Detects and crops every sample with `threads` detector instances.
    fn detect_and_crop(
        samples: &[Sample],
        settings: &CropSettings,
        detector_path: &Path,
        threads: usize,
    ) -> Result<Vec<CropOutcome>> {
        let threads = threads.max(1);
        let detectors: Vec<FramedDetector<BlazeFace>> = (0..threads)
            .map(|_| load_board_detector(detector_path, BOARD_MIN_SCORE))
            .collect::<Result<_>>()?;
        let results: Vec<Mutex<Option<CropOutcome>>> = samples.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let bar = Progress::new(samples.len() as u64, "detect + crop");
        std::thread::scope(|scope| {
            for mut detector in detectors {
                let (next, results, bar) = (&next, &results, &bar);
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= samples.len() {
                            break;
                        }
                        let outcome = crop_sample(&samples[i].path, settings, &mut detector);
                        *results[i].lock().unwrap() = Some(outcome);
                        bar.inc(1);
                    }
                });
            }
        });
        bar.finish();
        Ok(results.into_iter().map(|r| r.into_inner().unwrap().expect("every sample processed")).collect())
    }

    /// The pixels as one tensor `crops` (u8, `[crops, size, size, 3]`), the header as JSON in
    /// the metadata; whole or not at all, so a killed run never leaves half a cache behind.
    fn write_cache(file: &Path, header: &CacheHeader, pixels: &[u8]) -> Result<()> {
        let size = header.settings.cache_size() as usize;
        let metadata = HashMap::from([
            (FORMAT_KEY.to_string(), CACHE_FORMAT.to_string()),
            (HEADER_KEY.to_string(), serde_json::to_string(header)?),
        ]);
        tensor_file::save(
            file,
            &[("crops", RawTensor::u8(vec![header.crops, size, size, 3], pixels))],
            metadata,
        )
    }

    fn read_cache(file: &Path, settings: &CropSettings) -> Result<(CacheHeader, Vec<u8>)> {
        let cache = TensorFile::open(file)?;
        ensure!(cache.meta(FORMAT_KEY)? == CACHE_FORMAT, "not a crop cache of layout {CACHE_FORMAT}");
        let header: CacheHeader = serde_json::from_str(cache.meta(HEADER_KEY)?)?;
        ensure!(header.settings == *settings, "made with other crop settings");
        let size = settings.cache_size() as usize;
        let pixels = cache.into_bytes("crops", Dtype::U8, &[header.crops, size, size, 3])?;
        Ok((header, pixels))
    }
}

/// Decode, find the face as the board does, crop. Errors are reasons a user can act on.
fn crop_sample(
    path: &Path,
    settings: &CropSettings,
    detector: &mut dyn FaceDetector,
) -> Result<(Face, Vec<u8>), String> {
    let mut image = load_rgb(path).map_err(|e| format!("{:#}", e.root_cause()))?;
    if settings.in_scene {
        // Placed by the file name, as `faceage eval --scene` places a photo, with a key of its
        // own: where a face sits should not be the same for training and measuring.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        image = Scene::default().frame(&image, fnv1a(0x7a1e5ce7e, name.as_bytes()));
    }
    let face = board_face(&image, detector)?;
    let size = settings.cache_size();
    let wide = settings.geometry.widened(size as f32 / settings.input_size as f32);
    Ok((face.clone(), wide.crop(&image, &face, size).into_raw()))
}

/// The face of a labelled one-person image, found exactly as `faceage classify` and
/// `faceage eval` find it (the board's framed detector, its smallest face, its pick).
pub fn board_face(image: &RgbImage, detector: &mut dyn FaceDetector) -> Result<Face, String> {
    let faces = find_faces(detector, image, MIN_FACE_PX).map_err(|e| format!("detector failed: {e:#}"))?;
    if let Some(face) = primary_face(&faces) {
        return Ok(face.clone());
    }
    // Why not, for the run's summary: nothing at all, or only faces too small to read.
    let any = detector.detect(image).map(|f| !f.is_empty()).unwrap_or(false);
    Err(if any {
        format!("no face detected of at least {MIN_FACE_PX} px (only smaller ones)")
    } else {
        format!("no face detected at score {BOARD_MIN_SCORE} or more")
    })
}

fn whole_crop_face(size: u32) -> Face {
    let s = size as f32;
    Face {
        bbox: BBox { cx: s / 2.0, cy: s / 2.0, w: s, h: s },
        landmarks: [Point::new(s / 2.0, s / 2.0); 6],
        score: 1.0,
    }
}

/// Identifies a crop cache: the crop settings and the detector.
fn cache_key(settings: &CropSettings, detector_path: &Path) -> u64 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(CACHE_FORMAT.as_bytes());
    bytes.extend_from_slice(serde_json::to_string(settings).unwrap_or_default().as_bytes());
    let detector_len = std::fs::metadata(detector_path).map(|m| m.len()).unwrap_or(0);
    bytes.extend_from_slice(&detector_len.to_le_bytes());
    fnv1a(0, &bytes)
}

/// Folder of default caches, beside the run outputs.
pub fn default_cache_dir() -> PathBuf {
    PathBuf::from("runs/cache")
}

pub fn ensure_some(set: &CropSet, what: &str) -> Result<()> {
    if set.is_empty() {
        bail!("no usable {what} images: every image was rejected (see the messages above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set of one-colour crops, crop `k` filled with `values[k]`, for the images `names`.
    fn set(names: &[&str], values: &[u8]) -> CropSet {
        let settings = CropSettings::for_model(8, CropGeometry::default());
        let side = settings.cache_size() as usize;
        let samples = names.iter().map(|n| Sample::exact(PathBuf::from(n), 30.0, true, None)).collect();
        let pixels = values.iter().flat_map(|&v| vec![v; side * side * 3]).collect();
        CropSet::from_parts(settings, samples, pixels)
    }

    #[test]
    fn second_views_follow_the_first_in_order_and_fall_back_to_the_plain_crop() {
        let plain = set(&["a.jpg", "b.jpg", "c.jpg"], &[1, 2, 3]);
        // The frame path lost "b" (no face found) and holds them in another order.
        let scene = set(&["c.jpg", "a.jpg"], &[30, 10]);
        let (views, found) = plain.with_second_views(&scene).unwrap();
        assert_eq!(found, 2);
        assert_eq!(views.len(), 6);
        let firsts: Vec<u8> = (0..6).map(|i| views.pixels(i)[0]).collect();
        assert_eq!(firsts, [1, 2, 3, 10, 2, 30]);
        for i in 0..3 {
            assert_eq!(views.samples[i + 3].path, plain.samples[i].path, "view {i} keeps its label");
        }
        let other_size =
            CropSet::from_parts(CropSettings::for_model(16, CropGeometry::default()), Vec::new(), Vec::new());
        assert!(plain.with_second_views(&other_size).is_err());
    }

    #[test]
    fn plain_crop_settings_keep_the_cache_key_they_had() {
        let plain = CropSettings::for_model(64, CropGeometry::default());
        assert!(!serde_json::to_string(&plain).unwrap().contains("in_scene"), "old caches stay valid");
        let scene = CropSettings { in_scene: true, ..plain.clone() };
        assert_ne!(cache_key(&plain, Path::new("d")), cache_key(&scene, Path::new("d")));
    }
}
