//! Resource limits of one call.

use std::time::Duration;

/// Memory, time and output limits for one sandboxed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory (all memories together) in MiB.
    pub memory_mib: u32,
    /// Wall-clock limit of one call in milliseconds.
    pub timeout_ms: u64,
    /// Largest output (result JSON, and stdout+stderr) in KiB.
    pub max_output_kib: u32,
}

impl Limits {
    pub const DEFAULT_MEMORY_MIB: u32 = 64;
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
    pub const DEFAULT_MAX_OUTPUT_KIB: u32 = 1024;
    /// Upper bounds a policy may ask for.
    pub const MAX_MEMORY_MIB: u32 = 4096;
    pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
    pub const MAX_OUTPUT_KIB: u32 = 64 * 1024;

    pub fn memory_bytes(&self) -> usize {
        self.memory_mib as usize * 1024 * 1024
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn max_output_bytes(&self) -> usize {
        self.max_output_kib as usize * 1024
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: Self::DEFAULT_MEMORY_MIB,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            max_output_kib: Self::DEFAULT_MAX_OUTPUT_KIB,
        }
    }
}
