//! Tensor data as the Open Inference Protocol sends it: a JSON array of numbers, flat or nested
//! to any depth, read straight into one `Vec<f32>` without building a JSON tree first; and
//! written back from several images' values as one flat array, again without a tree (a
//! `serde_json::Value` costs about 40 bytes per number before any text is written).

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::fmt;

/// The body of an infer response: one output tensor, written straight from the parts.
#[derive(Debug, Serialize)]
#[serde(bound = "T: AsRef<[f32]>")]
pub struct InferResponse<'a, T> {
    /// The model that ran.
    pub model_name: &'a str,
    /// Always "1" (one version per name).
    pub model_version: &'a str,
    /// The request's `id`, echoed (null when it had none).
    pub id: Option<String>,
    /// The logits.
    pub outputs: [OutputTensor<'a, T>; 1],
}

/// One output tensor of an infer response.
#[derive(Debug, Serialize)]
#[serde(bound = "T: AsRef<[f32]>")]
pub struct OutputTensor<'a, T> {
    /// Its name.
    pub name: &'a str,
    /// Its element type, e.g. `FP32`.
    pub datatype: &'a str,
    /// `[N, 1, H, W]`.
    pub shape: [i64; 4],
    /// The values, row-major.
    pub data: JoinedTensor<'a, T>,
}

/// The values of several parts (e.g. one logit map per image) serialised as one flat JSON array,
/// without copying them into one buffer.
#[derive(Debug, Clone, Copy)]
pub struct JoinedTensor<'a, T>(pub &'a [T]);

impl<T: AsRef<[f32]>> Serialize for JoinedTensor<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.0.iter().map(|part| part.as_ref().len()).sum();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for value in self.0.iter().flat_map(|part| part.as_ref()) {
            seq.serialize_element(value)?;
        }
        seq.end()
    }
}

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
    use super::{FlatTensor, JoinedTensor};

    #[test]
    fn parts_join_into_one_flat_array_that_reads_back_exactly() {
        let parts = vec![vec![0.1f32, -2.5], vec![], vec![1e-7, f32::MAX]];
        let text = serde_json::to_string(&JoinedTensor(&parts)).expect("serialise");
        assert_eq!(text, "[0.1,-2.5,1e-7,3.4028235e+38]");
        let back: FlatTensor = serde_json::from_str(&text).expect("read back");
        assert_eq!(back.into_inner(), [0.1f32, -2.5, 1e-7, f32::MAX]);
    }

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
