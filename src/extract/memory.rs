//! While a load runs, memory it frees stays with the allocator for reuse instead of going
//! back to the operating system.
//!
//! Each chunk of a load frees and allocates again hundreds of MiB. With mimalloc's default
//! purge delay that memory went back to the OS between chunks, and every page came back
//! zeroed by the kernel: a sixth of a 10-million-row load's CPU time (`perf record` over
//! `bench/extract_pg.sh`). The peak rises a little (70–100 MiB there), since memory freed
//! early is not returned before the peak; it is returned when the last running load ends, so
//! a long-running `serve` does not keep it. This only has an effect when mimalloc is the
//! global allocator, as in the `parstat` binary.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (libmimalloc-sys does not name it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Loads running now, and the purge delay to restore when the last one ends.
static LOADS: AtomicUsize = AtomicUsize::new(0);
static DEFAULT_DELAY: AtomicI64 = AtomicI64::new(0);

/// Held for the duration of a load.
pub struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub fn hold() -> KeepFreedMemory {
        if LOADS.fetch_add(1, Ordering::SeqCst) == 0 {
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
        if LOADS.fetch_sub(1, Ordering::SeqCst) == 1 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purging_is_off_while_a_load_runs_and_restored_after_the_last() {
        let before = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        // mimalloc 3's default: a check that option 15 is still the purge delay.
        assert_eq!(before, 1000, "mimalloc's purge delay option moved");
        let a = KeepFreedMemory::hold();
        let b = KeepFreedMemory::hold();
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, -1);
        drop(a);
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) },
            -1,
            "a load still runs"
        );
        drop(b);
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) },
            before
        );
    }
}
