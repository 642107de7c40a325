//! The mask as a PNG, for clients that want pixels rather than outlines (the `return_mask` form
//! field): 8-bit grayscale, 255 foreground and 0 background, at the uploaded image's size, carried
//! base64-encoded in the JSON response. A binary mask compresses to a few kilobytes.

use base64::Engine as _;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, ImageError};

/// Why a mask could not be encoded (a server-side bug: the engine returned the wrong size).
#[derive(Debug, thiserror::Error)]
pub enum MaskPngError {
    /// The mask does not hold `width * height` values.
    #[error("mask holds {got} values, expected {expected}")]
    Length {
        /// `width * height`.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The PNG encoder failed.
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] ImageError),
}

/// Encodes `mask` (`width`×`height`, row-major, non-zero = foreground) as a base64 PNG.
pub fn mask_png(mask: &[u8], width: u32, height: u32) -> Result<String, MaskPngError> {
    let expected = width as usize * height as usize;
    if mask.len() != expected {
        return Err(MaskPngError::Length {
            expected,
            got: mask.len(),
        });
    }
    let pixels: Vec<u8> = mask.iter().map(|&m| if m != 0 { 255 } else { 0 }).collect();
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
        .write_image(&pixels, width, height, ExtendedColorType::L8)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_png_decoder() {
        let (w, h) = (7u32, 3u32);
        let mask: Vec<u8> = (0..w * h).map(|i| u8::from(i % 3 == 0)).collect();
        let encoded = mask_png(&mask, w, h).expect("encodes");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        let decoded = image::load_from_memory(&bytes).expect("png").to_luma8();
        assert_eq!(decoded.dimensions(), (w, h));
        let back: Vec<u8> = decoded
            .as_raw()
            .iter()
            .map(|&v| u8::from(v == 255))
            .collect();
        assert_eq!(back, mask);
    }

    #[test]
    fn wrong_length_is_an_error_not_a_panic() {
        assert!(matches!(
            mask_png(&[1, 0, 1], 2, 2),
            Err(MaskPngError::Length {
                expected: 4,
                got: 3
            })
        ));
    }
}
