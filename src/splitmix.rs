//! SplitMix64: a small, fast, well-mixed deterministic PRNG, shared by the simulator (same
//! seed, same text) and the router (cheap random bits from one seed).

/// The generator.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeds the generator.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A SplitMix64 stream shared between threads: one atomic add per draw, so concurrent callers
/// never see the same value, and a single-threaded run sees the same sequence every time.
#[derive(Debug)]
pub struct SharedSplitMix(std::sync::atomic::AtomicU64);

impl SharedSplitMix {
    /// Seeds the stream.
    pub fn new(seed: u64) -> SharedSplitMix {
        SharedSplitMix(std::sync::atomic::AtomicU64::new(seed))
    }

    /// Next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        mix(self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed))
    }

    /// Uniform in [0, 1).
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One SplitMix64 output for `seed`: well-mixed bits from any number.
pub fn mix(seed: u64) -> u64 {
    SplitMix::new(seed).next_u64()
}
