//! A dynamic worker pool: tasks go into priority lanes of one bounded queue and tokio
//! tasks ("workers") run them, between `min_workers` and `max_workers` of them.
//!
//! - Growth: a submit that leaves the queue above the high watermark (default 80% of its
//!   capacity) starts a worker, up to `max_workers`.
//! - Shrink, with hysteresis: a worker idle for `idle_timeout` stops, if the pool has more
//!   than `min_workers` and the queue is below the low watermark (default 30%).
//! - A panicking task is caught: its handle yields [`TaskError::Panicked`], the worker keeps
//!   running, and `weir_flow_pool_panics_total` counts it.
//! - Per-task timeout and cancellation ([`TaskHandle::cancel`]).
//! - Lanes are served in strict priority (High, then Normal, then Low): a steady flood of
//!   high-priority work starves the low lane, by design.
//! - [`Pool::drain`]: stop accepting, finish every accepted task, stop the workers.
//!
//! Thread pools in crates (rayon, threadpool) run blocking closures on OS threads;
//! `tokio::task::JoinSet` has neither bounds nor lanes nor scaling. This pool runs futures
//! on the caller's runtime, so it is written here.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{self, Either};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::metrics::Metrics;

/// Metric (gauge): workers running.
pub const METRIC_WORKERS: &str = "weir_flow_pool_workers";
/// Metric (gauge): tasks waiting in the lanes.
pub const METRIC_QUEUE_DEPTH: &str = "weir_flow_pool_queue_depth";
/// Metric: tasks that panicked.
pub const METRIC_PANICS: &str = "weir_flow_pool_panics_total";
/// Metric: tasks stopped by their timeout.
pub const METRIC_TIMEOUTS: &str = "weir_flow_pool_timeouts_total";
/// Metric: tasks cancelled.
pub const METRIC_CANCELLED: &str = "weir_flow_pool_cancelled_total";
/// Metric: tasks that ran to completion (successfully or not).
pub const METRIC_COMPLETED: &str = "weir_flow_pool_completed_total";
/// Metric: submits refused (queue full or draining).
pub const METRIC_REJECTED: &str = "weir_flow_pool_rejected_total";

/// A task's lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Served first.
    High = 0,
    /// Served when no high-priority task waits.
    Normal = 1,
    /// Served when no other task waits.
    Low = 2,
}

/// Configuration of a [`Pool`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Workers always kept. Default 1.
    pub min_workers: usize,
    /// Most workers. Default 8.
    pub max_workers: usize,
    /// Tasks that may wait in the lanes together. Default 1024.
    pub queue_capacity: usize,
    /// Grow above this fraction of the queue capacity. Default 0.8.
    pub high_watermark: f64,
    /// Shrink only below this fraction. Default 0.3.
    pub low_watermark: f64,
    /// A worker idle this long may stop. Default 10 s.
    pub idle_timeout: Duration,
    /// Timeout of every task unless the submit gives one. Default none.
    pub task_timeout: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_workers: 1,
            max_workers: 8,
            queue_capacity: 1024,
            high_watermark: 0.8,
            low_watermark: 0.3,
            idle_timeout: Duration::from_secs(10),
            task_timeout: None,
        }
    }
}

/// Why a task gave no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The task panicked; the message if it had one.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task ran longer than its timeout.
    #[error("task timed out")]
    TimedOut,
    /// The task was cancelled.
    #[error("task cancelled")]
    Cancelled,
}

/// A refused submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The lanes hold `queue_capacity` tasks.
    #[error("pool queue full")]
    Full,
    /// The pool is draining or drained.
    #[error("pool is draining")]
    Draining,
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Lanes {
    lanes: [VecDeque<Job>; 3],
    len: usize,
    closed: bool,
}

impl Lanes {
    fn pop(&mut self) -> Option<Job> {
        let job = self.lanes.iter_mut().find_map(VecDeque::pop_front)?;
        self.len -= 1;
        Some(job)
    }
}

struct Inner {
    cfg: PoolConfig,
    lanes: Mutex<Lanes>,
    work: Notify,
    workers: AtomicUsize,
    /// Accepted tasks not finished yet (queued or running).
    pending: AtomicUsize,
    done: Notify,
    workers_gone: Notify,
    panics: AtomicU64,
    runtime: tokio::runtime::Handle,
    metrics: Option<Metrics>,
}

impl Inner {
    fn count(&self, name: &'static str) {
        if let Some(m) = &self.metrics {
            m.counter(name, 1);
        }
    }

    fn gauge(&self, name: &'static str, v: usize) {
        if let Some(m) = &self.metrics {
            m.gauge(name, v as f64);
        }
    }

