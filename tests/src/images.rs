//! Test images made in memory: a synthetic microscope frame (bright spheroids on a dark
//! background) in any format, and the header of a decompression bomb.

use std::io::Cursor;

/// A synthetic microscope-like frame: two bright discs on a dark background.
pub fn spheroid_rgb(width: u32, height: u32) -> image::RgbImage {
    let (w, h) = (width as f32, height as f32);
    let r = width.min(height) as f32 * 0.18;
    image::RgbImage::from_fn(width, height, |x, y| {
        let (x, y) = (x as f32, y as f32);
        let d1 = ((x - w * 0.3).powi(2) + (y - h * 0.4).powi(2)).sqrt();
        let d2 = ((x - w * 0.7).powi(2) + (y - h * 0.6).powi(2)).sqrt();
        let v = if d1 < r || d2 < r { 200 } else { 20 };
        image::Rgb([v, v, v])
    })
}

/// Encodes `img` in `format`.
pub fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    match img.write_to(&mut out, format) {
        Ok(()) => out.into_inner(),
        Err(e) => panic!("encoding a test image as {format:?}: {e}"),
    }
}

/// The synthetic frame as PNG.
pub fn spheroid_png(width: u32, height: u32) -> Vec<u8> {
    encode(
        &image::DynamicImage::ImageRgb8(spheroid_rgb(width, height)),
        image::ImageFormat::Png,
    )
}

/// A PNG that is only a signature, a valid IHDR claiming `width` × `height`, an empty IDAT and
/// IEND: what a decompression bomb's header looks like before any pixel data.
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    // An empty zlib stream: decoders read up to the first IDAT before reporting the header.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}
