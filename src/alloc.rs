//! What the allocator (mimalloc, in the `parstat` binary) does with freed memory and which
//! pages it asks the kernel for, by kind of run. These only have an effect when mimalloc is
//! the global allocator, as in the `parstat` binary.
//!
//! - A load keeps the memory it frees for reuse instead of returning it to the operating
//!   system ([`KeepFreedMemory`]). Each chunk of a load frees and allocates again hundreds of
//!   MiB. With mimalloc's default purge delay that memory went back to the OS between chunks,
//!   and every page came back zeroed by the kernel: a sixth of a 10-million-row load's CPU
//!   time (`perf record` over `bench/extract_pg.sh`). The peak rises a little (70–100 MiB
//!   there), since memory freed early is not returned before the peak; it is returned when
//!   the last running load ends, so a long-running `serve` does not keep it.
//! - A short analytic run (a report, a query, the analysts' tests) uses the system's small
//!   pages and never returns freed memory ([`short_run`]).

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (libmimalloc-sys does not name it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_allow_thp` in mimalloc 3's `mi_option_t` (libmimalloc-sys does not name it).
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Settings for the rest of a short analytic run (a report, a query, the analysts' tests):
///
/// - Small pages. mimalloc asks the kernel for huge pages on its arenas. A report lives a
///   second or two and touches each page a few times, so zeroing whole 2 MiB pages at the
///   first touch, and the kernel's compaction to find them, outweigh the fewer TLB misses: on
///   `monthly_par` over 10 million dossiers, system time was 0.7–1.7 s with huge pages and
///   0.45–0.57 s without, and the peak 520–740 MiB against 340–440 MiB
///   (`MIMALLOC_ALLOW_THP=0`, four runs of each).
/// - Freed memory kept. With the default purge delay, mimalloc returns what is free once more
///   when the process ends, 4 MiB per system call (about 370 calls, 50 ms, after a
///   `monthly_par` report), then the kernel frees the process's memory anyway. Kept, that
///   report took 0.89–0.93 s instead of 0.92–0.96 s (four runs of each) with no higher peak.
///
/// An operator's own `MIMALLOC_PURGE_DELAY` wins.
pub fn short_run() {
    // SAFETY: `mi_option_set` only writes the option's entry in mimalloc's table; the prctl
    // only sets a flag of this process.
    unsafe {
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        if !operator_chose_purge_delay() {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// mimalloc reads `MIMALLOC_PURGE_DELAY` itself; parstat then leaves the option alone.
fn operator_chose_purge_delay() -> bool {
    std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
}

/// Loads running now, and the purge delay to restore when the last one ends.
static LOADS: AtomicUsize = AtomicUsize::new(0);
static DEFAULT_DELAY: AtomicI64 = AtomicI64::new(0);

/// Held for the duration of a load.
pub struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub fn hold() -> KeepFreedMemory {
        if LOADS.fetch_add(1, Ordering::SeqCst) == 0 && !operator_chose_purge_delay() {
            // SAFETY: mimalloc's option calls take any option number and value and only read
            // or write the option's entry in its table.
            unsafe {
                DEFAULT_DELAY.store(
                    libmimalloc_sys::mi_option_get(PURGE_DELAY) as i64,
                    Ordering::SeqCst,
                );
                libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
            }
        }
        KeepFreedMemory(())
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        if LOADS.fetch_sub(1, Ordering::SeqCst) == 1 && !operator_chose_purge_delay() {
            // SAFETY: as above; `mi_collect` only releases memory no allocation uses.
            unsafe {
                libmimalloc_sys::mi_option_set(
                    PURGE_DELAY,
                    DEFAULT_DELAY.load(Ordering::SeqCst) as _,
                );
                libmimalloc_sys::mi_collect(false);
            }
        }
    }
}

/// The process's resident memory and what mimalloc has committed, in MiB, for the debug log:
/// the gap between them and the live data tells retained memory from data.
pub fn usage_mib() -> (u64, u64) {
    // SAFETY: sysconf only reads a system setting.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| (pages * page) >> 20);
    let mut commit = 0usize;
    let none = std::ptr::null_mut();
    // SAFETY: mimalloc writes through the one valid pointer and skips the null ones.
    unsafe {
        libmimalloc_sys::mi_process_info(none, none, none, none, none, &mut commit, none, none);
    }
    (rss, (commit as u64) >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(o: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
        // SAFETY: reads one entry of mimalloc's option table.
        unsafe { libmimalloc_sys::mi_option_get(o) }
    }

    /// One test for both settings: they share mimalloc's process-wide option table.
    #[test]
    fn loads_keep_freed_memory_while_they_run_and_short_runs_use_small_pages_and_keep_it() {
        let before = option(PURGE_DELAY);
        // mimalloc 3's defaults: a check that options 15 and 43 are still the purge delay
        // and `allow_thp`.
        assert_eq!(before, 1000, "mimalloc's purge delay option moved");
        assert_eq!(option(ALLOW_THP), 1, "mimalloc's allow_thp option moved");
        let a = KeepFreedMemory::hold();
        let b = KeepFreedMemory::hold();
        assert_eq!(option(PURGE_DELAY), -1);
        drop(a);
        assert_eq!(option(PURGE_DELAY), -1, "a load still runs");
        drop(b);
        assert_eq!(option(PURGE_DELAY), before);

        short_run();
        assert_eq!(option(ALLOW_THP), 0);
        assert_eq!(option(PURGE_DELAY), -1);
        #[cfg(target_os = "linux")]
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
        // A load inside a short run leaves its setting as it found it.
        drop(KeepFreedMemory::hold());
        assert_eq!(option(PURGE_DELAY), -1);
        // SAFETY: as in `short_run`; puts the defaults back for the other tests.
        unsafe {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, before);
            libmimalloc_sys::mi_option_set(ALLOW_THP, 1);
        }
    }

    #[test]
    fn usage_reads_the_resident_memory_of_the_process() {
        let (rss, _) = usage_mib();
        assert!(rss > 0, "no resident memory read from /proc/self/statm");
    }
}
