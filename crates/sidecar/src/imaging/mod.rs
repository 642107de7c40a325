//! The image side of the sidecar: bytes in, model input out; logits in, polygons out.
pub mod decode;
pub mod preprocess;
mod resample;

pub use decode::{decode_image, DecodeError, DecodeLimits, DecodedImage, SourceFormat};
pub use preprocess::{
    fill_model_input, to_model_input, BufferSizeMismatch, GeometryError, InputGeometry,
};
