//! `switchboard`: the gateway and the CRM API, in one process (the default)
//! or as separate services. Parses arguments, loads and validates the
//! configuration, starts tracing, and hands over to [`app::run`].

mod app;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_config::{Config, LogFormat};

/// Exit status for a configuration error (sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Every customer channel in one place: the gateway daemon and the CRM API.",
    after_help = "Every configuration key can be overridden from the environment as \
                  SWITCHBOARD_<SECTION>__<KEY>, e.g. SWITCHBOARD_FEED__BACKEND=kafka."
)]
struct Cli {
    /// TOML configuration file; without one every key has its embedded default.
    #[arg(
        long,
        short,
        global = true,
        env = "SWITCHBOARD_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway and the CRM API in one process (the default).
    Run,
    /// Run only the gateway (webhooks, widget, SIP; writes the feed).
    Gateway,
    /// Run only the CRM API (reads the feed, serves /v1).
    CrmApi,
    /// Validate a configuration file (with the environment's overrides) and
    /// exit: 0 when valid, 64 with a message naming the key when not.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Administer the CRM store (users and API tokens).
    #[command(subcommand)]
    CrmAdmin(CrmAdmin),
}

#[derive(Debug, Subcommand)]
enum CrmAdmin {
    /// Create (or update) a user and print a new API token for them. The
    /// token is shown once; only its hash is stored.
    Token {
        /// The user's login: their manager id in [[routing.managers]].
        #[arg(long)]
        user: String,
        /// Display name (default: the login).
        #[arg(long)]
        name: Option<String>,
        /// manager (own records), head (the department's) or admin (all).
        #[arg(long, default_value = "manager")]
        role: String,
        /// Department name; created if new.
        #[arg(long)]
        department: Option<String>,
    },
}

/// Turns transparent huge pages off for this process, unless the operator
/// set `MIMALLOC_ALLOW_THP` (mimalloc's own switch) to decide otherwise.
///
/// mimalloc asks for huge pages on its arenas, so every first touch of one
/// has the kernel zero 2 MiB, and handing memory back splits them again.
/// The daemon's heap is small and churns (a letter, a SIP message, a feed
/// record live for milliseconds): on the email bench that zeroing and
/// splitting was a fifth of the daemon's samples and about 12 % of its CPU
/// time (see docs/benchmarks.md). The flag is read at every page fault, so
/// it also covers what was mapped before `main`.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Failure only leaves the kernel's default; nothing to report yet
        // (logging starts after the configuration is read).
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
}

fn main() -> ExitCode {
    without_huge_pages();
    let cli = Cli::parse();
    let (role, file) = match cli.command {
        Some(Command::CheckConfig { file }) => {
            return match Config::load(Some(&file)) {
                Ok(config) => match app::check_backends(&config) {
                    Ok(()) => {
                        eprintln!("{}: valid", file.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("switchboard: {e}");
                        ExitCode::from(EXIT_CONFIG)
                    }
                },
                Err(e) => {
                    eprintln!("switchboard: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            };
        }
        Some(Command::CrmAdmin(cmd)) => return crm_admin(cli.config.as_deref(), cmd),
        None | Some(Command::Run) => (app::Role::Both, cli.config),
        Some(Command::Gateway) => (app::Role::Gateway, cli.config),
        Some(Command::CrmApi) => (app::Role::CrmApi, cli.config),
    };
    let config =
        match Config::load(file.as_deref()).and_then(|c| app::check_backends(&c).map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("switchboard: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchboard")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config, file, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "switchboard stopped");
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `switchboard crm-admin ...`: works on the configured CRM store directly.
#[allow(clippy::print_stdout)]
fn crm_admin(file: Option<&std::path::Path>, cmd: CrmAdmin) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let CrmAdmin::Token {
        user,
        name,
        role,
        department,
    } = cmd;
    let Some(role) = switchboard_crm::Role::parse(&role) else {
        eprintln!("switchboard: --role {role:?}: expected manager, head or admin");
        return ExitCode::from(EXIT_CONFIG);
    };
    let run = async {
        let url = config.crm.resolved_database_url(&config.node);
        let store = switchboard_crm::Store::connect(&url, 1).await?;
        let u = store
            .upsert_user(
                &user,
                name.as_deref().unwrap_or(&user),
                role,
                department.as_deref(),
            )
            .await?;
        let token = store.create_token(&u.id, "cli").await?;
        store.close().await;
        Ok::<_, switchboard_crm::StoreError>((u, token))
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok((u, token)) => {
            eprintln!(
                "user {} ({}, {}) — keep this token, it is not shown again:",
                u.routing_id.unwrap_or_default(),
                u.name,
                u.role.as_str()
            );
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    // Validation has already parsed the filter.
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
