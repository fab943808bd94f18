//! Short analytic runs (a report, a query, the analysts' tests) use the system's small memory
//! pages: transparent huge pages cost them more than they give.
//!
//! mimalloc asks the kernel for huge pages on its arenas. A report lives a second or two and
//! touches each page a few times, so zeroing whole 2 MiB pages at the first touch, and the
//! kernel's compaction to find them, outweigh the fewer TLB misses: on `monthly_par` over 10
//! million dossiers, system time was 0.7–1.7 s with huge pages and 0.45–0.57 s without, and
//! the peak 520–740 MiB against 340–440 MiB (`MIMALLOC_ALLOW_THP=0`, four runs of each). A
//! load, which runs for minutes, keeps them: there the difference was within the noise.

/// `mi_option_allow_thp` in mimalloc 3's `mi_option_t` (libmimalloc-sys does not name it).
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Turns huge pages off for the rest of the process: mimalloc no longer asks for them, and the
/// kernel no longer gives them, even where mimalloc already asked.
pub fn use_small_pages() {
    // SAFETY: `mi_option_set` only writes the option's entry in mimalloc's table; the prctl
    // only sets a flag of this process.
    unsafe {
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_after_the_call() {
        // mimalloc 3's default on Linux: a check that option 43 is still `allow_thp`.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(ALLOW_THP) },
            1,
            "mimalloc's allow_thp option moved"
        );
        use_small_pages();
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(ALLOW_THP) }, 0);
        #[cfg(target_os = "linux")]
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
    }
}
