//! Resource quantities ("512Mi", "8G", "1.5Gi", "250m", "2e9") as numbers, for the downward API's
//! `resourceFieldRef`, which the kubelet hands to a container as the quantity divided by the
//! divisor, rounded up. The API server's grammar: a decimal number, then a binary suffix
//! (Ki … Ei), a decimal suffix (m, k, M … E) or a decimal exponent (e3, E-2). (The api crate's
//! `parse_quantity_bytes` reads only the pool CRD's memory grammar: no milli-units such as CPU's
//! "500m", no signs or exponents, all of which a pod's resources may hold.)

/// The quantity's value; None when the text is not a non-negative quantity.
pub(crate) fn value(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('-') {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent => 10f64.powi(exponent.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    let value = number * scale;
    value.is_finite().then_some(value)
}

/// What the kubelet puts in a `resourceFieldRef` variable: `quantity / divisor` rounded up, as an
/// integer. A divisor left out, or zero (what the API server stores for one left out), is 1.
pub(crate) fn in_units_of(quantity: &str, divisor: Option<&str>) -> Option<u64> {
    let divisor = match divisor.map(value) {
        None => 1.0,
        Some(Some(0.0)) => 1.0,
        Some(d) => d?,
    };
    let units = (value(quantity)? / divisor).ceil();
    // u64::MAX as f64 rounds up to 2^64, which does not fit.
    (units < u64::MAX as f64).then_some(units as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_exponent_forms() {
        assert_eq!(in_units_of("512Mi", None), Some(512 << 20));
        assert_eq!(in_units_of("8Gi", None), Some(8 << 30));
        assert_eq!(in_units_of("1.5Gi", None), Some(3 << 29));
        assert_eq!(in_units_of("8G", None), Some(8_000_000_000));
        assert_eq!(in_units_of("128974848", None), Some(128_974_848));
        assert_eq!(in_units_of("129e6", None), Some(129_000_000));
        assert_eq!(in_units_of("+2Ki", None), Some(2048));
    }

    #[test]
    fn divided_by_the_divisor_and_rounded_up() {
        assert_eq!(in_units_of("500m", None), Some(1), "half a CPU is 1 CPU");
        assert_eq!(in_units_of("500m", Some("1m")), Some(500));
        assert_eq!(in_units_of("1Gi", Some("1Mi")), Some(1024));
        assert_eq!(
            in_units_of("8Ki", Some("0")),
            Some(8192),
            "as the API server defaults it"
        );
        assert_eq!(in_units_of("1", Some("1x")), None);
    }

    #[test]
    fn what_is_not_a_quantity_is_none() {
        for bad in ["", "Gi", "-1Gi", "8GB", "8 Gi", "1e", "eight", "20Ei"] {
            assert_eq!(in_units_of(bad, None), None, "{bad:?}");
        }
    }
}
