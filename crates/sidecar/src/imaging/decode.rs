//! Decoding uploaded image bytes (PNG, JPEG, TIFF) into pixels, with limits checked first.
//!
//! Microscopes write 8- and 16-bit, grayscale or colour files. We keep the samples as
//! decoded (8 or 16 bits, 1 or 3 channels) instead of widening everything to RGB8: grayscale
//! stays a third of the size, and 16-bit data keeps its full precision until the
//! pre-processing pass turns it into `f32` (`value / 65535`), so no information is thrown
//! away by an intermediate `value / 257` rounding to 8 bits. The conversion to three channels
//! happens in that same pass (a gray sample feeds all three planes), which gives exactly what
//! converting to RGB first would give.
//!
//! Alpha is dropped without compositing, as PIL's `convert("RGB")` in the original service
//! did. EXIF orientation is not applied (the original did not either), so polygon
//! coordinates refer to the stored pixel grid. Multi-page TIFFs decode their first page.

use std::io::Cursor;

use gpupool_executor::{RawImage, RawImageError, Samples};

use image::{
    DynamicImage, ImageBuffer, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, Luma,
    Rgb,
};
use thiserror::Error;

/// A grayscale image with 16-bit samples, as microscopy cameras write them.
pub type Gray16Image = ImageBuffer<Luma<u16>, Vec<u16>>;
/// An RGB image with 16-bit samples.
pub type Rgb16Image = ImageBuffer<Rgb<u16>, Vec<u16>>;

/// Limits applied before any pixel buffer is allocated, so one request cannot exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`, checked against the file header before decoding.
    pub max_pixels: u64,
    /// Largest number of bytes the decoder may allocate (output buffer included).
    pub max_alloc_bytes: u64,
}

impl DecodeLimits {
    /// Default pixel limit: 40 megapixels (e.g. 6324×6324), above any single microscope frame
    /// we know of. What one image holds in host memory is [`ImageHeader::host_bytes`].
    pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_alloc_bytes: Self::DEFAULT_MAX_PIXELS * ImageHeader::WIDEST_BYTES_PER_PIXEL,
        }
    }
}

/// The container formats the service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Portable Network Graphics.
    Png,
    /// JPEG (baseline or progressive, 8-bit).
    Jpeg,
    /// TIFF, as written by most microscope software.
    Tiff,
}

impl SourceFormat {
    /// Lower-case name, used in error messages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Png => "png",
            SourceFormat::Jpeg => "jpeg",
            SourceFormat::Tiff => "tiff",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            SourceFormat::Png => ImageFormat::Png,
            SourceFormat::Jpeg => ImageFormat::Jpeg,
            SourceFormat::Tiff => ImageFormat::Tiff,
        }
    }
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an upload could not be decoded. Every variant is the client's problem (a 4xx); the
/// message tells the client what to change.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The request carried no image bytes at all.
    #[error("the uploaded file is empty; send a PNG, JPEG or TIFF image")]
    EmptyBody,
    /// The bytes are not a PNG, JPEG or TIFF file.
    #[error("the uploaded file is not a PNG, JPEG or TIFF image")]
    UnsupportedFormat,
    /// The container is supported but this file uses a feature we cannot decode.
    #[error("this {format} file uses a feature that is not supported ({detail}); re-save it as 8- or 16-bit grayscale or RGB")]
    UnsupportedEncoding {
        /// The detected container format.
        format: SourceFormat,
        /// What the decoder could not handle.
        detail: String,
    },
    /// The header declares an image without pixels.
    #[error("the image is {width}x{height}; it must have at least one pixel")]
    ZeroSize {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },
    /// The header declares more pixels than this server accepts.
    #[error("the image is {width}x{height} ({} pixels), above the limit of {limit} pixels; downscale or crop it", u64::from(*width) * u64::from(*height))]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The configured pixel limit.
        limit: u64,
    },
    /// Decoding would need more memory than allowed (e.g. very wide samples or many channels).
    #[error("decoding this image needs more than {limit_bytes} bytes of memory; send it as 8- or 16-bit grayscale or RGB, or smaller")]
    TooMuchMemory {
        /// The configured allocation limit in bytes.
        limit_bytes: u64,
    },
    /// The file ends before the image data does (an interrupted upload or a cut file).
    #[error("the {format} file is truncated ({detail}); upload the complete file")]
    Truncated {
        /// The detected container format.
        format: SourceFormat,
        /// What the decoder reported.
        detail: String,
    },
    /// The file is damaged or not what its signature claims.
    #[error("the {format} file is corrupt ({detail})")]
    Corrupt {
        /// The detected container format.
        format: SourceFormat,
        /// What the decoder reported.
        detail: String,
    },
}

