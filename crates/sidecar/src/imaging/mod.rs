//! The CPU side of the sidecar's image work: bytes in, pixels out; mask in, polygons out.
//! (Resizing, normalising, sigmoid and threshold run on the model's device, in the engine.)
//!
//! - [`read_header`], [`decode_image`]: upload bytes to pixels, refusing bombs and broken files up
//!   front (the header alone says how much memory the image will need).
//! - [`InputGeometry`]: the size and normalisation a model takes.
//! - [`polygons_from_mask`]: the engine's mask to the response's polygons.
//! - [`mask_png`]: the mask as a PNG, for clients that want the pixels.

mod components;
mod contours;
pub mod decode;
pub mod geometry;
pub mod mask_png;
pub mod polygon;
pub mod postprocess;
mod specks;

pub use contours::{MIN_AREA, MIN_POINTS};
pub use decode::{
    decode_image, read_header, DecodeError, DecodeLimits, DecodedImage, ImageHeader, SourceFormat,
};
pub use geometry::{GeometryError, InputGeometry};
pub use mask_png::{mask_png, MaskPngError};
pub use polygon::{Point, Polygon, PolygonClass, PolygonType};
pub use postprocess::{polygons_from_mask, PostprocessError, PostprocessOptions};
