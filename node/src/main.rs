//! The `meshpay` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// meshpay: offline peer-to-peer payments that catch double spends in the mesh.
#[derive(Parser)]
#[command(name = "meshpay", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole story on this machine: allowances, offline payments,
    /// a network split, a cloned wallet spending twice, the mesh catching
    /// it, and the culprit refused everywhere.
    Demo {
        /// Print the report as JSON (for scripts).
        #[arg(long)]
        json: bool,
        /// Keep the nodes' databases in this directory (default: a
        /// temporary one, removed afterwards).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo { json, data_dir } => demo(json, data_dir),
    }
}

fn demo(json: bool, data_dir: Option<PathBuf>) -> ExitCode {
    let temp;
    let dir = match data_dir {
        Some(d) => {
            if let Err(e) = std::fs::create_dir_all(&d) {
                eprintln!("error: cannot create data directory {}: {e}", d.display());
                return ExitCode::FAILURE;
            }
            d
        }
        None => match tempfile::tempdir() {
            Ok(t) => {
                temp = t;
                temp.path().to_path_buf()
            }
            Err(e) => {
                eprintln!("error: cannot create a temporary directory: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let report = match meshpay_node::demo::run(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", meshpay_node::demo::render(&report));
    }
    if report.proof_everywhere && report.culprit_refused_everywhere {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
