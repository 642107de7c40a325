//! The dynamic batcher of one model: a bounded queue that async callers push into without waiting
//! (a full queue is refused at once), and that the model's slot threads pull batches from. A batch
//! closes when it reaches the batch cap, when it is as large as expected (below), when its oldest
//! request has waited the max queue delay, or at shutdown; it is formed only when a slot is free to
//! run it, so it grows while all slots are busy. Requests whose caller went away are dropped before
//! they reach a slot.
//!
//! "As large as expected" is what keeps both ends fast. When a slot comes back for work it
//! expects the requests it just answered (closed-loop clients send their next one at once) plus
//! those already queued, up to the cap; before any batch has run, a full one. So one client waits
//! no delay at all (its batches are of one), while eight closed-loop clients fill a batch of eight
//! instead of being served as two half-empty alternating groups: a group that queued while the
//! other ran waits the moment it takes the other to come back, and the two merge. When load
//! falls, the delay closes a smaller batch and the expectation follows it down; when it rises,
//! the queue grows while the slot is busy and the next batch is larger.
//!
//! When does the delay start? A group that queued while a batch longer than the delay ran has
//! already waited out the delay when the slot comes back, so counting from its arrival starts it
//! at once, half full, every time (H200: batches of 4 at 8 engine clients for all three models,
//! 37 % below their throughput at 16 clients). Counting from the end of the last batch instead
//! lets the returning group join it, but only pays when the group does return within the delay:
//! over HTTP a client decodes, traces polygons and uploads between two requests (about 40 ms),
//! and waiting 8 ms after every batch for it only idled the GPU (H200, TorchScript HRNet,
//! 8 clients: engine 70 → 92 img/s, HTTP 71 → 57 req/s). So the queue keeps a moving average of
//! how soon the first request arrives after a batch ends, and counts the delay from the batch's
//! end only while that is shorter than the delay; otherwise from the oldest request's arrival.
//!
//! The queue's bound and the slot count change live (`apply`), which is why this is a small
//! mutex-and-condvar queue rather than a `tokio::sync::mpsc` channel, whose capacity is fixed at
//! creation. Answers go back over `tokio::sync::oneshot`.

use crate::error::InferError;
use crate::image::{Probabilities, RawImage};
use crate::staging::Staged;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a caller asks of the model for one image.
#[derive(Debug)]
pub(crate) enum Job {
    /// Pre-processed CHW float image at the model's input size; the logits come back.
    Logits(Vec<f32>),
    /// A decoded image; its foreground probabilities at its own size come back.
    Segment {
        /// The pixels.
        image: RawImage,
    },
}

impl Job {
    /// How the stager handles it.
    pub fn staged(&self) -> Staged<'_> {
        match self {
            Job::Logits(_) => Staged::Tensor,
            Job::Segment { image } => Staged::Image { image },
        }
    }

    /// Device memory its pre- and post-processing need beyond the batch's measured peak.
    pub fn scratch_bytes(&self, model_pixels: usize) -> u64 {
        match self {
            Job::Logits(_) => 0,
            Job::Segment { image, .. } => image.scratch_bytes(model_pixels),
        }
    }
}

/// What the model produced for one image.
#[derive(Debug, PartialEq)]
pub(crate) enum Output {
    /// H × W logits at the model's input size.
    Logits(Vec<f32>),
    /// Foreground probability of every pixel at the image's size (the mask is thresholded from
    /// them on the CPU, so only they cross the bus).
    Probabilities(Probabilities),
}

/// One image's answer.
#[derive(Debug, PartialEq)]
pub(crate) struct Answer {
    /// What came out.
    pub output: Output,
    /// Images in the forward pass that produced it (after any out-of-memory split).
    pub batch_size: u32,
}

/// Where a request's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<Answer, InferError>>;

