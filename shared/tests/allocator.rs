//! `custody::startup::steady_allocator` keeps large buffers in mappings of their own
//! after a larger one was freed, where glibc by itself would have raised its mmap
//! threshold and served them from the heap (which then fragments). Its own test
//! binary: the count of mapped blocks is process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_large_buffer_after_a_freed_larger_one_still_gets_its_own_mapping() {
    use std::hint::black_box;

    fn mapped_blocks() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        unsafe { libc::mallinfo2() }.hblks
    }

    assert!(custody::startup::steady_allocator());
    // Freeing a 4 MiB mapped block is what raises glibc's own threshold to 4 MiB.
    drop(black_box(vec![1u8; 4 << 20]));
    let before = mapped_blocks();
    let buffer = black_box(vec![1u8; 512 << 10]);
    let after = mapped_blocks();
    assert_eq!(after, before + 1, "a 512 KiB buffer came from the heap");
    drop(buffer);
    assert_eq!(
        mapped_blocks(),
        before,
        "its mapping was returned when freed"
    );
}
