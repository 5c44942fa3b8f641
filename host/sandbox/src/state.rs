//! What one sandboxed call's store holds, and the views wasmtime-wasi and
//! wasi-http take of it.

use crate::bindings::camina::skill::host::{self, Level};
use crate::fs::FsAudit;
use crate::net::NetGate;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use wasmtime_wasi_io::IoView;

/// Bytes of `host.log` output one call may produce; the rest is dropped.
const LOG_BUDGET: usize = 64 * 1024;
/// One log line is cut at this many bytes.
const LOG_LINE_MAX: usize = 4096;

pub(crate) struct State {
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub net: NetGate,
    pub fs: FsAudit,
    pub limiter: Limiter,
    pub plugin: Arc<str>,
    log_left: usize,
}

impl State {
    pub(crate) fn new(
        plugin: Arc<str>,
        wasi: WasiCtx,
        net: NetGate,
        memory_bytes: usize,
        fs: FsAudit,
    ) -> Self {
        Self {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            net,
            fs,
            limiter: Limiter::new(memory_bytes),
            plugin,
            log_left: LOG_BUDGET,
        }
    }
}

impl State {
    pub(crate) fn fs_view(&mut self) -> crate::fs::FsView<'_> {
        crate::fs::FsView {
            inner: wasmtime_wasi::filesystem::WasiFilesystemCtxView {
                ctx: self.wasi.filesystem(),
                table: &mut self.table,
            },
            audit: &mut self.fs,
        }
    }
}

impl IoView for State {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.net,
        }
    }
}

impl host::Host for State {
    fn log(&mut self, level: Level, mut message: String) {
        if self.log_left == 0 {
            return;
        }
        if message.len() > LOG_LINE_MAX.min(self.log_left) {
            let mut end = LOG_LINE_MAX.min(self.log_left);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        self.log_left = self.log_left.saturating_sub(message.len().max(1));
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "camina::skill", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "camina::skill", plugin, "{message}"),
            Level::Info => tracing::info!(target: "camina::skill", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "camina::skill", plugin, "{message}"),
            Level::Error => tracing::error!(target: "camina::skill", plugin, "{message}"),
        }
        if self.log_left == 0 {
            tracing::warn!(target: "camina::skill", plugin, "log budget of {LOG_BUDGET} bytes used up; further lines dropped");
        }
    }
}

/// Enforces the policy's memory limit over all of a call's memories.
#[derive(Debug)]
pub(crate) struct Limiter {
    max: usize,
    total: usize,
    /// Set when a growth was refused: a later trap is the memory limit's.
    pub hit: bool,
}

impl Limiter {
    fn new(max: usize) -> Self {
        Self {
            max,
            total: 0,
            hit: false,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.max {
            self.hit = true;
            return Ok(false);
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
