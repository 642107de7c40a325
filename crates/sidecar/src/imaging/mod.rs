//! The image side of the sidecar: bytes in, model input out; logits in, polygons out.
//!
//! - [`decode_image`]: upload bytes to pixels, refusing bombs and broken files up front.
//! - [`to_model_input`] / [`fill_model_input`]: pixels to the normalised CHW `f32` tensor.
//! - [`extract_polygons`]: logits to the response's polygons.

mod contours;
pub mod decode;
pub mod polygon;
pub mod postprocess;
pub mod preprocess;
mod resample;

pub use contours::{MIN_AREA, MIN_POINTS};
pub use decode::{decode_image, DecodeError, DecodeLimits, DecodedImage, SourceFormat};
pub use polygon::{Point, Polygon, PolygonClass, PolygonType};
pub use postprocess::{extract_polygons, PostprocessError, PostprocessOptions};
pub use preprocess::{
    fill_model_input, to_model_input, BufferSizeMismatch, GeometryError, InputGeometry,
};
