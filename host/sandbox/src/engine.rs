//! The process-wide engine and linker, and turning bytes into [`Skill`]s.

use crate::fs::AuditedFs;
use crate::skill::Skill;
use crate::state::State;
use crate::{Error, Result};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
use wasmtime_wasi::{WasiView, random::WasiRandom};

/// How often the epoch advances; timeouts are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Tunables of the sandbox engine.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Calls running at once (pool slots). Further calls wait.
    pub max_concurrent_calls: u32,
    /// Largest memory any policy may grant (reserved per pool slot).
    pub max_memory_mib: u32,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 128,
            max_memory_mib: camina_policy::Limits::MAX_MEMORY_MIB,
        }
    }
}

/// One engine, one linker, one epoch ticker: shared by every call.
pub struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<State>>,
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
    stop_ticker: Arc<AtomicBool>,
    fingerprint: String,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

fn engine_error(e: impl Into<crate::BoxError>) -> Error {
    Error::Engine(e.into())
}

impl Sandbox {
    pub fn new() -> Result<Self> {
        Self::with_options(SandboxOptions::default())
    }

    pub fn with_options(options: SandboxOptions) -> Result<Self> {
        let slots = options.max_concurrent_calls.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .max_core_instances_per_component(16)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_memory_size(options.max_memory_mib as usize * 1024 * 1024)
            // Reuse pages between calls instead of unmapping them: the
            // fresh-instance path stays in the tens of microseconds.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .max_wasm_stack(1 << 20)
            .async_stack_size(2 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_error)?;

        let mut linker = Linker::<State>::new(&engine);
        link(&mut linker).map_err(engine_error)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop_ticker.clone());

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = format!("{:016x}", hasher.finish());

        Ok(Self {
            engine,
            linker: Arc::new(linker),
            permits: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
            stop_ticker,
            fingerprint,
        })
    }

    /// Identifies this engine's compiled-code format; part of the cache key
    /// of precompiled components.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Compiles component bytes and links them against the sandbox.
    pub fn compile(&self, wasm: &[u8]) -> Result<Skill> {
        check_is_component(wasm)?;
        let component = Component::new(&self.engine, wasm).map_err(|e| Error::Compile(e.into()))?;
        Skill::prepare(self, component)
    }

    /// Compiles component bytes to this engine's native code, for the cache.
    pub fn precompile(&self, wasm: &[u8]) -> Result<Vec<u8>> {
        check_is_component(wasm)?;
        self.engine
            .precompile_component(wasm)
            .map_err(|e| Error::Compile(e.into()))
    }

    /// Compiles once and returns both the loaded skill and its native code
    /// for the cache (an install needs both; compiling twice doubles the
    /// slowest part of it).
    pub fn compile_for_cache(&self, wasm: &[u8]) -> Result<(Skill, Vec<u8>)> {
        let native = self.precompile(wasm)?;
        #[expect(
            unsafe_code,
            reason = "wasmtime can only load native code unsafely; these bytes were just compiled here"
        )]
        // SAFETY: `native` was produced a moment ago by this very engine's
        // `precompile_component` and never left this process.
        let component = unsafe { Component::deserialize(&self.engine, &native) }
            .map_err(|e| Error::Compile(e.into()))?;
        Ok((Skill::prepare(self, component)?, native))
    }

    /// Loads a component precompiled by [`Sandbox::precompile`] from the
    /// plugin store (memory-mapped, no compilation).
    pub fn load_precompiled(&self, path: &Path) -> Result<Skill> {
        let load = |source: crate::BoxError| Error::Load {
            path: path.display().to_string(),
            source,
        };
        match Engine::detect_precompiled_file(path) {
            Ok(Some(wasmtime::Precompiled::Component)) => {}
            Ok(_) => return Err(load("not a precompiled component".into())),
            Err(e) => return Err(load(e.into())),
        }
        #[expect(
            unsafe_code,
            reason = "wasmtime can only load native code unsafely; the file is our own cache"
        )]
        // SAFETY: the file lives in the plugin store under CAMINA_HOME, which
        // is as trusted as the binary; it was written by `precompile` of an
        // engine with the same fingerprint (part of its name), and wasmtime
        // checks the header and engine compatibility before mapping it.
        let component = unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(|e| load(e.into()))?;
        Skill::prepare(self, component)
    }
}

fn check_is_component(wasm: &[u8]) -> Result<()> {
    use wasmtime::wasmparser::Parser;
    if Parser::is_component(wasm) {
        Ok(())
    } else if Parser::is_core_wasm(wasm) {
        Err(Error::CoreModule)
    } else {
        Err(Error::NotWasm)
    }
}

/// Advances the epoch every tick until the sandbox is dropped.
fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("camina-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the epoch thread, timeouts fall back to wall clock: {e}");
    }
}

/// Links exactly what a skill may import: WASI without sockets, wasi:http
/// behind the policy gate, the audited filesystem, and `camina:skill/host`.
fn link(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    wasmtime_wasi_io::add_to_linker_async(linker)?;
    let l = linker;
    clocks::wall_clock::add_to_linker::<State, WasiClocks>(l, |t| t.clocks())?;
    clocks::monotonic_clock::add_to_linker::<State, WasiClocks>(l, |t| t.clocks())?;
    random::random::add_to_linker::<State, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<State, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<State, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::environment::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::stdin::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::stdout::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::stderr::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::terminal_input::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::terminal_output::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdin::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdout::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stderr::add_to_linker::<State, WasiCli>(l, |t| t.cli())?;
    filesystem::preopens::add_to_linker::<State, AuditedFs>(l, |t| t.fs_view())?;
    filesystem::types::add_to_linker::<State, AuditedFs>(l, |t| t.fs_view())?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)?;
    crate::bindings::camina::skill::host::add_to_linker::<State, HasSelf<State>>(l, |t| t)?;
    Ok(())
}