/// One image waiting for a batch.
#[derive(Debug)]
pub(crate) struct Request {
    /// What to do with it.
    pub job: Job,
    /// The caller's answer channel.
    pub reply: Reply,
    /// When it was queued (latency is measured from here).
    pub enqueued: Instant,
}

/// What a slot should do with the queue as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing queued: sleep until something arrives.
    Idle,
    /// Requests are queued but the batch may still grow: wait this long at most.
    Wait(Duration),
    /// Close the batch now.
    Run,
}

/// The batching policy, as a pure function of the queue's state: `waited` is how long the batch
/// counts as having waited ([`waited`]), `expected` how many requests the slot expects (the
/// module doc says why).
pub(crate) fn decide(
    len: usize,
    waited: Duration,
    cap: usize,
    delay: Duration,
    draining: bool,
    expected: usize,
) -> Decision {
    let enough = expected.clamp(1, cap.max(1));
    if len == 0 {
        Decision::Idle
    } else if len >= enough || draining || waited >= delay {
        Decision::Run
    } else {
        Decision::Wait(delay - waited)
    }
}

/// How long the oldest queued request (queued for `oldest_age`) counts as having waited: since the
/// asking slot's last batch ended (`since_done` ago) if requests have lately been arriving within
/// the delay after a batch (`return_gap`, a moving average), else since it arrived. The module
/// doc says why.
pub(crate) fn waited(
    oldest_age: Duration,
    since_done: Option<Duration>,
    return_gap: Option<Duration>,
    delay: Duration,
) -> Duration {
    match (since_done, return_gap) {
        (Some(done), Some(gap)) if gap < delay => oldest_age.min(done),
        _ => oldest_age,
    }
}

/// The moving average of how soon the first request arrives after a batch ends, after one more
/// `sample`. Samples count at most twice the delay (when it is known), so an idle hour weighs
/// like a slow client and a burst after it turns waiting back on within a few batches.
pub(crate) fn next_return_gap(
    average: Option<Duration>,
    sample: Duration,
    delay: Option<Duration>,
) -> Duration {
    let sample = delay.map_or(sample, |d| sample.min(d.saturating_mul(2)));
    average.map_or(sample, |a| (a * 3 + sample) / 4)
}

/// Why [`BatchQueue::push`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds this many requests, its bound.
    Full(usize),
    /// The queue takes no more requests (shutdown, or the model failed).
    Closed,
}

/// What [`BatchQueue::wait_batch`] tells a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// A batch is ready to be taken.
    Batch,
    /// This slot should exit (retired by a smaller slot count, or shut down with nothing left).
    Exit,
}

#[derive(Debug)]
struct State {
    pending: VecDeque<Request>,
    capacity: usize,
    closed: bool,
    live_slots: usize,
    target_slots: usize,
    cancelled: u64,
    /// How many requests the next batch should wait for (see the module doc); before any batch
    /// has run, "as many as allowed", so a queue that never ran waits out the delay like a plain
    /// delay-or-size batcher.
    expected: usize,
    /// When the last batch (of any slot) was answered, while no request has arrived and no batch
    /// started since: the next arrival is a sample of `return_gap`.
    awaiting_since: Option<Instant>,
    /// The delay the slots last read (bounds the samples of `return_gap`).
    delay: Option<Duration>,
    /// Moving average of how soon after a batch ends the next request arrives.
    return_gap: Option<Duration>,
}

impl State {
    fn purge_cancelled(&mut self) {
        let before = self.pending.len();
        self.pending.retain(|r| !r.reply.is_closed());
        self.cancelled += (before - self.pending.len()) as u64;
    }
}

/// A model's bounded request queue, shared by callers and slot threads.
#[derive(Debug)]
pub(crate) struct BatchQueue {
    state: Mutex<State>,
    changed: Condvar,
}

