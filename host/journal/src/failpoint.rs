//! Crash failpoints for the crash harness, compiled in only with the
//! `failpoints` feature (the tests enable it; release builds never have
//! it): `CAMINA_CRASH_AFTER=<n>` aborts the process right after its n-th
//! append is durable (as `kill -9` would), `CAMINA_CRASH_BEFORE=<n>` right
//! before it: after a tool ran but before its result was written, the
//! window that matters for side effects. A task's creation is the first
//! append.

#[cfg(feature = "failpoints")]
mod on {
    use std::sync::atomic::{AtomicU64, Ordering};

    pub(crate) struct Failpoints {
        appends: AtomicU64,
        after: Option<u64>,
        before: Option<u64>,
    }

    impl Failpoints {
        pub(crate) fn from_env() -> Self {
            let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
            Self {
                appends: AtomicU64::new(0),
                after: read("CAMINA_CRASH_AFTER"),
                before: read("CAMINA_CRASH_BEFORE"),
            }
        }

        /// Counts an append; dies before it when asked to.
        pub(crate) fn before_append(&self) -> u64 {
            let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
            if self.before == Some(n) {
                std::process::abort();
            }
            n
        }

        /// Dies after append `n` when asked to.
        pub(crate) fn after_append(&self, n: u64) {
            if self.after == Some(n) {
                std::process::abort();
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
mod on {
    /// Without the feature: nothing counted, nothing read from the
    /// environment, nothing that can abort.
    pub(crate) struct Failpoints;

    impl Failpoints {
        pub(crate) fn from_env() -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn before_append(&self) -> u64 {
            0
        }

        #[inline(always)]
        pub(crate) fn after_append(&self, _n: u64) {}
    }
}

pub(crate) use on::Failpoints;
