//! Labelled face images and the split: the device library's (`faceage eval` on the board reads
//! them the same way), re-exported under the names the trainer has always used.

pub use faceage_device::labels::*;

/// Age bands are the board's: reports on both sides use the same ones.
pub use faceage_device::counts::{AGE_BANDS, age_band};