impl BatchQueue {
    /// An empty queue holding at most `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                capacity,
                closed: false,
                live_slots: 0,
                target_slots: 0,
                cancelled: 0,
                expected: usize::MAX,
                awaiting_since: None,
                delay: None,
                return_gap: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// Queues a request, or gives it back with why not. A request accepted here is always
    /// answered: slots only exit once the queue is closed *and* empty.
    pub fn push(&self, request: Request) -> Result<(), (Request, Refused)> {
        let mut st = self.state.lock();
        if st.closed {
            return Err((request, Refused::Closed));
        }
        if st.pending.len() >= st.capacity {
            st.purge_cancelled();
        }
        if st.pending.len() >= st.capacity {
            let depth = st.pending.len();
            return Err((request, Refused::Full(depth)));
        }
        if let Some(done) = st.awaiting_since.take() {
            st.return_gap = Some(next_return_gap(st.return_gap, done.elapsed(), st.delay));
        }
        st.pending.push_back(request);
        drop(st);
        self.changed.notify_one();
        Ok(())
    }

    /// Blocks a slot until a batch should close (by [`decide`], with the cap and delay that
    /// `settings` reports at each wake-up) or until the slot should exit. `last_end` is when this
    /// slot's last batch ended (`None` before its first).
    pub fn wait_batch(
        &self,
        settings: impl Fn() -> (usize, Duration),
        last_end: Option<Instant>,
    ) -> Next {
        let mut st = self.state.lock();
        loop {
            if st.live_slots > st.target_slots {
                st.live_slots -= 1;
                return Next::Exit;
            }
            st.purge_cancelled();
            if st.closed && st.pending.is_empty() {
                st.live_slots = st.live_slots.saturating_sub(1);
                return Next::Exit;
            }
            let (cap, delay) = settings();
            st.delay = Some(delay);
            let since_done = last_end.map(|t| t.elapsed());
            let waited = st
                .pending
                .front()
                .map(|r| waited(r.enqueued.elapsed(), since_done, st.return_gap, delay))
                .unwrap_or_default();
            match decide(st.pending.len(), waited, cap, delay, st.closed, st.expected) {
                Decision::Run => return Next::Batch,
                Decision::Idle => self.changed.wait(&mut st),
                Decision::Wait(d) => {
                    let _ = self.changed.wait_for(&mut st, d);
                }
            }
        }
    }

    /// Takes up to `n` live requests, oldest first.
    pub fn take(&self, n: usize) -> Vec<Request> {
        let mut st = self.state.lock();
        st.purge_cancelled();
        // A batch that starts before anyone arrived leaves no sample: the next arrival's gap
        // would measure this batch's run time, not the clients' return.
        st.awaiting_since = None;
        let k = n.min(st.pending.len());
        let batch: Vec<Request> = st.pending.drain(..k).collect();
        let more = !st.pending.is_empty();
        drop(st);
        if more {
            self.changed.notify_one();
        }
        batch
    }

    /// Called by a slot when its batch of `answered` requests is done, before the answers go out:
    /// the next batch is expected to hold those requests again (their clients come back) plus the
    /// ones that queued while it ran.
    pub fn batch_done(&self, answered: usize) {
        let mut st = self.state.lock();
        st.expected = answered.saturating_add(st.pending.len());
        st.awaiting_since = Some(Instant::now());
    }

    /// Takes every queued request (to fail them, e.g. when the model cannot load).
    pub fn take_all(&self) -> Vec<Request> {
        let mut st = self.state.lock();
        st.pending.drain(..).collect()
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Requests dropped because their caller went away.
    #[cfg(test)]
    pub fn cancelled(&self) -> u64 {
        self.state.lock().cancelled
    }

    /// Changes the bound; requests already queued above a lower bound stay queued.
    pub fn set_capacity(&self, capacity: usize) {
        self.state.lock().capacity = capacity;
    }

    /// Sets how many slots should serve this queue; returns how many new slot threads the caller
    /// must start (extra live slots retire themselves between batches).
    pub fn set_target_slots(&self, target: usize) -> usize {
        let mut st = self.state.lock();
        st.target_slots = target;
        let spawn = target.saturating_sub(st.live_slots);
        st.live_slots += spawn;
        drop(st);
        self.changed.notify_all();
        spawn
    }

    /// `count` slot threads that were counted by [`BatchQueue::set_target_slots`] did not start.
    pub fn slots_failed_to_start(&self, count: usize) {
        let mut st = self.state.lock();
        st.live_slots = st.live_slots.saturating_sub(count);
    }

    /// Slot threads running now.
    #[cfg(test)]
    pub fn live_slots(&self) -> usize {
        self.state.lock().live_slots
    }

    /// Stops waiting for batches to fill: everything queued runs now, then slots exit.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
    }

