//! The `pylon` binary: command line, logging, signals. It only wires: the engine is
//! `pylon-proxy`, the config model `pylon-config`.

mod systemd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use pylon_config::{Config, QUICKSTART};
use pylon_proxy::Proxy;

/// mimalloc keeps objects of one size class together on pages of their own, so that
/// what a connection keeps while idle does not pin the pages of what it used while
/// busy (with glibc's malloc, 8,000 parked connections kept 1.8 KiB each, mostly freed
/// fragments; with mimalloc 0.45 KiB). `pylon_proxy::memory` asks it to give emptied
/// pages back; `pylon_proxy::allocator` says how it is called.
#[global_allocator]
static ALLOCATOR: pylon_proxy::allocator::Allocator = pylon_proxy::allocator::Allocator;

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
    /// Log level or filter (e.g. `debug`, `info,pylon_proxy=debug`); overrides RUST_LOG.
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
        #[arg(short, long, value_name = "FILE", conflicts_with = "config_source")]
        config: Option<PathBuf>,
        /// Read the configuration from etcd instead of a file, and follow its changes:
        /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX (the document at PREFIX/config).
        #[arg(long, value_name = "URL")]
        config_source: Option<String>,
        /// Where the configuration from etcd is cached, so that a restart while etcd is
        /// unreachable still starts.
        #[arg(long, value_name = "FILE", default_value = "pylon-config-cache.toml")]
        config_cache: PathBuf,
        /// With --config-source: this instance's name in the fleet (default: the host
        /// name and process id).
        #[arg(long, value_name = "NAME", requires = "config_source")]
        instance_name: Option<String>,
        /// With --config-source: the address the fleet lists for this instance (default:
        /// its first listener's).
        #[arg(long, value_name = "HOST:PORT", requires = "config_source")]
        advertise: Option<String>,
        /// With --config-source: how long this instance's fleet entry outlives it.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        member_ttl: std::time::Duration,
        /// With --config-source: how often the fleet's shared session ticket keys
        /// rotate (a ticket resumes for two rotations).
        #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = humantime::parse_duration)]
        ticket_key_rotation: std::time::Duration,
        #[command(flatten)]
        etcd: EtcdFlags,
        /// Take over the listening sockets of the Pylon running on the config's
        /// `[server] upgrade_socket`, then let it drain and exit (zero-downtime upgrade).
        #[arg(long)]
        upgrade: bool,
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
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read a password from standard input and print its argon2id hash, for
    /// `[listeners.forward] users` and `[[auth]] basic` users.
    Passwd,
    /// Make a new random API key for `[[auth]] api_key`: prints the key (give it to the
    /// client) and the line for the keys file (its SHA-256).
    Apikey {
        /// The key's name (written to the access log as the user).
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file as `pylon check` does and write it to etcd, where
    /// instances run with `--config-source` pick it up; or a directory of *.toml files,
    /// written as sections (PREFIX/config/NAME) joined in name order. It replaces what
    /// etcd held, only if that has not changed since it was read (or is at
    /// --expect-revision).
    Push {
        /// Configuration file (TOML), or a directory of sections (*.toml).
        #[arg(value_name = "FILE|DIR")]
        file: PathBuf,
        /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX
        #[arg(value_name = "URL")]
        url: String,
        /// Write only if the configuration in etcd is at this revision (0: none yet).
        #[arg(long, value_name = "REVISION")]
        expect_revision: Option<i64>,
        #[command(flatten)]
        etcd: EtcdFlags,
    },
}

/// How etcd is reached beyond plain text: by `--config-source`, `config push` and the
/// clusters' `discovery`.
#[derive(clap::Args)]
struct EtcdFlags {
    /// Reach etcd over TLS, trusting this CA certificate (PEM) for etcd's.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// The client certificate (PEM) to show etcd (its --client-cert-auth); with
    /// --etcd-key and --etcd-ca.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Sign in to etcd as this user (etcd's authentication); the password is read from
    /// the PYLON_ETCD_PASSWORD environment variable.
    #[arg(long, value_name = "USER")]
    etcd_user: Option<String>,
}

