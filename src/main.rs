//! The `legate` binary: Envoy-compatible command line, config loading, runtime, signals.

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use legate::bootstrap::{self, ConfigSource};
use legate::server::{Options, Server};
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc instead of glibc's malloc: it keeps less resident per idle connection (glibc leaves
/// chunk headers on the pages of hyper's per-connection buffers) and its per-thread caches make
/// the per-request allocations cheaper. Proxies commonly do this (Envoy links tcmalloc).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Load the config and serve (the default).
    Serve,
    /// Load and validate the config, print the result, exit.
    Validate,
}

/// legate: a sidecar and edge proxy that speaks Envoy's configuration language.
#[derive(Debug, Parser)]
#[command(name = "legate", disable_version_flag = true)]
struct Cli {
    /// Path to an Envoy v3 bootstrap (YAML or JSON).
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    config_path: Option<String>,
    /// A YAML (or JSON) bootstrap merged over the file, as Envoy's --config-yaml.
    #[arg(long = "config-yaml", value_name = "YAML")]
    config_yaml: Option<String>,
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    mode: Mode,
    /// Worker threads; default: the CPUs this process may use (affinity and cgroup quota).
    #[arg(long)]
    concurrency: Option<usize>,
    /// trace, debug, info, warning, error, critical or off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// How long a graceful shutdown waits for in-flight requests.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("legate version: {}", legate::VERSION);
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(&cli.log_level) {
        eprintln!("legate: {e:#}");
        return ExitCode::FAILURE;
    }
    if cli.config_path.is_none() && cli.config_yaml.is_none() {
        eprintln!("legate: a configuration is required: -c FILE and/or --config-yaml YAML");
        return ExitCode::FAILURE;
    }
    let source = ConfigSource {
        path: cli.config_path.clone(),
        yaml: cli.config_yaml.clone(),
    };
    let shown = cli
        .config_path
        .clone()
        .unwrap_or_else(|| "--config-yaml".into());
    let config = match bootstrap::load(&source) {
        Ok(c) => c,
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            eprintln!("configuration '{shown}' is invalid");
            return ExitCode::FAILURE;
        }
    };
    if cli.mode == Mode::Validate {
        println!("configuration '{shown}' OK");
        return ExitCode::SUCCESS;
    }
    match serve(cli, config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("legate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let level = match level {
        "warning" => "warn",
        "critical" => "error",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(format!("legate={level},warn"))
        .with_context(|| format!("invalid log level '{level}'"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

fn serve(cli: Cli, config: bootstrap::Config) -> anyhow::Result<ExitCode> {
    let concurrency = cli
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // One worker is a single-threaded runtime: no work-stealing queues, and a wake-up is a
    // local queue push instead of cross-thread atomics.
    let mut builder = if concurrency == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(concurrency);
        b
    };
    let runtime = builder
        .thread_name("legate-worker")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let options = Options {
        command_line: std::env::args().collect(),
        concurrency,
        config_path: cli.config_path.clone(),
    };
    let drain_time = Duration::from_secs(cli.drain_time_s);
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers first: from the moment a listener is bound, clients (and orchestrators) may
        // act, and a SIGTERM must drain rather than kill.
        let mut sigterm =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let mut server = Server::start(config, options).await?;
        for l in &server.context().listeners {
            tracing::info!(listener = %l.name, address = %l.address, "listening");
        }
        if let Some(a) = server.admin_address() {
            tracing::info!(address = %a, "admin listening");
        }
        let tree_failed = tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); false }
            _ = sigint.recv() => { tracing::info!("SIGINT: draining"); false }
            failed = server.wait() => failed,
        };
        if tree_failed {
            tracing::error!("the actor tree stopped; exiting");
            return Ok(ExitCode::FAILURE);
        }
        let left = server.shutdown(drain_time).await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain time over; closing remaining connections"
            );
        }
        tracing::info!("exiting");
        Ok(ExitCode::SUCCESS)
    })
}
