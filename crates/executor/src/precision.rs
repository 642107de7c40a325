//! How a model file is run at a precision, and which precisions `auto` calibrates.
//!
//! Files from `tests/models/export.py` declare the precision they were exported at (TorchScript
//! extra file `gpupool.json`, AOTInductor package metadata) and take float32 input whatever it is:
//! their dtype casts are baked into the graph, so their weights cannot be re-cast. Such a file runs
//! natively at its own precision; an fp32 file also runs at fp16/bf16 under autocast (fp32 weights,
//! reduced-precision kernels). A plain TorchScript module without that metadata has its weights
//! cast, its input cast to match and its output cast back to float32. An AOTInductor package only
//! runs at the precision it was compiled for.

use gpupool_api::{ModelFormat, Precision};
use tch::Kind;

/// How the engine feeds a loaded module to run at the chosen precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrecisionMode {
    /// The file itself runs at this precision (float32 in, float32 out).
    Native,
    /// Weights cast to this kind; input cast to it, output cast back to float32.
    CastWeights(Kind),
    /// Float32 weights, forward under autocast to this kind.
    Autocast(Kind),
}

/// The tch element kind of a concrete precision (`Auto` is planned as fp32).
pub(crate) fn kind_of(precision: Precision) -> Kind {
    match precision {
        Precision::Fp16 => Kind::Half,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Fp32 | Precision::Auto => Kind::Float,
    }
}

/// How to run a file declared at `declared` (None: no metadata) at the concrete `requested`.
pub(crate) fn mode_for(
    requested: Precision,
    declared: Option<Precision>,
    format: ModelFormat,
) -> Result<PrecisionMode, String> {
    match (format, declared) {
        (ModelFormat::Aotinductor, Some(d)) if d != requested => Err(format!(
            "the package was compiled at {d}; compile it again at {requested} to run it at {requested}"
        )),
        (ModelFormat::Aotinductor, _) => Ok(PrecisionMode::Native),
        (ModelFormat::Torchscript, Some(d)) if d == requested => Ok(PrecisionMode::Native),
        (ModelFormat::Torchscript, Some(Precision::Fp32)) => Ok(PrecisionMode::Autocast(kind_of(requested))),
        (ModelFormat::Torchscript, Some(d)) => Err(format!(
            "the file was exported at {d} and casts its input to {d}; export it at {requested} (or at fp32) to run it at {requested}"
        )),
        (ModelFormat::Torchscript, None) => Ok(PrecisionMode::CastWeights(kind_of(requested))),
    }
}

/// The concrete precisions calibration measures for `requested`.
///
/// `auto` on a GPU measures fp16, bf16 and fp32 (those the file can run at). On the CPU it stays
/// fp32: reduced precision there is emulated and slower, and CPU autocast does not cover every op.
pub(crate) fn candidates(
    requested: Precision,
    declared: Option<Precision>,
    format: ModelFormat,
    on_gpu: bool,
) -> Vec<Precision> {
    if requested != Precision::Auto {
        return vec![requested];
    }
    match (format, declared) {
        (ModelFormat::Aotinductor, d) => vec![d.unwrap_or(Precision::Fp32)],
        (_, Some(d)) if d != Precision::Fp32 => vec![d],
        _ if on_gpu => vec![Precision::Fp16, Precision::Bf16, Precision::Fp32],
        _ => vec![Precision::Fp32],
    }
}

/// Parses a precision name as documents write it.
pub(crate) fn parse(name: &str) -> Option<Precision> {
    match name.trim().to_ascii_lowercase().as_str() {
        "fp16" | "float16" | "half" => Some(Precision::Fp16),
        "bf16" | "bfloat16" => Some(Precision::Bf16),
        "fp32" | "float32" | "float" => Some(Precision::Fp32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precision::*;

    #[test]
    fn declared_files_run_natively_or_under_autocast() {
        let ts = ModelFormat::Torchscript;
        assert_eq!(mode_for(Fp16, Some(Fp16), ts), Ok(PrecisionMode::Native));
        assert_eq!(
            mode_for(Fp16, Some(Fp32), ts),
            Ok(PrecisionMode::Autocast(Kind::Half))
        );
        assert_eq!(
            mode_for(Bf16, Some(Fp32), ts),
            Ok(PrecisionMode::Autocast(Kind::BFloat16))
        );
        assert!(mode_for(Fp32, Some(Fp16), ts).is_err());
        assert_eq!(
            mode_for(Bf16, None, ts),
            Ok(PrecisionMode::CastWeights(Kind::BFloat16))
        );
    }

    #[test]
    fn packages_run_only_at_their_precision() {
        let aoti = ModelFormat::Aotinductor;
        assert_eq!(mode_for(Fp16, Some(Fp16), aoti), Ok(PrecisionMode::Native));
        assert!(mode_for(Fp32, Some(Fp16), aoti).is_err());
        assert_eq!(candidates(Auto, Some(Fp16), aoti, true), vec![Fp16]);
    }

    #[test]
    fn auto_candidates() {
        let ts = ModelFormat::Torchscript;
        assert_eq!(
            candidates(Auto, Some(Fp32), ts, true),
            vec![Fp16, Bf16, Fp32]
        );
        assert_eq!(candidates(Auto, None, ts, false), vec![Fp32]);
        assert_eq!(candidates(Auto, Some(Bf16), ts, true), vec![Bf16]);
        assert_eq!(candidates(Fp16, Some(Fp32), ts, false), vec![Fp16]);
        assert_eq!(parse("FP16"), Some(Fp16));
        assert_eq!(parse("int8"), None);
    }
}