impl DecodeError {
    /// A stable, bounded identifier for the JSON `error_type` field and metric labels.
    pub fn error_type(&self) -> &'static str {
        match self {
            DecodeError::EmptyBody => "empty_body",
            DecodeError::UnsupportedFormat => "unsupported_format",
            DecodeError::UnsupportedEncoding { .. } => "unsupported_encoding",
            DecodeError::ZeroSize { .. } => "zero_size",
            DecodeError::TooManyPixels { .. } => "too_many_pixels",
            DecodeError::TooMuchMemory { .. } => "too_much_memory",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Corrupt { .. } => "corrupt",
        }
    }
}

/// Decoded samples in the layout the pre-processing pass reads directly.
#[derive(Debug, Clone)]
pub(crate) enum Pixels {
    Gray8(image::GrayImage),
    Rgb8(image::RgbImage),
    Gray16(Gray16Image),
    Rgb16(Rgb16Image),
}

/// An uploaded image after decoding: 1 or 3 channels of 8- or 16-bit samples.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub(crate) pixels: Pixels,
    format: SourceFormat,
}

impl DecodedImage {
    /// Width in pixels; polygons are reported in this coordinate system.
    pub fn width(&self) -> u32 {
        self.dimensions().0
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.dimensions().1
    }

    /// `(width, height)` in pixels.
    pub fn dimensions(&self) -> (u32, u32) {
        match &self.pixels {
            Pixels::Gray8(i) => i.dimensions(),
            Pixels::Rgb8(i) => i.dimensions(),
            Pixels::Gray16(i) => i.dimensions(),
            Pixels::Rgb16(i) => i.dimensions(),
        }
    }

    /// The container the image came in, for logs and metrics.
    pub fn source_format(&self) -> SourceFormat {
        self.format
    }

    /// Bits per sample kept after decoding: 8 or 16.
    pub fn bits_per_sample(&self) -> u8 {
        match &self.pixels {
            Pixels::Gray8(_) | Pixels::Rgb8(_) => 8,
            Pixels::Gray16(_) | Pixels::Rgb16(_) => 16,
        }
    }

    /// Channels kept after decoding: 1 (grayscale) or 3 (RGB).
    pub fn channels(&self) -> u8 {
        match &self.pixels {
            Pixels::Gray8(_) | Pixels::Gray16(_) => 1,
            Pixels::Rgb8(_) | Pixels::Rgb16(_) => 3,
        }
    }

    /// The pixels as the engine takes them: interleaved samples, copied into host memory the
    /// device reads asynchronously (so call it on a blocking thread); consumes the image. Fails
    /// for an image without pixels, which decoding already refuses, or when that memory cannot
    /// be had.
    pub fn into_raw(self) -> Result<RawImage, RawImageError> {
        let (width, height) = self.dimensions();
        let (channels, samples) = match self.pixels {
            Pixels::Gray8(i) => (1, Samples::U8(i.into_raw())),
            Pixels::Rgb8(i) => (3, Samples::U8(i.into_raw())),
            Pixels::Gray16(i) => (1, Samples::U16(i.into_raw())),
            Pixels::Rgb16(i) => (3, Samples::U16(i.into_raw())),
        };
        RawImage::new(width, height, channels, &samples)
    }

    fn from_dynamic(format: SourceFormat, image: DynamicImage) -> Result<Self, DecodeError> {
        let pixels = match image {
            DynamicImage::ImageLuma8(i) => Pixels::Gray8(i),
            DynamicImage::ImageRgb8(i) => Pixels::Rgb8(i),
            DynamicImage::ImageLuma16(i) => Pixels::Gray16(i),
            DynamicImage::ImageRgb16(i) => Pixels::Rgb16(i),
            i @ DynamicImage::ImageLumaA8(_) => Pixels::Gray8(i.to_luma8()),
            i @ DynamicImage::ImageRgba8(_) => Pixels::Rgb8(i.to_rgb8()),
            i @ DynamicImage::ImageLumaA16(_) => Pixels::Gray16(i.to_luma16()),
            i @ DynamicImage::ImageRgba16(_) => Pixels::Rgb16(i.to_rgb16()),
            // Float samples have no agreed range (0..1? raw counts?); refusing is more honest
            // than guessing a scale that silently saturates the image.
            other => {
                return Err(DecodeError::UnsupportedEncoding {
                    format,
                    detail: format!("{:?} samples", other.color()),
                })
            }
        };
        Ok(DecodedImage { pixels, format })
    }
}

