#![allow(unsafe_code)]
//! A persistent thread pool for splitting one product across cores.
//!
//! Decoding a 2B-parameter model runs ~200 matrix products per token, so the
//! cost of starting parallel work matters more than its throughput. Workers
//! live for the whole process; between jobs they spin for a short while
//! (jobs follow each other within microseconds during a forward pass) and
//! then sleep on a condition variable, so an idle server burns no CPU.
//!
//! A job is `tasks` calls of one closure, `f(0) .. f(tasks - 1)`; the calling
//! thread works on it too, and every task index is claimed exactly once from
//! an atomic counter, so uneven cores balance themselves. [`Pool::run`]
//! returns only after every worker has let go of the job, which is what makes
//! lending the closure (a borrow) to other threads sound.
//!
//! One job runs at a time. A second thread that calls [`Pool::run`] while a
//! job is in flight, or a task that calls it recursively, runs its own job
//! inline on its own thread instead of waiting.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::thread::JoinHandle;

/// Spins (with a pause hint) before a worker goes to sleep: roughly 50-100 µs.
const SPIN_LIMIT: u32 = 1 << 14;

/// The closure of the job in flight, with its lifetime erased.
type Task = *const (dyn Fn(usize) + Sync);

struct WorkerState {
    /// Bumped once per job; workers compare it with the last one they saw.
    epoch: AtomicUsize,
    /// The job: written by the caller before `epoch` moves, read by workers after.
    task: Mutex<Option<SendTask>>,
    tasks: AtomicUsize,
    /// Next unclaimed task index.
    next: AtomicUsize,
    /// Workers that have finished with the current job.
    checked_in: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    wake_lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

#[derive(Clone, Copy)]
struct SendTask(Task);
// SAFETY: the pointee is `Sync`, and `Pool::run` keeps it alive until every
// worker has checked in (see there).
unsafe impl Send for SendTask {}

/// A fixed set of worker threads (see the module docs).
pub struct Pool {
    threads: usize,
    shared: Arc<WorkerState>,
    /// Held by the one thread whose job is in flight.
    busy: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

thread_local! {
    /// True on a pool worker, and on a caller while its job runs.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// A pool that runs jobs on `threads` threads: the caller plus
    /// `threads - 1` workers. `threads` is at least 1; on targets without
    /// threads (wasm) it is always 1.
    pub fn new(threads: usize) -> Pool {
        let threads = if cfg!(target_family = "wasm") { 1 } else { threads.max(1) };
        let shared = Arc::new(WorkerState {
            epoch: AtomicUsize::new(0),
            task: Mutex::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            checked_in: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tern-kernel-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a kernel thread")
            })
            .collect();
        Pool { threads, shared, busy: Mutex::new(()), workers }
    }

    /// Threads a job runs on, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(i)` for every `i` in `0..tasks`, spread over the pool's
    /// threads, and returns when all calls have returned. A panic in any
    /// task is raised again here after the others finish.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        let guard = match self.busy.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if guard.is_none() || self.workers.is_empty() || tasks == 1 || IN_JOB.get() {
            (0..tasks).for_each(f);
            return;
        }
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. Workers reach the closure
        // through `s.task` only between the epoch bump below and their
        // check-in, and this function does not return (or unwind) before all
        // of them have checked in.
        let erased: Task = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Task>(f) };
        *s.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(SendTask(erased));
        s.tasks.store(tasks, SeqCst);
        s.next.store(0, SeqCst);
        s.checked_in.store(0, SeqCst);
        s.panicked.store(false, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.wake_lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        IN_JOB.set(true);
        let mine = panic::catch_unwind(AssertUnwindSafe(|| claim_tasks(s, f)));
        IN_JOB.set(false);
        let mut spins = 0u32;
        while s.checked_in.load(SeqCst) < self.workers.len() {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        *s.task.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(guard);
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        if s.panicked.load(SeqCst) {
            panic!("a kernel task panicked on a pool thread");
        }
    }

    /// Splits `data` into chunks of `chunk` elements (the last may be
    /// shorter) and calls `f(index, chunk)` for each, in parallel.
    pub fn for_each_chunk<T: Send>(&self, data: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
        assert!(chunk > 0, "for_each_chunk: chunk of 0");
        let len = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            let n = chunk.min(len - start);
            // SAFETY: `run` hands out each index once, so the ranges
            // [i·chunk, i·chunk + n) are disjoint and inside `data`, which is
            // mutably borrowed for the whole call.
            let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
            f(i, part)
        });
    }

    /// Splits `data` at the offsets `ends` (ascending, the last one
    /// `data.len()`) and calls `f(index, part)` for each part
    /// `ends[index - 1]..ends[index]`, in parallel.
    pub fn for_each_part<T: Send>(&self, data: &mut [T], ends: &[usize], f: &(dyn Fn(usize, &mut [T]) + Sync)) {
        assert!(ends.windows(2).all(|w| w[0] <= w[1]), "for_each_part: offsets out of order");
        assert_eq!(ends.last().copied().unwrap_or(0), data.len(), "for_each_part: parts do not cover the data");
        let base = SendPtr(data.as_mut_ptr());
        self.run(ends.len(), &|i| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            // SAFETY: `run` hands out each index once and the offsets ascend,
            // so the ranges are disjoint and inside `data`, which is mutably
            // borrowed for the whole call.
            let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), ends[i] - start) };
            f(i, part)
        });
    }

    /// Calls `f(index, block)` for each task in parallel, task i getting
    /// the columns `tasks[i].1` of every row of buffer `tasks[i].0`, which
    /// holds rows of `widths[that]` elements.
    ///
    /// # Panics
    /// If a buffer's length is not whole rows, or two tasks' columns of
    /// one buffer overlap or pass its width.
    pub fn for_each_columns<T: Send>(
        &self,
        buffers: &mut [&mut [T]],
        widths: &[usize],
        tasks: &[(usize, Range<usize>)],
        f: &(dyn Fn(usize, Columns<'_, T>) + Sync),
    ) {
        assert_eq!(buffers.len(), widths.len(), "for_each_columns: a width per buffer");
        for (m, (buffer, &width)) in buffers.iter().zip(widths).enumerate() {
            assert!(width > 0 && buffer.len().is_multiple_of(width), "for_each_columns: buffer {m} is not whole rows");
            let mut mine: Vec<&Range<usize>> = tasks.iter().filter(|(b, _)| *b == m).map(|(_, c)| c).collect();
            mine.sort_by_key(|c| c.start);
            assert!(
                mine.iter().all(|c| c.start <= c.end && c.end <= width),
                "for_each_columns: columns past the width"
            );
            assert!(mine.windows(2).all(|p| p[0].end <= p[1].start), "for_each_columns: tasks' columns overlap");
        }
        assert!(tasks.iter().all(|(b, _)| *b < buffers.len()), "for_each_columns: no such buffer");
        let heights: Vec<usize> = buffers.iter().zip(widths).map(|(b, w)| b.len() / w).collect();
        let bases: Vec<SendPtr<T>> = buffers.iter_mut().map(|b| SendPtr(b.as_mut_ptr())).collect();
        self.run(tasks.len(), &|i| {
            let (m, cols) = &tasks[i];
            let block = Columns {
                base: bases[*m].get(),
                stride: widths[*m],
                height: heights[*m],
                cols: cols.clone(),
                _buffer: PhantomData,
            };
            f(i, block)
        });
    }
}

/// One task's block of columns of a row-major buffer, from
/// [`Pool::for_each_columns`]: the same columns of every row.
pub struct Columns<'a, T> {
    base: *mut T,
    /// Elements per row of the whole buffer.
    stride: usize,
    height: usize,
    cols: Range<usize>,
    _buffer: PhantomData<&'a mut [T]>,
}

