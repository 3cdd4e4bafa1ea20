//! Pictures of a run: training curves and a prediction gallery.

use std::path::Path;

use anyhow::{Context, Result};
use faceage_device::chart::{PALETTE, Series, line_chart, side_by_side};
use faceage_device::draw::{self, BLACK, Font, GREEN, RED, WHITE};
use image::RgbImage;

use crate::crops::CropSet;
use crate::metrics::Prediction;
use crate::run_dir::EpochRecord;

/// Loss, age MAE and gender accuracy per epoch, train against validation.
pub fn write_curves(records: &[EpochRecord], path: &Path) -> Result<()> {
    let pair = |train: fn(&EpochRecord) -> f64, val: fn(&EpochRecord) -> f64| {
        vec![
            Series { name: "train".into(), color: PALETTE[0], values: records.iter().map(train).collect() },
            Series { name: "val".into(), color: PALETTE[1], values: records.iter().map(val).collect() },
        ]
    };
    let charts = [
        line_chart("loss", "epoch", &pair(|r| r.train_loss, |r| r.val_loss), 360, 260),
        line_chart("age MAE (years)", "epoch", &pair(|r| r.train_age_mae, |r| r.val_age_mae), 360, 260),
        line_chart(
            "gender accuracy (%)",
            "epoch",
            &pair(|r| r.train_gender_accuracy, |r| r.val_gender_accuracy),
            360,
            260,
        ),
    ];
    side_by_side(&charts).save(path).with_context(|| format!("{}: cannot write", path.display()))
}

/// A grid of test faces with "Age: predicted (true)" and "Gender: predicted (true)", the
/// gender line green when right and red when wrong.
pub fn write_gallery(set: &CropSet, predictions: &[Prediction], count: usize, path: &Path) -> Result<()> {
    let cols = 6usize;
    let n = count.min(set.len());
    let rows = n.div_ceil(cols).max(1);
    let tile = 128u32;
    let text_h = 30u32;
    let mut sheet = RgbImage::from_pixel(cols as u32 * tile, rows as u32 * (tile + text_h), WHITE);
    // Spread the picks over the set instead of taking the first names.
    let step = (set.len() / n.max(1)).max(1);
    for k in 0..n {
        let i = k * step;
        let crop = set.model_crop(i);
        let big = image::imageops::resize(&crop, tile, tile, image::imageops::FilterType::Triangle);
        let (x, y) = ((k % cols) as u32 * tile, (k / cols) as u32 * (tile + text_h));
        image::imageops::replace(&mut sheet, &big, x as i64, y as i64);
        let (s, p) = (&set.samples[i], &predictions[i]);
        let letter = |female: bool| if female { 'F' } else { 'M' };
        let age = format!("Age: {:.0} ({:.0})", p.age, s.age);
        let gender = format!("Gender: {} ({})", letter(p.female >= 0.5), letter(s.female));
        let ok = (p.female >= 0.5) == s.female;
        draw::text(&mut sheet, x as i32 + 3, (y + tile) as i32 + 3, &age, BLACK, Font::Small);
        draw::text(
            &mut sheet,
            x as i32 + 3,
            (y + tile) as i32 + 16,
            &gender,
            if ok { GREEN } else { RED },
            Font::Small,
        );
    }
    sheet.save(path).with_context(|| format!("{}: cannot write", path.display()))
}
