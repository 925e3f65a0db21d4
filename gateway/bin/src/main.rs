//! `switchboard`: the gateway and the CRM API, in one process (the default)
//! or as separate services. Parses arguments, loads and validates the
//! configuration, starts tracing, and hands over to [`app::run`].

mod app;

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
}

fn main() -> ExitCode {
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
    match runtime.block_on(app::run(config, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "switchboard stopped");
            eprintln!("switchboard: {e:#}");
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
