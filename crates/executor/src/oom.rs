//! Recovery from CUDA out-of-memory errors: a batch that runs out of memory is split in half and
//! each half retried (recursively, down to single images), so its requests still get answers; the
//! sizes that failed lower the model's batch cap. Any other error fails that range at once. The
//! forward pass is a closure over index ranges, so the policy is tested without a GPU.

use std::ops::Range;

/// How one forward attempt over a range of the batch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForwardFailure {
    /// The CUDA allocator could not find memory (retrying smaller may work).
    OutOfMemory(String),
    /// Anything else (retrying would fail the same way).
    Other(String),
}

/// Whether a libtorch error message reports a CUDA out-of-memory error ("CUDA out of memory.
/// Tried to allocate ..."): a condition of the moment, unlike a broken file or a bad shape.
pub(crate) fn is_out_of_memory(message: &str) -> bool {
    message.to_ascii_lowercase().contains("out of memory")
}

impl ForwardFailure {
    /// Classifies a libtorch error (or its message).
    pub fn classify(error: impl std::fmt::Display) -> Self {
        let message = error.to_string();
        if is_out_of_memory(&message) {
            ForwardFailure::OutOfMemory(message)
        } else {
            ForwardFailure::Other(message)
        }
    }

    /// The underlying message.
    pub fn message(&self) -> &str {
        match self {
            ForwardFailure::OutOfMemory(m) | ForwardFailure::Other(m) => m,
        }
    }
}

/// What happened to a batch run through [`run_split`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SplitOutcome {
    /// Ranges that ran, in index order.
    pub ran: Vec<Range<usize>>,
    /// Ranges that could not be run, with why; every other index succeeded.
    pub failed: Vec<(Range<usize>, ForwardFailure)>,
    /// Out-of-memory errors met (each one triggered a split or a failure).
    pub oom_events: u32,
    /// Smallest range size that ran out of memory.
    pub smallest_oom: Option<usize>,
}

/// Runs `forward` over `0..n`, splitting ranges in half on out-of-memory errors; `on_oom` runs
/// after each one (to return cached blocks before the retry). Ranges run in index order.
pub(crate) fn run_split(
    n: usize,
    mut forward: impl FnMut(Range<usize>) -> Result<(), ForwardFailure>,
    mut on_oom: impl FnMut(),
) -> SplitOutcome {
    let mut outcome = SplitOutcome::default();
    let mut stack: Vec<Range<usize>> = Vec::new();
    if n > 0 {
        stack.push(0..n);
    }
    while let Some(range) = stack.pop() {
        match forward(range.clone()) {
            Ok(()) => outcome.ran.push(range),
            Err(ForwardFailure::OutOfMemory(message)) => {
                outcome.oom_events += 1;
                let len = range.len();
                outcome.smallest_oom = Some(outcome.smallest_oom.map_or(len, |s| s.min(len)));
                on_oom();
                if len > 1 {
                    let mid = range.start + len / 2;
                    stack.push(mid..range.end);
                    stack.push(range.start..mid);
                } else {
                    outcome
                        .failed
                        .push((range, ForwardFailure::OutOfMemory(message)));
                }
            }
            Err(other) => outcome.failed.push((range, other)),
        }
    }
    outcome
}

/// The batch cap after a batch of `oom_at` images ran out of memory: at most half of it.
pub(crate) fn lowered_cap(current: usize, oom_at: usize) -> usize {
    current.min((oom_at / 2).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OOM: &str = "CUDA out of memory. Tried to allocate 2.00 GiB";

    #[test]
    fn classifies_torch_messages() {
        assert!(matches!(
            ForwardFailure::classify(OOM),
            ForwardFailure::OutOfMemory(_)
        ));
        assert!(matches!(
            ForwardFailure::classify("Expected 4-dimensional input"),
            ForwardFailure::Other(_)
        ));
    }

    #[test]
    fn splits_until_halves_fit_and_answers_everyone() {
        let mut ran = Vec::new();
        let mut frees = 0;
        let outcome = run_split(
            8,
            |r| {
                if r.len() > 3 {
                    Err(ForwardFailure::OutOfMemory(OOM.into()))
                } else {
                    ran.push(r);
                    Ok(())
                }
            },
            || frees += 1,
        );
        assert!(outcome.failed.is_empty());
        assert_eq!(
            ran,
            vec![0..2, 2..4, 4..6, 6..8],
            "every index once, in order"
        );
        assert_eq!(outcome.ran, ran);
        assert_eq!(outcome.oom_events, 3); // 0..8, 0..4, 4..8
        assert_eq!(frees, 3);
        assert_eq!(outcome.smallest_oom, Some(4));
        assert_eq!(lowered_cap(8, 4), 2);
    }

    #[test]
    fn single_image_oom_fails_only_that_image() {
        let outcome = run_split(
            3,
            |r| {
                if r.contains(&1) {
                    Err(ForwardFailure::OutOfMemory(OOM.into()))
                } else {
                    Ok(())
                }
            },
            || {},
        );
        assert_eq!(outcome.failed.len(), 1);
        assert_eq!(outcome.failed[0].0, 1..2);
        assert_eq!(outcome.smallest_oom, Some(1));
        assert_eq!(lowered_cap(8, 1), 1);
    }

    #[test]
    fn other_errors_are_not_retried() {
        let mut calls = 0;
        let outcome = run_split(
            4,
            |_| {
                calls += 1;
                Err(ForwardFailure::Other("shape mismatch".into()))
            },
            || {},
        );
        assert_eq!(calls, 1);
        assert_eq!(
            outcome.failed,
            vec![(0..4, ForwardFailure::Other("shape mismatch".into()))]
        );
        assert_eq!(outcome.oom_events, 0);
        assert!(run_split(0, |_| Ok(()), || {}).failed.is_empty());
    }
}