    fn watermark(&self, f: f64) -> usize {
        (self.cfg.queue_capacity as f64 * f) as usize
    }
}

/// The pool. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// The result of a submitted task; await it, or cancel the task.
#[derive(Debug)]
pub struct TaskHandle<T> {
    rx: oneshot::Receiver<Result<T, TaskError>>,
    /// Sending cancels; dropping (the handle went away) does not.
    cancel: Mutex<Option<oneshot::Sender<()>>>,
}

impl<T> TaskHandle<T> {
    /// Cancels the task: if it has not started it never will; if it runs, it is dropped at
    /// its next await point. The handle then yields [`TaskError::Cancelled`] (unless the
    /// task had already finished). Dropping a handle does not cancel its task.
    pub fn cancel(&self) {
        if let Some(tx) = self.cancel.lock().take() {
            // The task may have finished already: nothing to cancel.
            let _ = tx.send(());
        }
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The job always sends before it ends; a dropped sender means the runtime shut down
        // under it, which is cancellation from the task's point of view.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(TaskError::Cancelled)))
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

impl Pool {
    /// A pool on the current tokio runtime, with `min_workers` started. Panics outside a
    /// runtime, or if `min_workers > max_workers` or `max_workers` is 0.
    pub fn new(cfg: PoolConfig) -> Self {
        Self::build(cfg, None)
    }

    /// Like [`Pool::new`], reporting to `metrics`.
    pub fn with_metrics(cfg: PoolConfig, metrics: Metrics) -> Self {
        Self::build(cfg, Some(metrics))
    }

    fn build(cfg: PoolConfig, metrics: Option<Metrics>) -> Self {
        assert!(cfg.max_workers > 0, "max_workers must be at least 1");
        assert!(
            cfg.min_workers <= cfg.max_workers,
            "min_workers > max_workers"
        );
        let min = cfg.min_workers;
        let pool = Pool {
            inner: Arc::new(Inner {
                cfg,
                lanes: Mutex::new(Lanes {
                    lanes: Default::default(),
                    len: 0,
                    closed: false,
                }),
                work: Notify::new(),
                workers: AtomicUsize::new(0),
                pending: AtomicUsize::new(0),
                done: Notify::new(),
                workers_gone: Notify::new(),
                panics: AtomicU64::new(0),
                runtime: tokio::runtime::Handle::current(),
                metrics,
            }),
        };
        for _ in 0..min {
            pool.spawn_worker();
        }
        pool
    }

    /// Workers running now.
    pub fn workers(&self) -> usize {
        self.inner.workers.load(Ordering::SeqCst)
    }

    /// Tasks waiting in the lanes.
    pub fn queued(&self) -> usize {
        self.inner.lanes.lock().len
    }

    /// Tasks that panicked so far.
    pub fn panics(&self) -> u64 {
        self.inner.panics.load(Ordering::Relaxed)
    }

    /// Submits `task` with the pool's default timeout.
    pub fn submit<F, T>(&self, priority: Priority, task: F) -> Result<TaskHandle<T>, SubmitError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit_with_timeout(priority, self.inner.cfg.task_timeout, task)
    }

    /// Submits `task`, stopped after `timeout` if it has one.
    pub fn submit_with_timeout<F, T>(
        &self,
        priority: Priority,
        timeout: Option<Duration>,
        task: F,
    ) -> Result<TaskHandle<T>, SubmitError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // A oneshot rather than a cancellation token: cheaper to wait on (no lock to
        // register), and a dropped handle is told apart from a cancel.
        let (cancel, mut cancelled) = oneshot::channel::<()>();
        let inner = Arc::clone(&self.inner);
        let job: Job = Box::pin(async move {
            let run = async {
                let guarded = AssertUnwindSafe(task).catch_unwind();
                let r = match timeout {
                    Some(d) => match tokio::time::timeout(d, guarded).await {
                        Ok(r) => r,
                        Err(_) => return Err(TaskError::TimedOut),
                    },
                    None => guarded.await,
                };
                r.map_err(|p| TaskError::Panicked(panic_message(&*p)))
            };
            let r = match cancelled.try_recv() {
                Ok(()) => Err(TaskError::Cancelled),
                Err(oneshot::error::TryRecvError::Closed) => run.await,
                Err(oneshot::error::TryRecvError::Empty) => {
                    match future::select(pin!(run), cancelled).await {
                        Either::Left((r, _)) => r,
                        Either::Right((Ok(()), _)) => Err(TaskError::Cancelled),
                        // The handle was dropped: nobody can cancel any more.
                        Either::Right((Err(_), run)) => run.await,
                    }
                }
            };
            match &r {
                Ok(_) => inner.count(METRIC_COMPLETED),
                Err(TaskError::Panicked(msg)) => {
                    inner.panics.fetch_add(1, Ordering::Relaxed);
                    inner.count(METRIC_PANICS);
                    tracing::warn!(message = %msg, "pool task panicked");
                }
                Err(TaskError::TimedOut) => inner.count(METRIC_TIMEOUTS),
                Err(TaskError::Cancelled) => inner.count(METRIC_CANCELLED),
            }
            // The submitter may have dropped its handle: nobody to tell.
            let _ = tx.send(r);
        });

        let depth = {
            let mut l = self.inner.lanes.lock();
            if l.closed {
                drop(l);
                self.inner.count(METRIC_REJECTED);
                return Err(SubmitError::Draining);
            }
            if l.len >= self.inner.cfg.queue_capacity {
                drop(l);
                self.inner.count(METRIC_REJECTED);
                return Err(SubmitError::Full);
            }
            l.lanes[priority as usize].push_back(job);
            l.len += 1;
            self.inner.pending.fetch_add(1, Ordering::SeqCst);
            // Workers retire under this lock, so a task is never left without one.
            (l.len, self.inner.workers.load(Ordering::SeqCst) == 0)
        };
        let (depth, no_worker) = depth;
        self.inner.gauge(METRIC_QUEUE_DEPTH, depth);
        self.inner.work.notify_one();
        if no_worker || depth > self.inner.watermark(self.inner.cfg.high_watermark) {
            self.grow();
        }
        Ok(TaskHandle {
            rx,
            cancel: Mutex::new(Some(cancel)),
        })
    }