    /// Wakes every waiting slot to re-read its settings.
    pub fn wake_all(&self) {
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn request() -> (Request, oneshot::Receiver<Result<Answer, InferError>>) {
        let (tx, rx) = oneshot::channel();
        (
            Request {
                job: Job::Logits(vec![0.0]),
                reply: tx,
                enqueued: Instant::now(),
            },
            rx,
        )
    }

    #[test]
    fn batch_closes_on_size_delay_or_drain() {
        let d = |len, age, draining| decide(len, age, 4, 5 * MS, draining, 8);
        assert_eq!(d(0, MS, false), Decision::Idle);
        assert_eq!(d(4, Duration::ZERO, false), Decision::Run, "cap reached");
        assert_eq!(d(2, 2 * MS, false), Decision::Wait(3 * MS));
        assert_eq!(d(2, 5 * MS, false), Decision::Run, "delay over");
        assert_eq!(d(1, Duration::ZERO, true), Decision::Run, "draining");
        assert_eq!(
            decide(1, Duration::ZERO, 4, Duration::ZERO, false, 8),
            Decision::Run
        );
    }

    #[test]
    fn batch_closes_when_as_large_as_expected() {
        // One client: batches of one run at once, never waiting out the delay.
        assert_eq!(
            decide(1, Duration::ZERO, 8, 5 * MS, false, 1),
            Decision::Run
        );
        // Expecting nothing (0) still means one request is enough.
        assert_eq!(
            decide(1, Duration::ZERO, 8, 5 * MS, false, 0),
            Decision::Run
        );
        // Eight clients: wait for the eighth rather than run seven.
        assert_eq!(decide(7, MS, 8, 5 * MS, false, 8), Decision::Wait(4 * MS));
        assert_eq!(decide(8, MS, 8, 5 * MS, false, 8), Decision::Run);
        // The previous batch never asks for more than the cap (lowered live).
        assert_eq!(decide(4, MS, 4, 5 * MS, false, 8), Decision::Run);
    }

    fn push_n(
        q: &BatchQueue,
        n: usize,
        keep: &mut Vec<oneshot::Receiver<Result<Answer, InferError>>>,
    ) {
        for _ in 0..n {
            let (r, rx) = request();
            keep.push(rx);
            assert!(q.push(r).is_ok());
        }
    }

    type Replies = Vec<oneshot::Receiver<Result<Answer, InferError>>>;

    /// A queue served by one slot, and where its requests' answers would go.
    fn one_slot() -> (BatchQueue, Replies) {
        let q = BatchQueue::new(16);
        q.set_target_slots(1);
        (q, Vec::new())
    }

    /// A slot whose last batch ended now waits for a batch with `delay` while `n` requests
    /// arrive 10 ms into the wait; what it was told, how many it then took, and how long it
    /// waited.
    fn wait_while_arriving(
        q: &BatchQueue,
        replies: &mut Replies,
        n: usize,
        delay: Duration,
    ) -> (Next, usize, Duration) {
        let last_end = Some(Instant::now());
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| {
                let start = Instant::now();
                let next = q.wait_batch(|| (8, delay), last_end);
                let waited = start.elapsed();
                (next, q.take(8).len(), waited)
            });
            std::thread::sleep(10 * MS);
            push_n(q, n, replies);
            waiting.join().expect("waiter")
        })
    }

    #[test]
    fn a_lone_client_never_waits_for_company() {
        let (q, mut replies) = one_slot();
        push_n(&q, 1, &mut replies);
        assert_eq!(q.take(8).len(), 1);
        q.batch_done(1);
        // The answered request's client sends its next one: it runs at once.
        push_n(&q, 1, &mut replies);
        let start = Instant::now();
        assert_eq!(
            q.wait_batch(|| (8, Duration::from_secs(60)), None),
            Next::Batch
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn alternating_groups_merge_into_one_batch() {
        let (q, mut replies) = one_slot();
        // Group A (3) runs; group B (3) queues meanwhile.
        push_n(&q, 3, &mut replies);
        assert_eq!(q.take(8).len(), 3);
        push_n(&q, 3, &mut replies);
        q.batch_done(3);
        // The slot comes back expecting A's three again plus B's: it waits for them, and A's
        // clients come back.
        let (next, taken, waited) =
            wait_while_arriving(&q, &mut replies, 3, Duration::from_secs(60));
        assert_eq!((next, taken), (Next::Batch, 6), "the groups merged");
        assert!(waited < Duration::from_secs(5), "ran once they had");
    }

    #[test]
    fn the_delay_counts_from_the_batch_end_only_while_clients_return_within_it() {
        let delay = 8 * MS;
        let w = |gap| waited(30 * MS, Some(2 * MS), gap, delay);
        assert_eq!(w(Some(MS)), 2 * MS, "quick returns: since the batch ended");
        assert_eq!(w(Some(40 * MS)), 30 * MS, "slow returns: since it arrived");
        assert_eq!(w(None), 30 * MS, "no history: since it arrived");
        assert_eq!(
            waited(MS, Some(5 * MS), Some(MS), delay),
            MS,
            "arrived after the end"
        );
        assert_eq!(waited(30 * MS, None, Some(MS), delay), 30 * MS);
    }

    #[test]
    fn the_return_gap_average_is_bounded_and_recovers() {
        let delay = 8 * MS;
        assert_eq!(next_return_gap(None, 2 * MS, Some(delay)), 2 * MS);
        // An idle hour counts as twice the delay...
        let after_idle = next_return_gap(Some(MS), Duration::from_secs(3600), Some(delay));
        assert_eq!(after_idle, (3 * MS + 16 * MS) / 4);
        // ...and three quick returns bring the average back under the delay.
        let mut average = next_return_gap(None, Duration::from_secs(3600), Some(delay));
        for _ in 0..3 {
            average = next_return_gap(Some(average), Duration::ZERO, Some(delay));
        }
        assert!(average < delay, "{average:?}");
        // Before any slot has read the delay, samples count as they are.
        assert_eq!(next_return_gap(None, 9 * MS, None), 9 * MS);
        // With no delay configured, nothing is ever waited for after a batch.
        assert_eq!(
            next_return_gap(None, MS, Some(Duration::ZERO)),
            Duration::ZERO
        );
        assert_eq!(
            waited(5 * MS, Some(MS), Some(Duration::ZERO), Duration::ZERO),
            5 * MS
        );
    }

    #[test]
    fn a_group_older_than_the_delay_still_waits_for_the_returning_one() {
        // The H200 case: batches take longer than the delay, so the group that queued while
        // one ran has outwaited the delay by the time the slot comes back; clients have been
        // coming back at once after each batch.
        let delay = 300 * MS;
        let (q, mut replies) = one_slot();
        push_n(&q, 4, &mut replies);
        assert_eq!(q.take(8).len(), 4);
        q.batch_done(4);
        push_n(&q, 4, &mut replies); // they return at once
        assert_eq!(q.take(8).len(), 4);
        push_n(&q, 4, &mut replies);
        std::thread::sleep(delay + 50 * MS);
        q.batch_done(4);
        let (next, taken, _) = wait_while_arriving(&q, &mut replies, 4, delay);
        assert_eq!((next, taken), (Next::Batch, 8), "the two groups merged");
    }

    #[test]
    fn a_backlog_runs_at_once_when_clients_return_slowly() {
        // Over HTTP the answered clients come back long after the delay: a queued group that
        // has waited out the delay runs as soon as the slot is free, without idling for them.
        let (q, mut replies) = one_slot();
        push_n(&q, 4, &mut replies);
        assert_eq!(q.take(8).len(), 4);
        let delay = 300 * MS;
        q.batch_done(4);
        std::thread::sleep(delay + 50 * MS); // the next request comes after the delay
        push_n(&q, 4, &mut replies);
        assert_eq!(q.take(8).len(), 4);
        push_n(&q, 4, &mut replies);
        std::thread::sleep(delay + 50 * MS); // this group outwaits the delay while the batch runs
        q.batch_done(4);
        let start = Instant::now();
        assert_eq!(q.wait_batch(|| (8, delay), Some(start)), Next::Batch);
        assert!(start.elapsed() < delay / 2, "ran without waiting");
        assert_eq!(q.take(8).len(), 4);
    }

    #[test]
    fn a_smaller_load_is_served_after_the_delay() {
        let (q, mut replies) = one_slot();
        push_n(&q, 4, &mut replies);
        assert_eq!(q.take(8).len(), 4);
        q.batch_done(4);
        // Only two of the four clients come back: the delay closes a batch of two...
        push_n(&q, 2, &mut replies);
        let start = Instant::now();
        assert_eq!(q.wait_batch(|| (8, 30 * MS), None), Next::Batch);
        assert!(start.elapsed() >= 25 * MS);
        assert_eq!(q.take(8).len(), 2);
        q.batch_done(2);
        // ...and two are expected from then on.
        push_n(&q, 2, &mut replies);
        let start = Instant::now();
        assert_eq!(
            q.wait_batch(|| (8, Duration::from_secs(60)), None),
            Next::Batch
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn full_queue_refuses_and_cancelled_requests_are_dropped() {
        let q = BatchQueue::new(2);
        let (a, _ra) = request();
        let (b, rb) = request();
        let (c, _rc) = request();
        assert!(q.push(a).is_ok());
        assert!(q.push(b).is_ok());
        let (c, why) = q.push(c).unwrap_err();
        assert_eq!(why, Refused::Full(2));
        drop(rb); // caller of b went away: its place frees up
        assert!(q.push(c).is_ok());
        assert_eq!(q.cancelled(), 1);
        assert_eq!(q.take(8).len(), 2);
    }

    #[test]
    fn slots_retire_and_exit_on_close() {
        let q = BatchQueue::new(8);
        assert_eq!(q.set_target_slots(2), 2);
        assert_eq!(q.set_target_slots(1), 0);
        assert_eq!(
            q.wait_batch(|| (4, MS), None),
            Next::Exit,
            "one of two slots retires"
        );
        assert_eq!(q.live_slots(), 1);
        let (a, _ra) = request();
        assert!(q.push(a).is_ok());
        q.close();
        assert_eq!(
            q.wait_batch(|| (4, Duration::from_secs(60)), None),
            Next::Batch,
            "drains at once"
        );
        assert_eq!(q.take(4).len(), 1);
        assert_eq!(q.wait_batch(|| (4, MS), None), Next::Exit);
        let (b, _rb) = request();
        assert_eq!(q.push(b).unwrap_err().1, Refused::Closed);
    }

    #[test]
    fn waits_for_the_delay_then_runs() {
        let q = BatchQueue::new(8);
        q.set_target_slots(1);
        let (c, _rc) = request();
        assert!(q.push(c).is_ok());
        let start = Instant::now();
        assert_eq!(q.wait_batch(|| (4, 30 * MS), None), Next::Batch);
        assert!(start.elapsed() >= 25 * MS);
    }
}