/// What a file's header says about the image, read before any pixel buffer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// The container format.
    pub format: SourceFormat,
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
    /// Bytes of the decoder's output buffer (all channels, alpha included, as stored).
    pub decoded_bytes: u64,
    /// Whether the stored samples carry alpha (dropped by decoding).
    pub has_alpha: bool,
    /// Channels kept after decoding: 1 (grayscale) or 3 (colour).
    pub channels: u8,
    /// Bytes per sample: 1 or 2.
    pub bytes_per_sample: u8,
}

impl ImageHeader {
    /// Host memory post-processing needs per image pixel at its peak beside the probabilities:
    /// the u8 mask, its framed copy, the contour tracer's i32 labels, and room for runs and
    /// points.
    pub const POSTPROCESS_BYTES_PER_PIXEL: u64 = 8;
    /// The f32 probabilities per pixel, which arrive in pinned memory.
    pub const PROBABILITY_BYTES_PER_PIXEL: u64 = 4;
    /// Bytes per pixel of the widest layout accepted: RGBA with 16-bit samples.
    pub const WIDEST_BYTES_PER_PIXEL: u64 = 8;

    /// What the widest image of `max_pixels` pixels holds ([`Self::host_bytes`] of 16-bit
    /// RGBA): an image-memory budget below it refuses some images the pixel limit accepts.
    pub fn largest_host_bytes(max_pixels: u64) -> u64 {
        ImageHeader {
            format: SourceFormat::Tiff,
            // One row of them (pixel counts past u32::MAX are beyond any decoder anyway).
            width: u32::try_from(max_pixels).unwrap_or(u32::MAX),
            height: 1,
            decoded_bytes: max_pixels.saturating_mul(Self::WIDEST_BYTES_PER_PIXEL),
            has_alpha: true,
            channels: 3,
            bytes_per_sample: 2,
        }
        .host_bytes()
    }

    /// Pixels in the image.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The most host memory this image holds on its way through the pipeline, counted as one
    /// sum (an upper bound: the phases overlap only in part): the decoded samples; beside them a
    /// second copy of the samples kept (made while alpha is dropped, and by the engine's copy into
    /// pinned memory); then the probabilities (pinned) and the post-processing buffers. Pinned
    /// blocks count at their size in libtorch's pinned pool, which rounds up to a power of two.
    pub fn host_bytes(&self) -> u64 {
        let pinned = |bytes: u64| bytes.checked_next_power_of_two().unwrap_or(u64::MAX);
        let pixels = self.pixels();
        let kept =
            pixels.saturating_mul(u64::from(self.channels) * u64::from(self.bytes_per_sample));
        self.decoded_bytes
            .saturating_add(pinned(kept))
            .saturating_add(pinned(
                pixels.saturating_mul(Self::PROBABILITY_BYTES_PER_PIXEL),
            ))
            .saturating_add(pixels.saturating_mul(Self::POSTPROCESS_BYTES_PER_PIXEL))
    }
}

/// Reads an uploaded file's header and checks it against `limits` without decoding pixels, so
/// the caller can reserve memory for the image before decoding it.
pub fn read_header(bytes: &[u8], limits: &DecodeLimits) -> Result<ImageHeader, DecodeError> {
    open(bytes, limits).map(|(header, _)| header)
}

/// Decodes an uploaded PNG, JPEG or TIFF file.
///
/// The header is read first and the declared size checked against `limits` before any pixel
/// buffer is allocated, so a small file claiming a huge image (a decompression bomb) costs
/// nothing.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    let (header, decoder) = open(bytes, limits)?;
    let format = header.format;
    let image = DynamicImage::from_decoder(decoder).map_err(|e| classify(format, limits, e))?;
    if format == SourceFormat::Jpeg && !jpeg_has_end(bytes) {
        // The JPEG decoder fills a cut file's missing blocks with grey instead of failing;
        // segmenting half an image would return plausible but wrong polygons.
        return Err(DecodeError::Truncated {
            format,
            detail: "no end-of-image marker after the last scan".to_owned(),
        });
    }
    DecodedImage::from_dynamic(format, image)
}