impl EtcdFlags {
    /// Reads the files and the password; the error names what is missing.
    fn apply(&self) -> Result<(), String> {
        let read = |p: &Path, what: &str| {
            std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
        };
        let ca = self
            .etcd_ca
            .as_deref()
            .map(|p| read(p, "--etcd-ca"))
            .transpose()?;
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), Some(k)) => Some((read(c, "--etcd-cert")?, read(k, "--etcd-key")?)),
            _ => None,
        };
        let user = match &self.etcd_user {
            Some(name) => {
                let password = std::env::var("PYLON_ETCD_PASSWORD").map_err(|_| {
                    format!("--etcd-user {name}: set its password in PYLON_ETCD_PASSWORD")
                })?;
                Some((name.clone(), password))
            }
            None => None,
        };
        pylon_proxy::fleet::etcd::set_access(pylon_proxy::fleet::etcd::EtcdAccess {
            ca,
            identity,
            user,
        });
        Ok(())
    }
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate and its key (ECDSA P-256) for local HTTPS, for
    /// the names given (the first is the common name), valid for a year.
    Selfsigned {
        /// DNS names (or IP addresses) the certificate is for.
        #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Directory to write cert.pem and key.pem into.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out: PathBuf,
    },
}

/// Changes the log filter while running (`PUT /log-level` on the admin API).
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn init_logging(format: LogFormat, level: Option<&str>) -> LogHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
    handle
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = init_logging(cli.log_format, cli.log_level.as_deref());
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            config_source,
            config_cache,
            instance_name,
            advertise,
            member_ttl,
            ticket_key_rotation,
            etcd,
            upgrade,
        } => {
            if let Err(e) = etcd.apply() {
                eprintln!("pylon: {e}");
                return ExitCode::FAILURE;
            }
            let source = match config_source
                .map(|url| {
                    pylon_proxy::fleet::config_source::ConfigSource::parse(&url, config_cache)
                })
                .transpose()
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pylon: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let member = Membership {
                name: instance_name,
                address: advertise,
                ttl: member_ttl,
                ticket_key_rotation,
            };
            run(config, source.map(|s| (s, member)), upgrade, log)
        }
        Command::Cert(CertCommand::Selfsigned { names, out }) => selfsigned(&names, &out),
        Command::Config(ConfigCommand::Push {
            file,
            url,
            expect_revision,
            etcd,
        }) => match etcd.apply() {
            Ok(()) => push(&file, &url, expect_revision),
            Err(e) => {
                eprintln!("pylon: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Passwd => passwd(),
        Command::Apikey { name } => apikey(&name),
    }
}

fn apikey(name: &str) -> ExitCode {
    if name.is_empty() || name.contains(char::is_whitespace) || name.starts_with('#') {
        eprintln!("error: the name must be one word, not starting with '#'");
        return ExitCode::FAILURE;
    }
    match pylon_proxy::http::filters::auth::new_key() {
        Ok((key, digest)) => {
            println!("key: {key}");
            println!("keys_file line: {name} {digest}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
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

/// How long `pylon cert selfsigned` certificates are valid.
const SELFSIGNED_DAYS: u64 = 365;

/// A self-signed certificate for `names` (subject alternative names; the first is also
/// the common name), valid from an hour ago for [`SELFSIGNED_DAYS`], and its key.
fn make_selfsigned(
    names: &[String],
) -> Result<(rcgen::Certificate, rcgen::KeyPair, rcgen::CertificateParams), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let mut dn = rcgen::DistinguishedName::new();
    if let Some(first) = names.first() {
        dn.push(rcgen::DnType::CommonName, first.as_str());
    }
    dn.push(rcgen::DnType::OrganizationName, "Pylon self-signed");
    params.distinguished_name = dn;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(std::time::Duration::from_secs(3600));
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_after =
        params.not_before + std::time::Duration::from_secs(SELFSIGNED_DAYS * 24 * 3600);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert, key, params))
}

fn selfsigned(names: &[String], out: &Path) -> ExitCode {
    let (cert, key, params) = match make_selfsigned(names) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pylon: cannot make a certificate for {names:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    let written = std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(&cert_path, cert.pem()))
        .and_then(|()| write_private(&key_path, &key.serialize_pem()));
    match written {
        Ok(()) => {
            println!(
                "wrote {} and {} (self-signed, for {}, valid {} to {}: {SELFSIGNED_DAYS} days); clients must trust cert.pem, e.g. curl --cacert {}",
                cert_path.display(),
                key_path.display(),
                names.join(", "),
                params.not_before.date(),
                params.not_after.date(),
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

/// A configuration file validated as `pylon check` does: its files included.
fn checked(path: &Path) -> Result<Config, pylon_config::ConfigErrors> {
    pylon_config::load_file(path).and_then(|c| {
        let errors = pylon_proxy::check_files(&c);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(pylon_config::ConfigErrors(errors))
        }
    })
}

fn push(path: &Path, url: &str, expect_revision: Option<i64>) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("pylon: {e}");
        ExitCode::FAILURE
    };
    let source = match pylon_proxy::fleet::config_source::ConfigSource::parse(url, PathBuf::new()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let sections = match pushed_sections(path) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s); nothing pushed",
                path.display(),
                errors.0.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match rt.block_on(source.push(&sections, expect_revision)) {
        Ok(revision) => {
            let wrote = if sections.len() == 1 && sections[0].0.is_empty() {
                source.key.clone()
            } else {
                format!("{} section(s) under {}/", sections.len(), source.key)
            };
            println!(
                "{}: pushed to {url} ({wrote}), revision {revision}",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// What `config push` writes, validated as `pylon check` does: a file as the document
/// (`("", text)`), or a directory's `*.toml` files as sections named by their file
/// names, joined in name order.
fn pushed_sections(path: &Path) -> Result<Vec<(String, Vec<u8>)>, pylon_config::ConfigErrors> {
    use pylon_proxy::fleet::sections::{Section, join};
    let unreadable = |p: &Path, e: std::io::Error| {
        pylon_config::ConfigErrors(vec![pylon_config::ConfigError::general(format!(
            "{}: {e}",
            p.display()
        ))])
    };
    if !path.is_dir() {
        checked(path)?;
        let text = std::fs::read(path).map_err(|e| unreadable(path, e))?;
        return Ok(vec![(String::new(), text)]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| unreadable(path, e))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    // In key order (the file stem), as instances join them.
    files.sort_by_key(|f| f.file_stem().map(std::ffi::OsStr::to_os_string));
    if files.is_empty() {
        return Err(pylon_config::ConfigErrors(vec![
            pylon_config::ConfigError::general(format!(
                "{}: no *.toml files to push",
                path.display()
            )),
        ]));
    }
    let mut sections = Vec::new();
    let mut parts = Vec::new();
    for f in &files {
        let text = std::fs::read(f).map_err(|e| unreadable(f, e))?;
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        parts.push(Section {
            name: f.display().to_string(),
            text: text.clone(),
        });
        sections.push((name, text));
    }
    let joined = join(&parts);
    let origin = path.display().to_string();
    let text = String::from_utf8(joined).map_err(|_| {
        pylon_config::ConfigErrors(vec![pylon_config::ConfigError::general(format!(
            "{origin}: the sections are not UTF-8 text"
        ))])
    })?;
    pylon_proxy::fleet::config_source::validate_text(&text, &origin, path)?;
    Ok(sections)
}

fn check(path: &Path) -> ExitCode {
    let result = checked(path);
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

fn load(config: Option<PathBuf>) -> Result<(Config, Option<PathBuf>), String> {
    let path = config.or_else(|| {
        let local = PathBuf::from("pylon.toml");
        local.exists().then_some(local)
    });
    match path {
        Some(p) => pylon_config::load_file(&p)
            .map_err(|e| e.to_string())
            .map(|c| {
                tracing::info!(config = %p.display(), "configuration loaded");
                (c, Some(p))
            }),
        None => {
            tracing::warn!(
                "no -c FILE and no ./pylon.toml: running the embedded quickstart config \
                 (examples/quickstart.toml)"
            );
            pylon_config::parse(QUICKSTART, "<embedded quickstart.toml>")
                .map_err(|e| e.to_string())
                .map(|c| (c, None))
        }
    }
}

/// This instance in the fleet, as the command line gives it.
struct Membership {
    name: Option<String>,
    address: Option<String>,
    ttl: std::time::Duration,
    ticket_key_rotation: std::time::Duration,
}

/// Where the configuration came from: a file (or the embedded quickstart), or etcd at
/// a revision.
enum Origin {
    File(Option<PathBuf>),
    Etcd(
        Box<pylon_proxy::fleet::config_source::ConfigSource>,
        pylon_proxy::fleet::config_source::Started,
        Membership,
    ),
}

fn run(
    config: Option<PathBuf>,
    source: Option<(pylon_proxy::fleet::config_source::ConfigSource, Membership)>,
    upgrade: bool,
    log: LogHandle,
) -> ExitCode {
    let loaded = match source {
        None => load(config).map(|(c, path)| (c, Origin::File(path))),
        // A small runtime of its own: the main one is sized by the configuration.
        Some((source, member)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(source.initial()))
            .map(|(c, started)| (c, Origin::Etcd(Box::new(source), started, member))),
    };
    let (config, origin) = match loaded {
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
    match rt.block_on(serve(config, origin, upgrade, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pylon: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Config,
    origin: Origin,
    upgrade: bool,
    log: LogHandle,
) -> anyhow::Result<()> {
    let path = match &origin {
        Origin::File(path) => path.clone(),
        Origin::Etcd(..) => None,
    };
    let upgrade_socket = config.server.upgrade_socket.clone().map(PathBuf::from);
    // Before anything listens: a SIGHUP sent as soon as the first listener answers
    // would otherwise find no handler and end the process.
    let signals = StopSignals::new()?;
    let proxy = if upgrade {
        let Some(socket) = &upgrade_socket else {
            anyhow::bail!(
                "--upgrade needs `upgrade_socket` in [server] (where the running Pylon listens)"
            );
        };
        let (sockets, handover) = pylon_proxy::handover::take_over(socket)?;
        tracing::info!(
            from_pid = handover.from_pid,
            sockets = sockets.len(),
            "took over the listening sockets"
        );
        let proxy = Proxy::start_inherited(&config, sockets).await?;
        handover.ready()?;
        proxy
    } else {
        let activated = systemd::activated_sockets(&config)?;
        Proxy::start_inherited(&config, activated).await?
    };
    if let Some(p) = &path {
        proxy.set_source(p.clone());
    }
    proxy.set_log_level_hook(Box::new(move |filter| {
        let f = tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|e| format!("invalid log filter \"{filter}\": {e}"))?;
        log.reload(f).map_err(|e| e.to_string())
    }));
    for b in proxy.bound().iter() {
        tracing::info!(
            "listening on {}://{} (listener {})",
            b.scheme,
            b.addr,
            b.listener
        );
    }
    if let Some(hint) = start_hint(&config, &proxy.bound()) {
        tracing::info!("try: {hint}");
    }
    if upgrade {
        systemd::main_pid();
    }
    systemd::ready(proxy.bound().len());
    let mut leaving = None;
    match origin {
        Origin::File(Some(p)) => {
            tokio::spawn(watch_file(Arc::clone(&proxy), p));
        }
        Origin::File(None) => {}
        Origin::Etcd(source, started, member) => {
            proxy.set_config_origin(&source.url, started.revision);
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "pylon".to_owned());
            tokio::spawn(pylon_proxy::fleet::tickets::run(
                (*source).clone(),
                proxy.tickets(),
                member.ticket_key_rotation,
            ));
            let member = pylon_proxy::fleet::membership::Member {
                name: member
                    .name
                    .unwrap_or_else(|| format!("{hostname}-{}", std::process::id())),
                address: member.address.unwrap_or_else(|| {
                    proxy
                        .bound()
                        .first()
                        .map_or_else(String::new, |b| b.addr.to_string())
                }),
                ttl: member.ttl,
                lease: Arc::default(),
                announced_drain: tokio::sync::watch::Sender::new(false),
            };
            if member
                .address
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified())
            {
                tracing::warn!(address = %member.address, "the fleet entry names an unspecified address, which edge tiers cannot connect to; give --advertise HOST:PORT");
            }
            let task = tokio::spawn(member.clone().run((*source).clone(), Arc::clone(&proxy)));
            leaving = Some((member, (*source).clone(), task));
            tokio::spawn(source.follow(Arc::clone(&proxy), started));
        }
    }
    tokio::spawn(pylon_proxy::memory::give_back_after_floods(
        proxy.connections(),
    ));
    let (handed_over_tx, handed_over) = tokio::sync::oneshot::channel();
    if let Some(socket) = upgrade_socket {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            match pylon_proxy::handover::serve(socket, proxy).await {
                Ok(()) => {
                    let _ = handed_over_tx.send(());
                }
                Err(e) => {
                    tracing::error!(error = %e, "upgrade socket failed; binary upgrades are off")
                }
            }
        });
    }
    wait_for_stop(&proxy, signals, handed_over).await?;
    systemd::stopping();
    if let Some((member, _, _)) = &leaving {
        // Edge tiers learn of the drain from the fleet entry before the listeners close.
        proxy.begin_drain();
        member
            .announce_drain(std::time::Duration::from_secs(2))
            .await;
    }
    let drain_timeout = proxy.runtime().config.server.drain_timeout;
    tracing::info!(
        drain_timeout = ?drain_timeout,
        connections = proxy.live_connections(),
        "stopping: not ready, no new connections, draining"
    );
    if proxy.shutdown(drain_timeout).await {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
    if let Some((member, source, task)) = leaving {
        task.abort();
        member.leave(&source).await;
    }
    Ok(())
}

/// A command to try against the first listener of the config (in file order), in the
/// protocol it serves.
fn start_hint(config: &Config, bound: &[pylon_proxy::BoundAddr]) -> Option<String> {
    let first = bound.first()?;
    let listener = config.listeners.iter().find(|l| l.name == first.listener)?;
    let addr = first.addr;
    Some(match first.scheme {
        "tcp" => match listener.l4.as_ref().and_then(|l4| l4.cluster.as_deref()) {
            Some(cluster) => {
                format!("curl http://{addr}/   (any TCP client: relayed to cluster {cluster})")
            }
            None => format!(
                "curl -k --resolve NAME:{port}:{ip} https://NAME:{port}/   (TLS passthrough by SNI)",
                port = addr.port(),
                ip = addr.ip()
            ),
        },
        "udp" => format!("echo hi | socat - UDP:{addr}   (datagrams relayed)"),
        _ if listener.stun.is_some() => format!(
            "turnutils_stunclient -p {port} {ip}   (coturn's STUN client: your address, as seen)",
            port = addr.port(),
            ip = addr.ip()
        ),
        scheme if listener.forward.is_some() => {
            format!("curl -x {scheme}://{addr} https://example.com/")
        }
        scheme => {
            // A listener whose proxied routes all take gRPC only answers curl with its
            // catch-all, so the hint is a gRPC call (the demo client in crates/pylon/examples).
            let mut proxied = config
                .routes_for(&listener.name)
                .filter(|r| matches!(r.action, pylon_config::model::Action::Proxy(_)))
                .peekable();
            let grpc = proxied.peek().is_some() && proxied.all(|r| r.matcher.grpc);
            match (grpc, scheme) {
                (true, "http") => format!("cargo run --release --example grpc-demo -- call {addr}"),
                (true, _) => {
                    format!("a gRPC client over TLS to {addr} (this listener serves gRPC)")
                }
                (false, "https") => format!("curl -i -k https://{addr}/"),
                (false, _) => format!("curl -i {scheme}://{addr}/"),
            }
        }
    })
}

/// Reloads when the config file changes and then stays unchanged for the debounce
/// time, while the config in force has `watch_config` on (a reload can turn it on or off).
async fn watch_file(proxy: Arc<Proxy>, path: PathBuf) {
    use std::time::Duration;
    // The contents, hashed: modification times can be too coarse to tell two quick
    // writes apart.
    let stamp = |bytes: Vec<u8>| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    let mut known = tokio::fs::read(&path).await.ok().map(stamp);
    let mut watching = false;
    loop {
        let server = proxy.runtime().config.server.clone();
        if server.watch_config != watching {
            watching = server.watch_config;
            if watching {
                tracing::info!(config = %path.display(), "watching the config file for changes");
            }
        }
        let debounce = server.watch_debounce;
        tokio::time::sleep(debounce.clamp(Duration::from_millis(50), Duration::from_millis(500)))
            .await;
        let now = tokio::fs::read(&path).await.ok().map(stamp);
        if now == known || now.is_none() {
            continue;
        }
        // Asked again: a reload meanwhile may have turned the watch on.
        if !proxy.runtime().config.server.watch_config {
            known = now;
            continue;
        }
        // Changed: wait until it has been quiet for the debounce time.
        let mut last = now;
        loop {
            tokio::time::sleep(debounce).await;
            let again = tokio::fs::read(&path).await.ok().map(stamp);
            if again == last {
                break;
            }
            last = again;
        }
        known = last;
        tracing::info!(config = %path.display(), "config file changed: reloading");
        let _ = proxy.reload_from_source().await;
    }
}

/// The signals Pylon handles, registered once at start.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Waits for SIGTERM or SIGINT, or for a new process to have taken over the sockets;
/// SIGHUP meanwhile reloads the config file (and every certificate), SIGUSR1 reopens
/// the access log's file (after logrotate moved it).
async fn wait_for_stop(
    proxy: &Arc<Proxy>,
    signals: StopSignals,
    mut handed_over: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let StopSignals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT received"); return Ok(()) }
            Ok(()) = &mut handed_over => {
                tracing::info!("a new Pylon serves on our sockets");
                return Ok(());
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1 received: reopening the access log");
                proxy.reopen_logs();
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                systemd::reloading();
                let ok = if proxy.has_source() {
                    // Certificates are re-read as part of the reload (a refused one is
                    // logged there, once).
                    proxy.reload_from_source().await.is_ok()
                } else {
                    // Without a file (embedded config), certificates are still re-read.
                    proxy.reload_certificates().await.is_empty()
                };
                systemd::reloaded(ok);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint for an example file, with its listeners bound where the file says.
    fn hint_for(example: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(example);
        // Loaded from its place: relative files (turn.toml's users file) are found.
        let config = pylon_config::load_file(&path).unwrap_or_else(|e| panic!("{example}: {e}"));
        let bound: Vec<pylon_proxy::BoundAddr> = config
            .listeners
            .iter()
            .flat_map(|l| {
                l.binds.iter().map(|a| pylon_proxy::BoundAddr {
                    listener: l.name.clone(),
                    addr: *a,
                    scheme: l.protocol.as_str(),
                })
            })
            .collect();
        start_hint(&config, &bound).unwrap_or_default()
    }

    #[test]
    fn each_example_hints_at_its_own_front_listener() {
        assert_eq!(
            hint_for("quickstart.toml"),
            "curl -i http://127.0.0.1:8080/"
        );
        assert_eq!(hint_for("https.toml"), "curl -i -k https://127.0.0.1:8443/");
        assert!(
            hint_for("l4.toml").starts_with("curl http://127.0.0.1:9000/"),
            "the TCP listener, not a demo backend: {}",
            hint_for("l4.toml")
        );
        assert_eq!(
            hint_for("forward.toml"),
            "curl -x http://127.0.0.1:3128 https://example.com/"
        );
        assert_eq!(
            hint_for("grpc.toml"),
            "cargo run --release --example grpc-demo -- call 127.0.0.1:50050"
        );
        assert!(
            hint_for("turn.toml").starts_with("turnutils_stunclient -p 3478 127.0.0.1"),
            "{}",
            hint_for("turn.toml")
        );
    }
}
