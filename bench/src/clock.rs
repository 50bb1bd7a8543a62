//! A monotonic clock shared by every process on the machine (CLOCK_MONOTONIC), so a
//! publisher process and a subscriber process can subtract each other's timestamps.

/// Nanoseconds on the system-wide monotonic clock.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
