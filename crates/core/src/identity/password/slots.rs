//! The process's hashing slots and the argon2 working memory they lend.
//!
//! Argon2id is slow and large by design: tens of milliseconds of a core and
//! 19 MiB per hash or verification. [`run_in_slot`] runs password work at
//! most [`hashing_slots`] at a time, the rest waiting in line as tasks, and
//! lends each computation a buffer kept from the one before while the work
//! keeps coming. Half a second after the last computation the kept buffers
//! go back to the operating system ([`SPARE_MEMORY_LINGER`]), so the
//! process returns to its size from before the burst.

use std::cell::Cell;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use argon2::{Argon2, Block, Params};
use tokio::sync::Semaphore;

use super::{M_COST_KIB, PasswordError};

/// How many password computations (hashes and verifications) this process
/// runs at once: one per core, and at least two.
///
/// Argon2id with one lane keeps one core busy, so more at once than cores
/// only adds 19 MiB each and makes every one of them slower.
pub fn hashing_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// The process's [`hashing_slots`]. Process-wide rather than per
/// [`Identity`](crate::identity::Identity), because memory and cores are.
static HASHING_SLOTS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(hashing_slots())));

/// How long working memory is kept for the next computation once none is
/// running: long enough to carry a burst or a steady stream of sign-ins,
/// short enough that the process is back to its size within a second.
pub(super) const SPARE_MEMORY_LINGER: Duration = Duration::from_millis(500);

/// Runs `work` (a [`hash_password`](super::hash_password),
/// [`verify_password`](super::verify_password) or
/// [`burn_verification_time`](super::burn_verification_time)) on a blocking
/// thread once one of the process's [`hashing_slots`] is free.
///
/// Callers wait in line, first come first served, as tasks, not threads: a
/// burst of 200 sign-ins costs 200 small futures, [`hashing_slots`] threads
/// and [`hashing_slots`] × 19 MiB. A caller dropped while it waits (its
/// request cancelled or past its deadline) leaves the line. Once started,
/// the work runs to its end and holds the slot until then, so cancelled
/// requests cannot let more computations run than there are slots.
///
/// The work's argon2 memory is lent by the slot: the buffer of an earlier
/// computation while password work keeps coming (no page faults, no
/// zeroing by the kernel), fresh otherwise; half a second after the last
/// computation ends, the kept buffers are freed.
///
/// # Errors
///
/// [`PasswordError::Interrupted`] if `work` panicked.
pub async fn run_in_slot<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let slot = Arc::clone(&HASHING_SLOTS)
        .acquire_owned()
        .await
        .map_err(|e| PasswordError::Interrupted(e.to_string()))?;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // Dropped in reverse order, also when `work` panics: the memory is
        // back among the spares before the slot frees up for the next one.
        let _slot = slot;
        let _memory = LentMemory::lend(runtime);
        work()
    })
    .await
    .map_err(|e| PasswordError::Interrupted(e.to_string()))
}

/// Argon2 buffers of the current parameters kept between computations.
struct SpareMemory {
    /// At most one per slot: each was lent to a computation in a slot and
    /// given back.
    buffers: Vec<Vec<Block>>,
    /// Computations holding a slot now.
    running: usize,
    /// Counts computations started, so that a release scheduled when the
    /// last one ended can tell whether another has run since.
    started: u64,
}

static SPARE_MEMORY: Mutex<SpareMemory> = Mutex::new(SpareMemory {
    buffers: Vec::new(),
    running: 0,
    started: 0,
});

/// The spare buffers, also after a panic elsewhere while they were locked
/// (the data is a plain list and two counters, consistent at every step).
fn spare_memory() -> std::sync::MutexGuard<'static, SpareMemory> {
    SPARE_MEMORY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the computation on this thread may use for its argon2 memory.
#[derive(Default)]
enum SlotMemory {
    /// The thread is not running work of [`run_in_slot`]: memory is
    /// allocated for each computation and freed after it.
    #[default]
    Outside,
    /// In a slot, with no buffer at hand (none was spare, or the work has
    /// it now).
    Empty,
    /// In a slot, with this buffer to use.
    Kept(Vec<Block>),
}

thread_local! {
    static SLOT_MEMORY: Cell<SlotMemory> = const { Cell::new(SlotMemory::Outside) };
}

/// Lends a spare buffer to the work on this thread for as long as it lives;
/// when dropped, takes the buffer back among the spares and, if no other
/// computation is running, schedules their release.
struct LentMemory {
    runtime: tokio::runtime::Handle,
}

impl LentMemory {
    fn lend(runtime: tokio::runtime::Handle) -> Self {
        let buffer = {
            let mut spare = spare_memory();
            spare.running += 1;
            spare.started += 1;
            spare.buffers.pop()
        };
        SLOT_MEMORY.set(buffer.map_or(SlotMemory::Empty, SlotMemory::Kept));
        Self { runtime }
    }
}

