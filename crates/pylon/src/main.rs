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
    /// Validate a configuration file: exit 0 with a summary, or 1 listing every error
    /// (certificate and key files included).
    Check {
        /// Configuration file (TOML).
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Certificate helpers.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Read a password from standard input and print its argon2id hash, for
    /// `[listeners.forward] users`.
    Passwd,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate and its key (ECDSA P-256) for local HTTPS.
    Selfsigned {
        /// DNS names (or IP addresses) the certificate is for.
        #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Directory to write cert.pem and key.pem into.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out: PathBuf,
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
        Command::Cert(CertCommand::Selfsigned { names, out }) => selfsigned(&names, &out),
        Command::Passwd => passwd(),
    }
}

fn passwd() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("error: cannot read the password from standard input");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("error: empty password");
        return ExitCode::FAILURE;
    }
    match pylon_proxy::http::forward::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn selfsigned(names: &[String], out: &Path) -> ExitCode {
    let cert = match rcgen::generate_simple_self_signed(names.to_vec()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pylon: cannot make a certificate for {names:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    let written = std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(&cert_path, cert.cert.pem()))
        .and_then(|()| write_private(&key_path, &cert.signing_key.serialize_pem()));
    match written {
        Ok(()) => {
            println!(
                "wrote {} and {} (self-signed, for {}); clients must trust cert.pem, e.g. curl --cacert {}",
                cert_path.display(),
                key_path.display(),
                names.join(", "),
                cert_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pylon: cannot write into {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

fn check(path: &Path) -> ExitCode {
    let result = pylon_config::load_file(path).and_then(|c| {
        let tls = pylon_proxy::tls::check(&c);
        if tls.is_empty() {
            Ok(c)
        } else {
            Err(pylon_config::ConfigErrors(tls))
        }
    });
    match result {
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
        tracing::info!(
            "listening on {}://{} (listener {})",
            b.scheme,
            b.addr,
            b.listener
        );
    }
    if let Some(first) = proxy
        .bound()
        .iter()
        .find(|b| b.scheme == "http" || b.scheme == "https")
    {
        let insecure = if first.scheme == "https" { "-k " } else { "" };
        let forward = config
            .listeners
            .iter()
            .any(|l| l.name == first.listener && l.forward.is_some());
        if forward {
            tracing::info!(
                "try: curl -x {}://{} https://example.com/",
                first.scheme,
                first.addr
            );
        } else {
            tracing::info!("try: curl -i {insecure}{}://{}/", first.scheme, first.addr);
        }
    }
    wait_for_stop(&proxy).await?;
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

/// Waits for SIGTERM or SIGINT; SIGHUP meanwhile reloads the certificates.
async fn wait_for_stop(proxy: &Proxy) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT received"); return Ok(()) }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading certificates");
                proxy.reload_certificates();
            }
        }
    }
}
