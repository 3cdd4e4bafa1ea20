//! The network and its training machinery, on candle.

pub mod conv;
pub mod fused;
pub mod loss;
pub mod model;
pub mod optim;
pub mod params;
