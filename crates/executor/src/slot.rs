//! One execution slot: an OS thread that owns a CUDA stream (made current on it once) and its
//! staging buffers, and loops: wait for a batch of its model, make sure the model is loaded, pass
//! the streams gate, admit the batch's memory in the ledger (a smaller batch if the whole one does
//! not fit), run it with out-of-memory splitting, answer every request.

use crate::batcher::{Answer, Job, Next, Output, Request};
use crate::error::InferError;
use crate::gate::Pass;
use crate::loader::{self, InUse, LoadFailure};
use crate::oom::{self, ForwardFailure};
use crate::staging::Stager;
use crate::state::{ModelEntry, Shared};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Signals start-up that a slot has warmed up (first calls on a new thread create cuDNN handles).
pub(crate) type WarmupDone = Box<dyn FnOnce() + Send>;

/// The slot thread's body.
pub(crate) fn run(shared: Arc<Shared>, entry: Arc<ModelEntry>, warmed: Option<WarmupDone>) {
    let stream = match shared.device.acquire_stream() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(model = %entry.name, error = %e, "no stream from the pool; using the default stream");
            0
        }
    };
    let mut stager = Stager::new(shared.device, stream, &entry);
    warm_up(&shared, &entry, &mut stager);
    if let Some(done) = warmed {
        done();
    }
    let mut last_end = None;
    loop {
        match entry
            .queue
            .wait_batch(|| (entry.batch_cap(), entry.max_queue_delay()), last_end)
        {
            Next::Exit => break,
            Next::Batch => {
                serve_batch(&shared, &entry, &mut stager);
                last_end = Some(Instant::now());
            }
        }
    }
    tracing::debug!(model = %entry.name, "slot exits");
}

/// Runs the loaded model on this thread's stream before the slot takes requests: every batch size
/// up to the cap on a GPU (with `warm_all_batch_sizes`), else one image. cuDNN's autotuning
/// results are kept per thread (libtorch's cuDNN v8 benchmark cache is thread-local), so warming
/// on the calibration thread does not spare this one: a batch size met here for the first time
/// would stall its requests for the seconds autotuning takes. Each size waits for its room in the
/// ledger (slots of every model warm up at once at start-up and may have to take turns under a
/// tight budget), up to the engine's memory wait; sizes that never get room are left cold.
fn warm_up(shared: &Shared, entry: &ModelEntry, stager: &mut Stager) {
    let loaded = entry.runtime.lock().loaded.is_some();
    if !loaded {
        return;
    }
    let Ok(model) = loader::ensure_loaded(shared, entry) else {
        return;
    };
    let largest = if shared.device.is_cuda() && shared.options.warm_all_batch_sizes {
        entry.batch_cap()
    } else {
        1
    };
    let costs = entry.batch_costs(model.resident.model.precision, largest, &shared.options);
    let started = Instant::now();
    let deadline = started + shared.options.memory_wait;
    for (n, &cost) in (1..=largest).zip(&costs) {
        let Some(_room) = shared.wait_for_memory(deadline, || shared.ledger.try_reserve(cost))
        else {
            tracing::warn!(model = %entry.name, batch = n, "no memory to warm up this batch size and larger ones; their first batches will autotune");
            return;
        };
        let result = stager
            .stage_synthetic(n)
            .and_then(|()| stager.run(&model.resident.model, 0..n));
        if let Err(e) = result {
            tracing::warn!(model = %entry.name, batch = n, error = e.message(), "slot warm-up failed");
            return;
        }
    }
    tracing::debug!(model = %entry.name, largest, elapsed = ?started.elapsed(), "slot warmed up");
}

fn fail_all(entry: &ModelEntry, requests: Vec<Request>, error: &InferError) {
    entry
        .stats
        .failed_total
        .fetch_add(requests.len() as u64, Ordering::Relaxed);
    for r in requests {
        let _ = r.reply.send(Err(error.clone()));
    }
}

/// What a slot holds while it runs a batch.
struct Admitted<'a> {
    in_use: InUse<'a>,
    reservation: crate::admission::Reservation,
    requests: Vec<Request>,
    pass: Pass<'a>,
}