impl Drop for LentMemory {
    fn drop(&mut self) {
        let returned = SLOT_MEMORY.take();
        let mut spare = spare_memory();
        spare.running -= 1;
        if let SlotMemory::Kept(buffer) = returned {
            spare.buffers.push(buffer);
        }
        if spare.running == 0 && !spare.buffers.is_empty() {
            let started = spare.started;
            self.runtime.spawn(async move {
                tokio::time::sleep(SPARE_MEMORY_LINGER).await;
                release_spare_memory(started);
            });
        }
    }
}

/// Frees the spare buffers unless a computation started after the
/// `started`-th or is running.
fn release_spare_memory(started: u64) {
    let buffers = {
        let mut spare = spare_memory();
        if spare.running > 0 || spare.started != started {
            return;
        }
        std::mem::take(&mut spare.buffers)
    };
    // Unmapped outside the lock.
    drop(buffers);
}

/// How many argon2 buffers are kept for the next computation.
#[cfg(test)]
pub(super) fn spare_buffers() -> usize {
    spare_memory().buffers.len()
}

/// glibc's `DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit targets (mallopt(3)): the
/// highest its dynamic mmap threshold goes.
const GLIBC_MMAP_THRESHOLD_MAX: usize = 32 << 20;

/// Blocks of memory with the current parameters.
const CURRENT_BLOCKS: usize = M_COST_KIB as usize;

/// The working memory of one argon2 computation.
///
/// In a slot of [`run_in_slot`] with the current parameters, it is the
/// slot's buffer, given back to it when dropped; otherwise it is allocated
/// for this computation and handed back to the operating system when
/// dropped.
///
/// Why not let argon2 allocate: glibc's malloc serves a request at or above
/// its mmap threshold (128 KiB at start) with a mapping of its own that
/// `free` unmaps. But freeing such a block of up to 32 MiB raises the
/// threshold to that block's size, so from the second sign-in on every
/// 19 MiB block came from a per-thread malloc arena, which keeps freed
/// memory: 200 failed sign-ins left the server above 1.2 GiB
/// (docs/benchmarks.md, "Memory under a burst of failed sign-ins").
/// Reserving more than the highest threshold glibc can reach keeps every
/// buffer a mapping of its own, unmapped when freed; only the first
/// `block_count` blocks are ever written, so the rest of the reservation is
/// address space, not memory. Other allocators (musl, macOS) map blocks this
/// large anyway. The alternatives measure the same but cost more:
/// `mallopt(M_MMAP_THRESHOLD)` at start needs `unsafe` FFI in the binary and
/// misses tests and other embedders of this crate, and another global
/// allocator brings a C build and changes every other allocation.
///
/// A fresh mapping costs page faults and zeroing: a third more time per
/// verification, half again under a burst on 2 cores. Hence the buffers
/// kept between computations while sign-ins keep coming.
pub(super) struct ArgonMemory {
    blocks: Vec<Block>,
    /// Given back to the slot when dropped.
    from_slot: bool,
}

impl ArgonMemory {
    /// Memory for argon2 with `params`.
    pub(super) fn for_params(params: &Params) -> Result<Self, PasswordError> {
        let blocks = params.block_count();
        if blocks == CURRENT_BLOCKS {
            match SLOT_MEMORY.take() {
                SlotMemory::Outside => {}
                // Argon2's first pass writes every block before reading it,
                // so what an earlier computation left does not matter.
                SlotMemory::Kept(kept) => {
                    return Ok(Self {
                        blocks: kept,
                        from_slot: true,
                    });
                }
                SlotMemory::Empty => {
                    return Ok(Self {
                        blocks: Self::allocate(blocks)?,
                        from_slot: true,
                    });
                }
            }
        }
        Ok(Self {
            blocks: Self::allocate(blocks)?,
            from_slot: false,
        })
    }

    /// `blocks` zeroed blocks, in a mapping of their own.
    fn allocate(blocks: usize) -> Result<Vec<Block>, PasswordError> {
        let reserve = blocks.max(GLIBC_MMAP_THRESHOLD_MAX / Block::SIZE + 1);
        let mut memory = Vec::new();
        memory
            .try_reserve_exact(reserve)
            .map_err(|e| PasswordError::Hashing(e.to_string()))?;
        memory.resize(blocks, Block::new());
        Ok(memory)
    }

    /// Computes argon2 of `password` and `salt` into `out`, whose length
    /// is the output length.
    pub(super) fn hash_into(
        &mut self,
        hasher: &Argon2<'_>,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        hasher.hash_password_into_with_memory(password, salt, out, &mut self.blocks[..])
    }
}

