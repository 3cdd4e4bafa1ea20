//! faceage on the board: the inference pipeline and everything that must behave the same on
//! the workstation that trains the model and on the board that runs it.
//!
//! ```text
//! frame ─► detect (BlazeFace) ─► align + crop (model file's geometry) ─► age/gender (tract)
//!       ─► track + fuse ─► count ─► counts log / kiosk view
//! ```
//!
//! The host crate depends on this library (without the `camera`, `kiosk` and `cli` features)
//! to build its training crops and to verify exported models with the board's own code.

pub mod age_gender;
pub mod align;
pub mod bands;
pub mod bench;
pub mod calibration;
pub mod chart;
pub mod counts;
pub mod detect;
pub mod draw;
pub mod eval;
pub mod events;
pub mod figures;
pub mod files;
pub mod fleet;
pub mod geometry;
pub mod imaging;
#[cfg(feature = "kiosk")]
pub mod kiosk;
pub mod labels;
pub mod live;
pub mod model_file;
pub mod newest;
pub mod onnx;
pub mod pipeline;
pub mod report;
pub mod run_loop;
#[cfg(feature = "signals")]
pub mod signals;
pub mod source;
pub mod track;

pub use age_gender::{AgeGenderModel, Estimate, Gender};
pub use align::CropGeometry;
pub use detect::{BlazeFace, BlazeFaceVariant, Face, FaceDetector};
pub use model_file::{ModelContract, QuantFormat};
pub use pipeline::{FaceReading, Pipeline};