/// Identifies the format, parses the header (no pixel buffer exists yet) and checks the
/// declared size against `limits`; returns the header and the decoder, ready to decode.
fn open<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
) -> Result<(ImageHeader, impl ImageDecoder + 'a), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::EmptyBody);
    }
    let format = match image::guess_format(bytes) {
        Ok(ImageFormat::Png) => SourceFormat::Png,
        Ok(ImageFormat::Jpeg) => SourceFormat::Jpeg,
        Ok(ImageFormat::Tiff) => SourceFormat::Tiff,
        _ => return Err(DecodeError::UnsupportedFormat),
    };
    let mut image_limits = Limits::no_limits();
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    reader.limits(image_limits);
    let decoder = reader.into_decoder().map_err(|e| {
        // The PNG decoder refuses a zero dimension as a format error; say what is wrong.
        match png_dimensions(bytes) {
            Some((width, height)) if format == SourceFormat::Png && (width == 0 || height == 0) => {
                DecodeError::ZeroSize { width, height }
            }
            _ => classify(format, limits, e),
        }
    })?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSize { width, height });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    if decoder.total_bytes() > limits.max_alloc_bytes {
        return Err(DecodeError::TooMuchMemory {
            limit_bytes: limits.max_alloc_bytes,
        });
    }
    let color = decoder.color_type();
    let stored_channels = color.channel_count().max(1);
    let header = ImageHeader {
        format,
        width,
        height,
        decoded_bytes: decoder.total_bytes(),
        has_alpha: color.has_alpha(),
        channels: if color.has_color() { 3 } else { 1 },
        bytes_per_sample: (color.bytes_per_pixel() / stored_channels).max(1),
    };
    Ok((header, decoder))
}

/// Whether an end-of-image marker (`FF D9`) follows the last start-of-scan (`FF DA`).
/// Entropy-coded data escapes `FF`, so these byte pairs only occur as markers; looking for
/// the *last* ones skips an EXIF thumbnail's own markers.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) else {
        return false;
    };
    !bytes[end..].windows(2).any(|w| w == [0xFF, 0xDA])
}

/// Width and height from a PNG's IHDR chunk, which the format requires to come first.
fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(8..24)?;
    if &ihdr[4..8] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(ihdr[8..12].try_into().ok()?);
    let height = u32::from_be_bytes(ihdr[12..16].try_into().ok()?);
    Some((width, height))
}