    fn grow(&self) {
        let inner = &self.inner;
        let mut w = inner.workers.load(Ordering::SeqCst);
        while w < inner.cfg.max_workers {
            match inner
                .workers
                .compare_exchange(w, w + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.start_worker();
                    return;
                }
                Err(now) => w = now,
            }
        }
    }

    fn spawn_worker(&self) {
        self.inner.workers.fetch_add(1, Ordering::SeqCst);
        self.start_worker();
    }

    fn start_worker(&self) {
        let inner = Arc::clone(&self.inner);
        inner.gauge(METRIC_WORKERS, inner.workers.load(Ordering::SeqCst));
        let rt = inner.runtime.clone();
        rt.spawn(worker(inner));
    }

    /// Stops accepting tasks, waits until every accepted task has finished, then until
    /// every worker has stopped.
    pub async fn drain(&self) {
        self.inner.lanes.lock().closed = true;
        loop {
            let mut done = pin!(self.inner.done.notified());
            done.as_mut().enable();
            if self.inner.pending.load(Ordering::SeqCst) == 0 {
                break;
            }
            done.await;
        }
        loop {
            let mut gone = pin!(self.inner.workers_gone.notified());
            gone.as_mut().enable();
            self.inner.work.notify_waiters();
            if self.inner.workers.load(Ordering::SeqCst) == 0 {
                break;
            }
            gone.await;
        }
    }
}

/// Leaves the pool if it may: more than `min_workers` and the queue below the low mark.
/// Decided under the lanes lock, the one submit checks for a pool without workers.
fn try_retire(inner: &Inner) -> bool {
    let l = inner.lanes.lock();
    if l.len >= inner.watermark(inner.cfg.low_watermark).max(1) {
        return false;
    }
    let mut w = inner.workers.load(Ordering::SeqCst);
    // The last worker stays while anything is queued.
    while w > inner.cfg.min_workers && (w > 1 || l.len == 0) {
        match inner
            .workers
            .compare_exchange(w, w - 1, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => return true,
            Err(now) => w = now,
        }
    }
    false
}

async fn worker(inner: Arc<Inner>) {
    loop {
        let job = loop {
            let mut notified = pin!(inner.work.notified());
            notified.as_mut().enable();
            {
                let mut l = inner.lanes.lock();
                if let Some(job) = l.pop() {
                    let depth = l.len;
                    drop(l);
                    inner.gauge(METRIC_QUEUE_DEPTH, depth);
                    break Some(job);
                }
                if l.closed {
                    inner.workers.fetch_sub(1, Ordering::SeqCst);
                    break None;
                }
            }
            if tokio::time::timeout(inner.cfg.idle_timeout, notified)
                .await
                .is_err()
                && try_retire(&inner)
            {
                break None;
            }
        };
        let Some(job) = job else {
            inner.gauge(METRIC_WORKERS, inner.workers.load(Ordering::SeqCst));
            inner.workers_gone.notify_waiters();
            return;
        };
        // The job catches its own panics, so this worker survives any task.
        job.await;
        if inner.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            inner.done.notify_waiters();
        }
    }
}