impl<T> Columns<'_, T> {
    /// Rows of the buffer.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The block's columns of each row in `rows`, as slices.
    ///
    /// # Panics
    /// If `rows` reaches past the buffer's last row.
    pub fn rows_mut(&mut self, rows: Range<usize>) -> impl Iterator<Item = &mut [T]> + '_ {
        assert!(rows.end <= self.height, "Columns::rows_mut: rows {rows:?} past {}", self.height);
        let (base, stride, cols) = (self.base, self.stride, self.cols.clone());
        rows.map(move |r| {
            // SAFETY: row r's columns `cols` lie inside the buffer (checked
            // in `for_each_columns`), no other task's block overlaps them,
            // and each row is handed out once per borrow of `self`.
            unsafe { std::slice::from_raw_parts_mut(base.add(r * stride + cols.start), cols.len()) }
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        self.shared.epoch.fetch_add(1, SeqCst);
        {
            let _g = self.shared.wake_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

struct SendPtr<T>(*mut T);
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: used only to hand disjoint sub-slices of a `&mut [T]` (T: Send)
// to pool threads, see `for_each_chunk`, `for_each_part` and
// `for_each_columns`.
unsafe impl<T: Send> Sync for SendPtr<T> {}

fn claim_tasks(s: &WorkerState, f: &(dyn Fn(usize) + Sync)) {
    let tasks = s.tasks.load(SeqCst);
    loop {
        let i = s.next.fetch_add(1, SeqCst);
        if i >= tasks {
            return;
        }
        f(i);
    }
}

fn worker(s: &WorkerState) {
    IN_JOB.set(true);
    // The epoch a pool starts at: a job posted before this thread got going
    // must still be seen as new.
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        while s.epoch.load(SeqCst) == seen {
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.wake_lock.lock().unwrap_or_else(|p| p.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            while s.epoch.load(SeqCst) == seen {
                g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            s.sleepers.fetch_sub(1, SeqCst);
        }
        seen = s.epoch.load(SeqCst);
        if s.shutdown.load(SeqCst) {
            return;
        }
        let task = *s.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(SendTask(ptr)) = task {
            // SAFETY: the caller keeps the closure alive until we check in.
            let f = unsafe { &*ptr };
            if panic::catch_unwind(AssertUnwindSafe(|| claim_tasks(s, f))).is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.checked_in.fetch_add(1, SeqCst);
    }
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Sets the thread count of the process-wide pool before its first use.
/// Returns the count in effect: `threads` if this call created the pool, or
/// the existing pool's count.
pub fn init_global(threads: usize) -> usize {
    GLOBAL.get_or_init(|| Pool::new(threads)).threads()
}

/// The process-wide pool the crate's products use: created on first use
/// with one thread per available core unless [`init_global`] came first.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| Pool::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once() {
        let pool = Pool::new(3);
        for tasks in [0, 1, 2, 3, 7, 100] {
            let hits: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
            pool.run(tasks, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{tasks} tasks");
        }
    }

    #[test]
    fn column_blocks_of_several_buffers_cover_each_element_once() {
        let pool = Pool::new(2);
        let (mut a, mut b) = (vec![0u32; 3 * 10], vec![0u32; 3 * 7]);
        let tasks = [(0, 0..4), (1, 0..7), (0, 4..9), (0, 9..10)];
        pool.for_each_columns(&mut [&mut a, &mut b], &[10, 7], &tasks, &|i, mut block| {
            let height = block.height();
            for row in block.rows_mut(0..height) {
                row.iter_mut().for_each(|v| *v += i as u32 + 1);
            }
        });
        let task_of = |m: usize, c: usize| tasks.iter().position(|(b, cols)| *b == m && cols.contains(&c)).unwrap();
        for (m, buffer, width) in [(0, &a, 10), (1, &b, 7)] {
            for (j, v) in buffer.iter().enumerate() {
                assert_eq!(*v, task_of(m, j % width) as u32 + 1, "buffer {m} element {j}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "overlap")]
    #[cfg_attr(target_family = "wasm", ignore = "panics abort on wasm")]
    fn overlapping_column_blocks_are_refused() {
        let mut a = vec![0u8; 20];
        Pool::new(1).for_each_columns(&mut [&mut a], &[10], &[(0, 0..5), (0, 4..10)], &|_, _| ());
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        let pool = Pool::new(2);
        let mut data = vec![0u32; 1001];
        pool.for_each_chunk(&mut data, 64, &|i, part| part.iter_mut().for_each(|v| *v += i as u32 + 1));
        for (j, v) in data.iter().enumerate() {
            assert_eq!(*v, (j / 64) as u32 + 1);
        }
    }

    #[test]
    #[cfg_attr(target_family = "wasm", ignore = "wasm32-wasip1 has no threads to spawn")]
    fn nested_and_concurrent_jobs_run_inline() {
        let pool = Arc::new(Pool::new(2));
        let total = AtomicU64::new(0);
        pool.run(4, &|_| pool.run(3, &|_| _ = total.fetch_add(1, SeqCst)));
        assert_eq!(total.load(SeqCst), 12);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let n = AtomicU64::new(0);
                    for _ in 0..200 {
                        pool.run(5, &|_| _ = n.fetch_add(1, SeqCst));
                    }
                    n.load(SeqCst)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 1000);
        }
    }

    #[test]
    #[cfg_attr(target_family = "wasm", ignore = "panics abort on wasm")]
    fn a_panicking_task_panics_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = panic::catch_unwind(AssertUnwindSafe(|| pool.run(8, &|i| assert_ne!(i, 5))));
        assert!(r.is_err());
        let n = AtomicU64::new(0);
        pool.run(8, &|_| _ = n.fetch_add(1, SeqCst));
        assert_eq!(n.load(SeqCst), 8);
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let pool = Pool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let n = AtomicU64::new(0);
        pool.run(16, &|_| _ = n.fetch_add(1, SeqCst));
        assert_eq!(n.load(SeqCst), 16);
    }
}