/// The model loaded and held in use, or None with the requests a load failure concerns failed.
fn take_in_use<'a>(shared: &'a Shared, entry: &'a ModelEntry) -> Option<InUse<'a>> {
    match loader::ensure_loaded(shared, entry) {
        Ok(in_use) => Some(in_use),
        Err(failure) => {
            let error = InferError::ModelNotReady {
                model: entry.name.clone(),
                reason: failure.reason().to_owned(),
            };
            let requests = match failure {
                LoadFailure::Permanent(_) => entry.queue.take_all(),
                LoadFailure::Transient(_) => entry.queue.take(entry.batch_cap()),
            };
            fail_all(entry, requests, &error);
            None
        }
    }
}

/// Loads the model, passes the streams gate and admits as large a batch as memory allows,
/// waiting (or failing the requests) when even one image does not fit.
///
/// No pass of the gate is held while the model loads or while the slot waits for memory: a
/// load or a memory wait holding one of the `streams` passes would keep other models' ready
/// batches off the device. Nor is the model held in use while the slot waits for the gate, so
/// the slot holding a pass can still unload it if it is idle. The batch is taken after the gate,
/// so requests arriving meanwhile join it. The memory deadline counts from the first pass.
fn admit<'a>(shared: &'a Shared, entry: &'a ModelEntry) -> Option<Admitted<'a>> {
    let mut first_pass: Option<Instant> = None;
    loop {
        // Load holding nothing; then wait for a stream holding nothing, and take the model in
        // use (normally still loaded; unloaded meanwhile, it loads again, now under the pass).
        drop(take_in_use(shared, entry)?);
        let mut pass = shared.gate.enter();
        let in_use = take_in_use(shared, entry)?;
        let deadline = *first_pass.get_or_insert_with(Instant::now) + shared.options.memory_wait;
        let max_n = entry.queue.depth().min(entry.batch_cap());
        if max_n == 0 {
            return None;
        }
        let costs = entry.batch_costs(in_use.resident.model.precision, max_n, &shared.options);
        let cost = |n: usize| costs.get(n.saturating_sub(1)).copied().unwrap_or(u64::MAX);
        // While this slot holds the model in use, nobody can unload it: try to admit, unloading
        // idle models for room, until nothing more can be unloaded.
        loop {
            if let Some((n, mut reservation)) = shared.ledger.reserve_largest(max_n, cost) {
                let requests = entry.queue.take(n);
                if requests.is_empty() {
                    return None;
                }
                // Decoded images also need room to be resized on the device and their masks
                // resized back: the largest one's, as images are processed one at a time.
                let scratch = requests
                    .iter()
                    .map(|r| entry.scratch_bytes(&r.job))
                    .max()
                    .unwrap_or(0);
                let need = cost(requests.len()).saturating_add(scratch);
                if !reservation.resize(need) {
                    // Wait for the whole amount holding none of it (two slots that each held
                    // their batch while waiting for the other's could only time out together),
                    // and no stream.
                    drop(reservation);
                    drop(pass);
                    match shared.wait_for_memory(deadline, || shared.ledger.try_reserve(need)) {
                        Some(whole) => {
                            reservation = whole;
                            pass = shared.gate.enter();
                        }
                        None => {
                            let error = InferError::ModelNotReady {
                                model: entry.name.clone(),
                                reason: format!(
                                    "no memory within {:?} for a batch of {} with its image processing ({need} bytes)",
                                    shared.options.memory_wait,
                                    requests.len()
                                ),
                            };
                            fail_all(entry, requests, &error);
                            return None;
                        }
                    }
                }
                return Some(Admitted {
                    in_use,
                    reservation,
                    requests,
                    pass,
                });
            }
            if !loader::make_room(shared, cost(1), &entry.name) {
                break;
            }
        }
        // Wait without holding the model, so models waiting on each other cannot deadlock, and
        // without a stream.
        drop(in_use);
        drop(pass);
        if Instant::now() >= deadline {
            let reason = format!(
                "no memory for a batch of 1 ({} bytes) within {:?}: {} of {} budget bytes are reserved",
                cost(1),
                shared.options.memory_wait,
                shared.ledger.used(),
                shared.ledger.budget()
            );
            let error = InferError::ModelNotReady {
                model: entry.name.clone(),
                reason,
            };
            fail_all(entry, entry.queue.take(entry.batch_cap()), &error);
            return None;
        }
        shared.ledger.wait_for_release(Duration::from_millis(50));
    }
}