/// Maps the image crate's error to the variant a client can act on.
fn classify(format: SourceFormat, limits: &DecodeLimits, error: ImageError) -> DecodeError {
    match error {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated {
                format,
                detail: e.to_string(),
            }
        }
        ImageError::Limits(_) => DecodeError::TooMuchMemory {
            limit_bytes: limits.max_alloc_bytes,
        },
        ImageError::Unsupported(e) => DecodeError::UnsupportedEncoding {
            format,
            detail: e.to_string(),
        },
        other => {
            let detail = other.to_string();
            // Some decoders report a short file as a format error rather than an I/O error.
            let lower = detail.to_ascii_lowercase();
            let short = ["eof", "end of file", "truncat", "not enough bytes"];
            if short.iter().any(|s| lower.contains(s)) {
                DecodeError::Truncated { format, detail }
            } else {
                DecodeError::Corrupt { format, detail }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, RgbImage, RgbaImage};

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encode test image");
        out.into_inner()
    }

    fn gray8() -> GrayImage {
        GrayImage::from_fn(37, 23, |x, y| Luma([(x * 7 + y * 3) as u8]))
    }

    fn rgb8() -> RgbImage {
        RgbImage::from_fn(37, 23, |x, y| Rgb([x as u8 * 5, y as u8 * 9, 200]))
    }

    fn gray16() -> Gray16Image {
        Gray16Image::from_fn(37, 23, |x, y| Luma([(x * 1700 + y * 13) as u16]))
    }

    fn rgb16() -> Rgb16Image {
        Rgb16Image::from_fn(37, 23, |x, y| {
            Rgb([x as u16 * 1000, y as u16 * 2000, 65535])
        })
    }

    fn decode(bytes: &[u8]) -> Result<DecodedImage, DecodeError> {
        decode_image(bytes, &DecodeLimits::default())
    }

    use gpupool_tests::images::png_header_only;

    #[test]
    fn decodes_every_supported_depth_and_layout() {
        let cases: Vec<(DynamicImage, ImageFormat, SourceFormat, u8, u8)> = vec![
            (gray8().into(), ImageFormat::Png, SourceFormat::Png, 8, 1),
            (rgb8().into(), ImageFormat::Png, SourceFormat::Png, 8, 3),
            (gray16().into(), ImageFormat::Png, SourceFormat::Png, 16, 1),
            (rgb16().into(), ImageFormat::Png, SourceFormat::Png, 16, 3),
            (gray8().into(), ImageFormat::Jpeg, SourceFormat::Jpeg, 8, 1),
            (rgb8().into(), ImageFormat::Jpeg, SourceFormat::Jpeg, 8, 3),
            (gray8().into(), ImageFormat::Tiff, SourceFormat::Tiff, 8, 1),
            (rgb8().into(), ImageFormat::Tiff, SourceFormat::Tiff, 8, 3),
            (
                gray16().into(),
                ImageFormat::Tiff,
                SourceFormat::Tiff,
                16,
                1,
            ),
            (rgb16().into(), ImageFormat::Tiff, SourceFormat::Tiff, 16, 3),
        ];
        for (image, encoding, format, bits, channels) in cases {
            let decoded = decode(&encode(image, encoding)).expect("decodes");
            assert_eq!(decoded.dimensions(), (37, 23), "{encoding:?}");
            assert_eq!(decoded.source_format(), format);
            assert_eq!(decoded.bits_per_sample(), bits, "{encoding:?}");
            assert_eq!(decoded.channels(), channels, "{encoding:?}");
        }
    }

    #[test]
    fn sixteen_bit_samples_survive_unchanged() {
        let decoded = decode(&encode(gray16().into(), ImageFormat::Tiff)).expect("decodes");
        match decoded.pixels {
            Pixels::Gray16(i) => assert_eq!(i, gray16()),
            other => panic!("expected 16-bit gray, got {other:?}"),
        }
    }

    #[test]
    fn alpha_is_dropped() {
        let rgba = RgbaImage::from_pixel(4, 4, image::Rgba([10, 20, 30, 0]));
        let decoded = decode(&encode(rgba.into(), ImageFormat::Png)).expect("decodes");
        match decoded.pixels {
            Pixels::Rgb8(i) => assert_eq!(i.get_pixel(1, 1).0, [10, 20, 30]),
            other => panic!("expected RGB8, got {other:?}"),
        }
    }

    #[test]
    fn the_header_says_what_the_image_will_hold() {
        let limits = DecodeLimits::default();
        let pixels: u64 = 37 * 23;
        // Pinned blocks (the kept samples, the probabilities) count rounded up to a power of two.
        let pinned = |bytes: u64| bytes.next_power_of_two();
        let post = pinned(pixels * ImageHeader::PROBABILITY_BYTES_PER_PIXEL)
            + pixels * ImageHeader::POSTPROCESS_BYTES_PER_PIXEL;
        let header = read_header(&encode(gray16().into(), ImageFormat::Tiff), &limits)
            .expect("16-bit gray TIFF header");
        assert_eq!(
            (header.format, header.width, header.height),
            (SourceFormat::Tiff, 37, 23)
        );
        assert_eq!(
            (
                header.decoded_bytes,
                header.has_alpha,
                header.channels,
                header.bytes_per_sample
            ),
            (pixels * 2, false, 1, 2)
        );
        assert_eq!(header.host_bytes(), pixels * 2 + pinned(pixels * 2) + post);
        let header =
            read_header(&encode(rgb8().into(), ImageFormat::Png), &limits).expect("RGB8 header");
        assert_eq!(header.host_bytes(), pixels * 3 + pinned(pixels * 3) + post);
        let rgba = RgbaImage::from_pixel(37, 23, image::Rgba([1, 2, 3, 4]));
        let header = read_header(&encode(rgba.into(), ImageFormat::Png), &limits).expect("header");
        assert_eq!(
            (header.decoded_bytes, header.has_alpha, header.channels),
            (pixels * 4, true, 3)
        );
        assert_eq!(
            header.host_bytes(),
            pixels * 4 + pinned(pixels * 3) + post,
            "the RGB copy made while dropping alpha is counted"
        );
        // The same refusals as decoding, before any pixel is decoded.
        let bomb = png_header_only(100_000, 100_000);
        assert!(matches!(
            read_header(&bomb, &limits),
            Err(DecodeError::TooManyPixels { .. })
        ));
        assert_eq!(read_header(&[], &limits), Err(DecodeError::EmptyBody));
    }

    #[test]
    fn refuses_empty_and_non_images() {
        assert_eq!(
            decode(&[]).expect_err("must be refused"),
            DecodeError::EmptyBody
        );
        assert_eq!(
            decode(b"hello, world").expect_err("must be refused"),
            DecodeError::UnsupportedFormat
        );
        assert_eq!(
            decode(b"GIF89a\x01\x00\x01\x00").expect_err("must be refused"),
            DecodeError::UnsupportedFormat
        );
    }

    #[test]
    fn refuses_a_bomb_before_allocating() {
        // 100000x100000 RGB would need 30 GB: more than this machine has, so reaching the
        // allocation would abort the test instead of returning an error.
        let bomb = png_header_only(100_000, 100_000);
        assert!(bomb.len() < 100);
        let err = decode(&bomb).expect_err("must be refused");
        assert_eq!(
            err,
            DecodeError::TooManyPixels {
                width: 100_000,
                height: 100_000,
                limit: DecodeLimits::DEFAULT_MAX_PIXELS
            }
        );
        assert!(err.to_string().contains("100000x100000"), "{err}");
    }

    #[test]
    fn pixel_limit_is_configurable() {
        let bytes = encode(gray8().into(), ImageFormat::Png);
        let limits = DecodeLimits {
            max_pixels: 37 * 23 - 1,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_image(&bytes, &limits),
            Err(DecodeError::TooManyPixels { .. })
        ));
        let limits = DecodeLimits {
            max_pixels: 37 * 23,
            ..DecodeLimits::default()
        };
        assert!(decode_image(&bytes, &limits).is_ok());
        let limits = DecodeLimits {
            max_alloc_bytes: 100,
            ..DecodeLimits::default()
        };
        assert_eq!(
            decode_image(&bytes, &limits).expect_err("must be refused"),
            DecodeError::TooMuchMemory { limit_bytes: 100 }
        );
    }

    #[test]
    fn refuses_zero_size() {
        let err = decode(&png_header_only(0, 0)).expect_err("must be refused");
        assert_eq!(
            err,
            DecodeError::ZeroSize {
                width: 0,
                height: 0
            }
        );
        let err = decode(&png_header_only(0, 5)).expect_err("must be refused");
        assert_eq!(
            err,
            DecodeError::ZeroSize {
                width: 0,
                height: 5
            }
        );
    }

    #[test]
    fn truncated_files_are_reported() {
        let noisy = RgbImage::from_fn(64, 64, |x, y| {
            let v = (x * 7919 + y * 104_729) % 251;
            Rgb([v as u8, (v * 3) as u8, (v * 5) as u8])
        });
        for format in [ImageFormat::Png, ImageFormat::Tiff, ImageFormat::Jpeg] {
            let bytes = encode(noisy.clone().into(), format);
            let err = decode(&bytes[..bytes.len() / 2]).expect_err("must be refused");
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "{format:?}: {err:?}"
            );
        }
    }

    #[test]
    fn error_types_are_distinct() {
        let errors = [
            DecodeError::EmptyBody,
            DecodeError::UnsupportedFormat,
            DecodeError::UnsupportedEncoding {
                format: SourceFormat::Tiff,
                detail: String::new(),
            },
            DecodeError::ZeroSize {
                width: 0,
                height: 0,
            },
            DecodeError::TooManyPixels {
                width: 1,
                height: 1,
                limit: 0,
            },
            DecodeError::TooMuchMemory { limit_bytes: 0 },
            DecodeError::Truncated {
                format: SourceFormat::Png,
                detail: String::new(),
            },
            DecodeError::Corrupt {
                format: SourceFormat::Png,
                detail: String::new(),
            },
        ];
        let mut names: Vec<_> = errors.iter().map(DecodeError::error_type).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), errors.len());
    }
}
