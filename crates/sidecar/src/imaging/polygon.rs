//! The polygons of a segmentation, shaped exactly like the original service's JSON.
//!
//! `{"id": 1, "points": [{"x": 3, "y": 4}, ...], "type": "external", "class": "spheroid",
//!   "confidence": 0.93, "vertices_count": 17}` and, for holes, `"parent_id": 1` as well.

use serde::{Deserialize, Serialize};

/// One polygon vertex, in pixels of the original (uploaded) image; `(0, 0)` is the top-left
/// pixel and vertices lie on the centres of the object's border pixels, as OpenCV's are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Point {
    /// Column, 0 at the left.
    pub x: u32,
    /// Row, 0 at the top.
    pub y: u32,
}

/// Whether a polygon is the outline of an object or the outline of a hole in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolygonType {
    /// The outer border of a foreground object.
    External,
    /// The border of a hole inside an object; `parent_id` names the object.
    Internal,
}

/// What the polygon outlines. The spheroid models have one class; the enum keeps the JSON
/// value fixed and leaves room for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolygonClass {
    /// A cell cluster.
    Spheroid,
}

/// One entry of the response's `polygons` array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Polygon {
    /// 1-based position in the response (1-based so that a `parent_id` is never a falsy 0 in
    /// JavaScript clients).
    pub id: u32,
    /// Closed outline (the last vertex connects back to the first), straight runs compressed
    /// to their end points like OpenCV's `CHAIN_APPROX_SIMPLE`.
    pub points: Vec<Point>,
    /// External outline or hole.
    #[serde(rename = "type")]
    pub kind: PolygonType,
    /// Always `"spheroid"` for the current models.
    pub class: PolygonClass,
    /// Mean foreground probability of the object this outline belongs to, in `(threshold, 1]`.
    pub confidence: f32,
    /// `points.len()`, kept because the original API sends it.
    pub vertices_count: usize,
    /// For holes: the `id` of the external polygon they perforate. Omitted for externals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_original_field_names() {
        let mut polygon = Polygon {
            id: 2,
            points: vec![Point { x: 1, y: 2 }],
            kind: PolygonType::Internal,
            class: PolygonClass::Spheroid,
            confidence: 0.5,
            vertices_count: 1,
            parent_id: Some(1),
        };
        let json = serde_json::to_value(&polygon).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "id": 2, "points": [{"x": 1, "y": 2}], "type": "internal", "class": "spheroid",
                "confidence": 0.5, "vertices_count": 1, "parent_id": 1
            })
        );
        polygon.kind = PolygonType::External;
        polygon.parent_id = None;
        let json = serde_json::to_value(&polygon).expect("serialises");
        assert_eq!(json["type"], "external");
        assert!(json.get("parent_id").is_none());
        let back: Polygon = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, polygon);
    }
}
