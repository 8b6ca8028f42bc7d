//! The heap of a process that idles for hours between short bursts of work. glibc's
//! malloc keeps what a burst freed (a pull, twenty containers created, a new target
//! parsed) as free memory inside the heap, counted in the agent's RSS for as long as it
//! runs, and gives each thread that allocates an arena of its own. Here: one arena, big
//! blocks (64 KiB and up: a whole reply read into memory, the CA bundle) mapped on their
//! own and returned when freed, and after a cycle that did something, the free pages
//! inside the heap handed back (`malloc_trim`). Only glibc has these knobs; elsewhere
//! this does nothing: musl's malloc (the static agent of the amd64 and arm64 .debs) has
//! no arenas per thread and returns freed groups of blocks to the kernel by itself.

/// Blocks at least this big are mapped on their own and unmapped when freed. Fixed:
/// glibc otherwise raises it to the largest block freed so far (up to 32 MiB), after
/// which big blocks stay in the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 64 * 1024;

/// Free memory at the top of the heap beyond this goes back at once (glibc: 128 KiB,
/// raised like the mmap threshold).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 64 * 1024;

/// Sets malloc up as above; called once, before anything is allocated in earnest.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Hands the whole free pages inside the heap back to the kernel. A walk over malloc's
/// free lists: cheap for a heap this size, but not worth doing after an idle cycle,
/// which frees what it allocated and leaves the heap as it was.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only returns unused heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