fn serve_batch(shared: &Shared, entry: &ModelEntry, stager: &mut Stager) {
    let Some(Admitted {
        in_use,
        reservation,
        requests,
        pass,
    }) = admit(shared, entry)
    else {
        return;
    };
    let model = &in_use.resident.model;
    let n = requests.len();
    entry.stats.in_flight.fetch_add(n as u64, Ordering::Relaxed);
    let staged = stager.reserve(entry.batch_cap().max(n)).and_then(|()| {
        requests
            .iter()
            .enumerate()
            .try_for_each(|(i, r)| match &r.job {
                Job::Logits(image) => stager.stage(i, image),
                Job::Segment { .. } => Ok(()),
            })
    });
    let kinds: Vec<_> = requests.iter().map(|r| r.job.staged()).collect();
    let outcome = match staged {
        Ok(()) => oom::run_split(
            n,
            |range| stager.run_batch(model, range, &kinds),
            || shared.device.empty_cache(),
        ),
        Err(e) => oom::SplitOutcome {
            failed: vec![(0..n, e)],
            ..Default::default()
        },
    };
    if outcome.oom_events > 0 {
        entry
            .stats
            .oom_events_total
            .fetch_add(u64::from(outcome.oom_events), Ordering::Relaxed);
        if let Some(at) = outcome.smallest_oom {
            entry.lower_cap_after_oom(at);
        }
        tracing::warn!(model = %entry.name, batch = n, events = outcome.oom_events, cap = entry.batch_cap(), "CUDA out of memory; split the batch and lowered the cap");
    }
    let failure_of = |i: usize| {
        outcome
            .failed
            .iter()
            .find(|(r, _)| r.contains(&i))
            .map(|(_, f)| f)
    };
    let batch_of = |i: usize| {
        outcome
            .ran
            .iter()
            .find(|r| r.contains(&i))
            .map_or(n, |r| r.len())
    };
    let mut latencies = Vec::with_capacity(n);
    let mut answers = Vec::with_capacity(n);
    for (i, request) in requests.into_iter().enumerate() {
        let output = match (failure_of(i), &request.job) {
            (Some(f), _) => Err(f.clone()),
            (None, Job::Logits(_)) => stager.read(i).map(Output::Logits),
            (None, Job::Segment { .. }) => stager.take_probabilities(i).map(Output::Probabilities),
        };
        let answer = output.map(|output| Answer {
            output,
            batch_size: u32::try_from(batch_of(i)).unwrap_or(u32::MAX),
        });
        let answer = answer.map_err(|f: ForwardFailure| InferError::Inference {
            model: entry.name.clone(),
            message: f.message().to_owned(),
        });
        if answer.is_ok() {
            latencies.push(request.enqueued.elapsed());
        }
        answers.push((request.reply, answer));
    }
    // Counters first, so a caller that reads telemetry right after its answer sees itself counted.
    let failed = (n - latencies.len()) as u64;
    if failed > 0 {
        tracing::warn!(model = %entry.name, failed, "batch requests failed");
    }
    entry
        .stats
        .failed_total
        .fetch_add(failed, Ordering::Relaxed);
    entry.stats.record_answers(latencies);
    entry.stats.batches_total.fetch_add(1, Ordering::Relaxed);
    entry.stats.in_flight.fetch_sub(n as u64, Ordering::Relaxed);
    entry.queue.batch_done(n);
    for (reply, answer) in answers {
        let _ = reply.send(answer);
    }
    // The model, then its memory, then the stream: a slot woken by the memory's release finds
    // this model already idle (unloadable for room), and one let through the gate finds the
    // memory free.
    drop(in_use);
    drop(reservation);
    drop(pass);
}
