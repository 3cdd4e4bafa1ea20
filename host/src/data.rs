//! Labelled face images and the split: the device library's (`faceage eval` on the board reads
//! them the same way), re-exported under the names the trainer has always used.

pub use faceage_device::labels::*;

/// Age bands are the board's: reports on both sides use the same ones.
pub use faceage_device::counts::{AGE_BANDS, age_band};

/// An independent seed for (`a`, `b`) under `seed`: every epoch's order and every batch's
/// augmentation can be drawn again on resume.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    fnv1a(seed, &[a.to_le_bytes(), b.to_le_bytes()].concat())
}