impl Drop for ArgonMemory {
    fn drop(&mut self) {
        if self.from_slot {
            SLOT_MEMORY.set(SlotMemory::Kept(std::mem::take(&mut self.blocks)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::{Verified, burn_verification_time, hash_password, verify_password};
    use super::*;

    /// Held by the tests that take [`HASHING_SLOTS`], so that they do not
    /// count each other's work.
    static SLOT_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Work in progress, and the most there ever was at once.
    #[derive(Default)]
    struct Concurrency {
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl Concurrency {
        fn enter(&self) {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
        }

        fn leave(&self) {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A gate that blocking work waits at until it opens.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Gate {
        fn pass(&self) {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
    }

    /// Opens the gate when dropped, also when the test fails: the runtime
    /// waits for its blocking threads before the test can end.
    struct OpensOnDrop(Arc<Gate>);

    impl Drop for OpensOnDrop {
        fn drop(&mut self) {
            *self.0.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.0.opened.notify_all();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_verifications_runs_a_few_at_a_time() {
        let _alone = SLOT_TESTS.lock().await;
        let stored = hash_password("the right password").unwrap();
        let concurrency = Arc::new(Concurrency::default());
        let verifications: Vec<_> = (0..24)
            .map(|i| {
                let (stored, concurrency) = (stored.clone(), Arc::clone(&concurrency));
                tokio::spawn(run_in_slot(move || {
                    concurrency.enter();
                    let verdict = if i % 2 == 0 {
                        verify_password(&format!("wrong password {i}"), &stored)
                    } else {
                        burn_verification_time("an unknown account's password");
                        Ok(Verified::Mismatch)
                    };
                    concurrency.leave();
                    verdict
                }))
            })
            .collect();
        for verification in verifications {
            assert_eq!(verification.await.unwrap().unwrap(), Ok(Verified::Mismatch));
        }
        let most = concurrency.most.load(Ordering::SeqCst);
        assert!(
            most <= hashing_slots(),
            "{most} ran at once, more than the {} slots",
            hashing_slots()
        );
        assert!(most >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_callers_keep_their_slot_until_the_work_ends() {
        let _alone = SLOT_TESTS.lock().await;
        let slots = hashing_slots();
        // Every work item waits for `gate` to open, so the ones that started
        // are still running when their callers are cancelled.
        let gate = Arc::new(Gate::default());
        let opens_on_exit = OpensOnDrop(Arc::clone(&gate));
        let concurrency = Arc::new(Concurrency::default());
        let callers: Vec<_> = (0..slots + 4)
            .map(|_| {
                let (gate, concurrency) = (Arc::clone(&gate), Arc::clone(&concurrency));
                tokio::spawn(run_in_slot(move || {
                    concurrency.enter();
                    gate.pass();
                    concurrency.leave();
                }))
            })
            .collect();
        while concurrency.running.load(Ordering::SeqCst) < slots {
            tokio::task::yield_now().await;
        }
        for caller in &callers {
            caller.abort();
        }
        for caller in callers {
            assert!(caller.await.unwrap_err().is_cancelled());
        }
        // The requests are gone, the computations are not: no slot is free
        // for another one until they end.
        assert_eq!(HASHING_SLOTS.available_permits(), 0);
        drop(opens_on_exit);
        while HASHING_SLOTS.available_permits() < slots {
            tokio::task::yield_now().await;
        }
        assert_eq!(concurrency.most.load(Ordering::SeqCst), slots);
        assert_eq!(concurrency.running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_panic_in_password_work_is_an_error() {
        let _alone = SLOT_TESTS.lock().await;
        let outcome = run_in_slot(|| -> usize { panic!("broken hasher") }).await;
        assert!(matches!(outcome, Err(PasswordError::Interrupted(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_is_kept_through_a_burst_and_let_go_after_it() {
        let _alone = SLOT_TESTS.lock().await;
        let stored = hash_password("the right password").unwrap();
        let slots = hashing_slots();
        let verifications: Vec<_> = (0..3 * slots)
            .map(|i| {
                let stored = stored.clone();
                tokio::spawn(run_in_slot(move || {
                    verify_password(&format!("wrong password {i}"), &stored)
                }))
            })
            .collect();
        for verification in verifications {
            assert_eq!(verification.await.unwrap().unwrap(), Ok(Verified::Mismatch));
        }
        // One buffer per slot at most, handed from one computation to the
        // next; a verification with a kept buffer still gives the right
        // answers.
        let kept = spare_buffers();
        assert!((1..=slots).contains(&kept), "{kept} buffers kept");
        let again = stored.clone();
        let verdict = run_in_slot(move || verify_password("the right password", &again));
        assert_eq!(
            verdict.await.unwrap(),
            Ok(Verified::Match {
                needs_rehash: false
            })
        );
        // Once no password work has come for a while, they are freed (the
        // wait is generous: this is about whether, not how fast).
        for _ in 0..100 {
            tokio::time::sleep(SPARE_MEMORY_LINGER / 5).await;
            if spare_buffers() == 0 {
                break;
            }
        }
        assert_eq!(spare_buffers(), 0);
    }
}
