//! Random bytes from the operating system's CSPRNG, drawn in blocks.
//!
//! `getrandom` is a system call; an Exchange needs random bytes several
//! times (a nonce to seal the deliverable, a simulated gift code, …), and
//! one call per use cost more CPU than the rest of the work together. So
//! each thread draws 4 KiB at a time and hands the bytes out in order; a
//! byte handed out is wiped from the pool and never handed out again. The
//! bytes are the kernel's, unchanged: this is a buffer, not a generator.

use std::cell::RefCell;

/// Bytes drawn from the kernel at a time, per thread.
const BLOCK: usize = 4096;

struct Pool {
    buf: Box<[u8; BLOCK]>,
    /// Next unused byte; `BLOCK` when the pool is empty.
    pos: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        buf: Box::new([0u8; BLOCK]),
        pos: BLOCK,
    });
}

/// Fills `out` with random bytes.
///
/// # Errors
/// When the operating system's CSPRNG fails (then `out` is unchanged
/// as far as randomness goes: do not use it).
pub fn fill(out: &mut [u8]) -> Result<(), getrandom::Error> {
    if out.len() > BLOCK / 4 {
        // Large requests go straight to the kernel.
        return getrandom::fill(out);
    }
    POOL.with_borrow_mut(|p| {
        if BLOCK - p.pos < out.len() {
            getrandom::fill(&mut p.buf[..])?;
            p.pos = 0;
        }
        let taken = &mut p.buf[p.pos..p.pos + out.len()];
        out.copy_from_slice(taken);
        taken.fill(0);
        p.pos += out.len();
        Ok(())
    })
}

/// A random `u32`.
///
/// # Errors
/// As [`fill`].
pub fn u32() -> Result<u32, getrandom::Error> {
    let mut b = [0u8; 4];
    fill(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_never_handed_out_twice_and_look_random() {
        // Across several refills: no 16-byte draw repeats, and the bytes
        // are spread over all values (a stuck or zeroed pool fails this).
        let mut seen = std::collections::HashSet::new();
        let mut counts = [0u32; 256];
        for _ in 0..2_000 {
            let mut b = [0u8; 16];
            fill(&mut b).unwrap();
            assert!(seen.insert(b), "a 16-byte draw repeated");
            for x in b {
                counts[usize::from(x)] += 1;
            }
        }
        // 32,000 bytes: each value expected 125 times.
        assert!(counts.iter().all(|&c| (50..250).contains(&c)), "{counts:?}");
    }

    #[test]
    fn large_and_odd_sized_requests_are_filled() {
        let mut big = vec![0u8; 10_000];
        fill(&mut big).unwrap();
        assert!(big.iter().filter(|&&b| b == 0).count() < 200);
        for n in [0, 1, 3, 1023, 1024] {
            let mut v = vec![0u8; n];
            fill(&mut v).unwrap();
        }
    }
}
