//! The input a model expects: its spatial size and per-channel normalisation, checked once at
//! configuration time. The HTTP layer uses it to check OIP tensors' shapes; the engine resizes
//! and normalises decoded images to it on the device (`gpupool_executor::Engine::segment`).

use thiserror::Error;

/// The input a model expects: its spatial size and the per-channel normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputGeometry {
    width: u32,
    height: u32,
    mean: [f32; 3],
    std: [f32; 3],
}

/// Why an [`InputGeometry`] was refused; checked once, at configuration time.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GeometryError {
    /// A model input needs at least one pixel.
    #[error("model input size {width}x{height} must be at least 1x1")]
    ZeroSize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// `3 * width * height` does not fit in memory's address space.
    #[error("model input size {width}x{height} is too large")]
    TooLarge {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// Normalisation needs finite means and finite, strictly positive standard deviations.
    #[error("normalisation mean {mean:?} / std {std:?} must be finite with std > 0")]
    BadNormalisation {
        /// Requested means.
        mean: [f32; 3],
        /// Requested standard deviations.
        std: [f32; 3],
    },
}

impl InputGeometry {
    /// ImageNet channel means, used by all three spheroid models.
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    /// ImageNet channel standard deviations, used by all three spheroid models.
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

    /// Checks and builds a geometry; invalid ones are refused here so that pre-processing
    /// itself cannot fail.
    pub fn new(
        width: u32,
        height: u32,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Self, GeometryError> {
        if width == 0 || height == 0 {
            return Err(GeometryError::ZeroSize { width, height });
        }
        let fits = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3))
            .is_some_and(|n| n <= isize::MAX as usize / std::mem::size_of::<f32>());
        if !fits {
            return Err(GeometryError::TooLarge { width, height });
        }
        let good =
            mean.iter().all(|m| m.is_finite()) && std.iter().all(|s| s.is_finite() && *s > 0.0);
        if !good {
            return Err(GeometryError::BadNormalisation { mean, std });
        }
        Ok(InputGeometry {
            width,
            height,
            mean,
            std,
        })
    }

    /// The spheroid models' input: 1024×1024 with ImageNet normalisation (see models.md).
    pub fn spheroid() -> Self {
        InputGeometry {
            width: 1024,
            height: 1024,
            mean: Self::IMAGENET_MEAN,
            std: Self::IMAGENET_STD,
        }
    }

    /// Model input width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Model input height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Per-channel means subtracted after scaling to `[0, 1]`.
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// Per-channel standard deviations divided by after subtracting the mean.
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// Number of `f32` values of one input: `3 * width * height`.
    pub fn len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    /// Always false: a geometry has at least one pixel. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_validated() {
        let (m, s) = (InputGeometry::IMAGENET_MEAN, InputGeometry::IMAGENET_STD);
        assert!(matches!(
            InputGeometry::new(0, 5, m, s),
            Err(GeometryError::ZeroSize { .. })
        ));
        assert!(matches!(
            InputGeometry::new(5, 5, m, [0.2, 0.0, 0.2]),
            Err(GeometryError::BadNormalisation { .. })
        ));
        assert!(matches!(
            InputGeometry::new(5, 5, [f32::NAN, 0.0, 0.0], s),
            Err(GeometryError::BadNormalisation { .. })
        ));
        assert_eq!(
            InputGeometry::new(1024, 1024, m, s),
            Ok(InputGeometry::spheroid())
        );
    }
}
