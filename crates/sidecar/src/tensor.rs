//! Tensor data as the Open Inference Protocol sends it: a JSON array of numbers, flat or nested
//! to any depth, read straight into one `Vec<f32>` without building a JSON tree first.

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
use std::fmt;

/// Row-major tensor values, flattened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatTensor(Vec<f32>);

impl FlatTensor {
    /// The values.
    pub fn into_inner(self) -> Vec<f32> {
        self.0
    }
}

struct Flatten<'a>(&'a mut Vec<f32>);

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or an array of numbers")
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<(), E> {
        // Checked as FP32: 1e39 is a finite f64 but an infinite f32.
        let value = v as f32;
        if !value.is_finite() {
            return Err(E::custom("tensor values must be finite FP32 numbers"));
        }
        self.0.push(value);
        Ok(())
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(self.0))?.is_some() {}
        Ok(())
    }
}

impl<'de> Deserialize<'de> for FlatTensor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut values = Vec::new();
        d.deserialize_seq(Flatten(&mut values))?;
        Ok(FlatTensor(values))
    }
}

#[cfg(test)]
mod tests {
    use super::FlatTensor;

    #[test]
    fn flat_and_nested_arrays_flatten_in_row_major_order() {
        let flat: FlatTensor = serde_json::from_str("[1, 2.5, 3]").expect("flat");
        assert_eq!(flat.into_inner(), vec![1.0, 2.5, 3.0]);
        let nested: FlatTensor =
            serde_json::from_str("[[[1, 2], [3, 4]], [[5, 6], [7, 8]]]").expect("nested");
        assert_eq!(
            nested.into_inner(),
            (1..=8).map(|v| v as f32).collect::<Vec<_>>()
        );
    }

    #[test]
    fn non_numbers_are_refused() {
        assert!(serde_json::from_str::<FlatTensor>("[1, \"x\"]").is_err());
        assert!(serde_json::from_str::<FlatTensor>("[1, null]").is_err());
        assert!(serde_json::from_str::<FlatTensor>("3").is_err());
    }

    #[test]
    fn values_beyond_fp32_are_refused() {
        let err = serde_json::from_str::<FlatTensor>("[1, 1e39]").expect_err("1e39 is no FP32");
        assert!(err.to_string().contains("finite FP32"), "{err}");
        assert!(serde_json::from_str::<FlatTensor>("[3.4e38]").is_ok());
    }
}
