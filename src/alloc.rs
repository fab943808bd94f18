//! What the allocator (mimalloc, in the `parstat` binary) does with freed memory and which
//! pages it asks the kernel for, by kind of run. These only have an effect when mimalloc is
//! the global allocator, as in the `parstat` binary.
//!
//! - A load keeps the memory it frees for reuse instead of returning it to the operating
//!   system ([`KeepFreedMemory`]): each chunk frees and allocates again hundreds of MiB, and
//!   pages returned to the kernel come back zeroed, at a real CPU cost. The peak rises a
//!   little; the memory is returned when the last running load ends, so `serve` does not keep
//!   it.
//! - Except while it merges an update into stored files: then freed memory goes back after
//!   100 ms ([`ReturnFreedMemory`]), which keeps a spread update's peak well under 1 GiB.
//! - A short analytic run (a report, a query, the analysts' tests) uses the system's small
//!   pages and never returns freed memory ([`short_run`]).

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (libmimalloc-sys does not name it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_allow_thp` in mimalloc 3's `mi_option_t` (libmimalloc-sys does not name it).
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// How long memory freed during a merge waits before it goes back to the operating system
/// (see [`ReturnFreedMemory`]).
const MERGE_PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Settings for the rest of a short analytic run (a report, a query, the analysts' tests):
///
/// - Small pages. A report lives a second or two and touches each page a few times, so
///   zeroing whole 2 MiB huge pages and the kernel's compaction outweigh the fewer TLB misses.
/// - Freed memory kept. Otherwise mimalloc returns what is free at exit, 4 MiB per system
///   call, just before the kernel frees the process's memory anyway.
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

/// Loads and merges running now, and the purge delay from before the first of them: the
/// delay is set from these whenever one starts or ends, so that concurrent runs (the
/// scheduler's) leave the setting as they found it, whatever order they end in.
struct Held {
    loads: usize,
    merges: usize,
    before: Option<std::ffi::c_long>,
}

static HELD: std::sync::Mutex<Held> = std::sync::Mutex::new(Held {
    loads: 0,
    merges: 0,
    before: None,
});

/// Counts a load (`load`) or a merge in or out (`delta` +1 or -1) and sets the purge delay:
/// a merge's while one runs, else a load's, else what it was before.
fn settle(load: bool, delta: isize) {
    if operator_chose_purge_delay() {
        return;
    }
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: mimalloc's option calls take any option number and value and only read or
    // write the option's entry in its table; `mi_collect` only releases memory no
    // allocation uses.
    unsafe {
        if held.loads == 0 && held.merges == 0 {
            held.before = Some(libmimalloc_sys::mi_option_get(PURGE_DELAY));
        }
        let count = if load {
            &mut held.loads
        } else {
            &mut held.merges
        };
        *count = count.saturating_add_signed(delta);
        let delay = if held.merges > 0 {
            MERGE_PURGE_DELAY_MS
        } else if held.loads > 0 {
            -1
        } else {
            held.before
                .take()
                .unwrap_or(libmimalloc_sys::mi_option_get(PURGE_DELAY))
        };
        libmimalloc_sys::mi_option_set(PURGE_DELAY, delay);
        if delay != -1 && delta < 0 {
            libmimalloc_sys::mi_collect(false);
        }
    }
}

/// Held for the duration of a load.
pub struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub fn hold() -> KeepFreedMemory {
        settle(true, 1);
        KeepFreedMemory(())
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        settle(true, -1);
    }
}

/// Held while a load merges an update into stored files: freed memory goes back to the
/// operating system after [`MERGE_PURGE_DELAY_MS`], whatever [`KeepFreedMemory`] asks for the
/// rest of the load.
///
/// Each merge group frees and allocates hundreds of MiB in sizes that change from group to
/// group, so memory kept for reuse grows group after group instead of being reused; returning
/// it after a short delay bounds the peak at a small cost in time (figures in bench/README.md).
pub struct ReturnFreedMemory(());

impl ReturnFreedMemory {
    pub fn hold() -> ReturnFreedMemory {
        settle(false, 1);
        ReturnFreedMemory(())
    }
}

impl Drop for ReturnFreedMemory {
    fn drop(&mut self) {
        settle(false, -1);
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
    fn loads_keep_freed_memory_merges_return_it_and_short_runs_use_small_pages_and_keep_it() {
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

        // Merges inside a load return freed memory after a short delay, and whichever ends
        // last puts back what was there before the first.
        let load = KeepFreedMemory::hold();
        let m1 = ReturnFreedMemory::hold();
        assert_eq!(option(PURGE_DELAY), MERGE_PURGE_DELAY_MS);
        let m2 = ReturnFreedMemory::hold();
        drop(m1);
        assert_eq!(
            option(PURGE_DELAY),
            MERGE_PURGE_DELAY_MS,
            "a merge still runs"
        );
        drop(m2);
        assert_eq!(option(PURGE_DELAY), -1, "the load still runs");
        let m3 = ReturnFreedMemory::hold();
        drop(load);
        assert_eq!(
            option(PURGE_DELAY),
            MERGE_PURGE_DELAY_MS,
            "a merge still runs"
        );
        drop(m3);
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
