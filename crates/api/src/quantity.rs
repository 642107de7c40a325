//! Kubernetes memory quantities ("22Gi", "500M", "1.5G") and the budget form "NN%".
//!
//! The CRD's OpenAPI patterns reject malformed strings at the API server; this module turns the
//! accepted strings into bytes for the planner and the sidecar, with the same grammar.

use serde::{Deserialize, Serialize};

/// Pattern (OpenAPI, enforced by the API server) for a non-negative memory quantity.
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
/// Pattern for a memory budget: a quantity, or a percentage of the card ("90%").
pub const BUDGET_PATTERN: &str =
    r"^([0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?|([0-9]{1,2}(\.[0-9]+)?|100)%)$";

/// Why a quantity string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string does not follow the quantity grammar.
    #[error("{value:?} is not a memory quantity (expected e.g. \"22Gi\", \"500Mi\", \"1.5G\")")]
    Malformed {
        /// The string as given.
        value: String,
    },
    /// The string is well formed but does not fit in 64 bits of bytes.
    #[error("{value:?} is too large")]
    Overflow {
        /// The string as given.
        value: String,
    },
    /// A percentage outside (0, 100].
    #[error("{value:?} is not a percentage in (0, 100]")]
    BadPercentage {
        /// The string as given.
        value: String,
    },
}

/// Parses a Kubernetes memory quantity into bytes (fractions of a byte round up).
pub fn parse_quantity_bytes(value: &str) -> Result<u64, QuantityError> {
    let malformed = || QuantityError::Malformed {
        value: value.to_string(),
    };
    let s = value.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return Err(malformed()),
    };
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) if !f.is_empty() => (w, f),
        Some(_) => return Err(malformed()),
        None => (number, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return Err(malformed());
    }
    let overflow = || QuantityError::Overflow {
        value: value.to_string(),
    };
    let whole: u128 = whole.parse().map_err(|_| overflow())?;
    let frac_digits = frac.len() as u32;
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| malformed())?
    };
    let scale = 10u128.pow(frac_digits);
    let numerator = (whole * scale + frac)
        .checked_mul(multiplier)
        .ok_or_else(overflow)?;
    let bytes = numerator.div_ceil(scale);
    u64::try_from(bytes).map_err(|_| overflow())
}

/// A memory amount that is either absolute or a share of the GPU's memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MemoryAmount {
    /// An absolute number of bytes.
    Bytes(u64),
    /// A fraction in (0, 1] of the card's total memory.
    FractionOfCard(f64),
}

impl MemoryAmount {
    /// Reads a budget string: a quantity ("22Gi") or a percentage of the card ("90%").
    pub fn parse(value: &str) -> Result<Self, QuantityError> {
        match value.trim().strip_suffix('%') {
            Some(pct) => {
                let bad = || QuantityError::BadPercentage {
                    value: value.to_string(),
                };
                let p: f64 = pct.parse().map_err(|_| bad())?;
                if !(p > 0.0 && p <= 100.0) {
                    return Err(bad());
                }
                Ok(Self::FractionOfCard(p / 100.0))
            }
            None => parse_quantity_bytes(value).map(Self::Bytes),
        }
    }

    /// Resolves to bytes on a card of `card_bytes` total memory.
    pub fn resolve(self, card_bytes: u64) -> u64 {
        match self {
            Self::Bytes(b) => b,
            Self::FractionOfCard(f) => (card_bytes as f64 * f).floor() as u64,
        }
    }
}

/// Formats bytes the way `kubectl` users read memory: binary units, two significant decimals.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_suffixes() {
        assert_eq!(parse_quantity_bytes("22Gi"), Ok(22 << 30));
        assert_eq!(parse_quantity_bytes("500Mi"), Ok(500 << 20));
        assert_eq!(parse_quantity_bytes("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_quantity_bytes("2.75G"), Ok(2_750_000_000));
        assert_eq!(parse_quantity_bytes("1024"), Ok(1024));
        assert_eq!(parse_quantity_bytes("0.5Ki"), Ok(512));
    }

    #[test]
    fn rejects_malformed_quantities() {
        for bad in [
            "", "Gi", "1.Gi", "-1Gi", "1GB", "1 Gi", "abc", ".5Gi", "1e3",
        ] {
            assert!(parse_quantity_bytes(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            parse_quantity_bytes("99999999Ei"),
            Err(QuantityError::Overflow { .. })
        ));
    }

    #[test]
    fn budget_accepts_quantity_or_percentage() {
        assert_eq!(
            MemoryAmount::parse("22Gi"),
            Ok(MemoryAmount::Bytes(22 << 30))
        );
        assert_eq!(
            MemoryAmount::parse("90%"),
            Ok(MemoryAmount::FractionOfCard(0.9))
        );
        assert_eq!(MemoryAmount::parse("50%").map(|m| m.resolve(1000)), Ok(500));
        assert!(MemoryAmount::parse("0%").is_err());
        assert!(MemoryAmount::parse("120%").is_err());
    }

    #[test]
    fn patterns_agree_with_the_parser_on_samples() {
        // The API server enforces the pattern; the parser must accept everything it lets through.
        for ok in ["22Gi", "1.5G", "0", "100Mi", "7"] {
            assert!(parse_quantity_bytes(ok).is_ok(), "{ok}");
        }
        assert_eq!(format_bytes(22 << 30), "22.00Gi");
        assert_eq!(format_bytes(512), "512");
    }
}
