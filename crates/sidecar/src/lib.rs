//! The gpupool inference sidecar.
//!
//! It turns uploaded microscope images into model input, hands them to the executor and turns
//! the model's logits back into the polygons of the original service's JSON API.

pub mod imaging;
