//! The `pylon` binary: command line, logging, signals. It only wires: the engine is
//! `pylon-proxy`, the config model `pylon-config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pylon_config::{Config, QUICKSTART};
use pylon_proxy::Proxy;

#[derive(Parser)]
#[command(
    name = "pylon",
    version,
    about = "Pylon: reverse proxy, forward proxy and Layer 4 / Layer 7 load balancer",
    long_about = "Pylon: reverse proxy, forward proxy and Layer 4 / Layer 7 load balancer.\n\n\
        Quick start:  pylon run -c examples/quickstart.toml\n\
        Validate:     pylon check pylon.toml\n\n\
        The configuration reference is docs/config.md."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `pylon_proxy=trace`); overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy. Without -c, uses ./pylon.toml, else the embedded quickstart config.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file: exit 0 with a summary, or 1 listing every error.
    Check {
        /// Configuration file (TOML).
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(config),
    }
}

fn check(path: &Path) -> ExitCode {
    match pylon_config::load_file(path) {
        Ok(c) => {
            println!("{}: OK: {}", path.display(), c.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<PathBuf>) -> Result<Config, String> {
    let path = config.or_else(|| {
        let local = PathBuf::from("pylon.toml");
        local.exists().then_some(local)
    });
    match path {
        Some(p) => pylon_config::load_file(&p)
            .map_err(|e| e.to_string())
            .inspect(|_| {
                tracing::info!(config = %p.display(), "configuration loaded");
            }),
        None => {
            tracing::warn!(
                "no -c FILE and no ./pylon.toml: running the embedded quickstart config \
                 (examples/quickstart.toml)"
            );
            pylon_config::parse(QUICKSTART, "<embedded quickstart.toml>").map_err(|e| e.to_string())
        }
    }
}

fn run(config: Option<PathBuf>) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // One worker thread: a current-thread runtime, without work-stealing overhead.
    let mut rt = if config.server.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all();
    if config.server.worker_threads > 1 {
        rt.worker_threads(config.server.worker_threads);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pylon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pylon: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let proxy = Proxy::start(&config).await?;
    for b in proxy.bound() {
        tracing::info!("listening on http://{} (listener {})", b.addr, b.listener);
    }
    if let Some(first) = proxy.bound().first() {
        tracing::info!("try: curl -i http://{}/", first.addr);
    }
    wait_for_signal().await?;
    tracing::info!(
        drain_timeout = ?config.server.drain_timeout,
        connections = proxy.live_connections(),
        "stopping: no new connections, draining"
    );
    if proxy.shutdown(config.server.drain_timeout).await {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
