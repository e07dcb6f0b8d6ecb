//! `meshpay-sim`: run a scenario, print the summary, write JSON, CSV and
//! plots.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use meshpay_sim::report::Report;
use meshpay_sim::scenario::Scenario;
use meshpay_sim::sim::Simulation;
use meshpay_sim::{output, plot, world};

/// Discrete-event simulator of the meshpay mesh, running the real protocol
/// code on every simulated device.
#[derive(Parser)]
#[command(name = "meshpay-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a scenario and reports the measures beside their limits.
    Run {
        /// The scenario file (TOML), e.g. simulator/scenarios/relief.toml.
        scenario: PathBuf,
        /// Seed: the same seed gives byte-identical outputs.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write per-device CSV here (and `<stem>-conflicts.csv`,
        /// `<stem>-settlement.csv` beside it).
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Draw the figures (SVG and PNG) into this directory.
        #[arg(long)]
        plots: Option<PathBuf>,
        /// TrueType font for the plots' text.
        #[arg(long, default_value = plot::DEFAULT_FONT)]
        font: PathBuf,
        /// Replay a contact trace (CSV: time_s,device_a,device_b,kind)
        /// instead of the scenario's mobility model.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Scale populations by this factor (0 < f <= 1), for quick runs.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Override the duration, hours.
        #[arg(long)]
        hours: Option<f64>,
        /// Print the summary as JSON on stdout instead of the table.
        #[arg(long = "print-json")]
        print_json: bool,
        /// Compute every signature check, key decompression and ledger
        /// digest element afresh on every device, instead of remembering
        /// each result in this process (same outcomes, more CPU: for
        /// comparing).
        #[arg(long = "no-verify-memo")]
        no_verify_memo: bool,
        /// Keep every ledger in one epoch for the whole run instead of
        /// rotating at each UTC day of the simulated clock (protocol.md
        /// 9.8): documents then only grow (for comparing).
        #[arg(long = "no-rotate")]
        no_rotate: bool,
        /// Threads for the sync sessions of a round and the midnight
        /// rotations (default: every core). The output is the same on any
        /// number.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Checks a scenario file and prints what it describes.
    Check {
        /// The scenario file.
        scenario: PathBuf,
    },
}

fn main() -> ExitCode {
    // automerge logs every corrupted change a forger sends at error level;
    // the simulator counts them instead.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,automerge=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Check { scenario } => {
            let s = Scenario::load(&scenario)?;
            println!(
                "{}: ok ({} h, {} sites, {} merchants, {} carriers, {} wallets)",
                s.name,
                s.duration_hours,
                s.sites.count,
                s.merchants.count,
                s.carriers.count,
                s.wallets.count
            );
            Ok(())
        }
        Command::Run {
            scenario,
            seed,
            json,
            csv,
            plots,
            font,
            trace,
            scale,
            hours,
            print_json,
            no_verify_memo,
            no_rotate,
            threads,
        } => {
            if !no_verify_memo {
                // Every device verifies the same signatures, decompresses
                // the same keys and maps the same entries to digest points
                // as entries spread; each result is a pure function of its
                // bytes and cannot differ between devices, so this process
                // computes it once. No device accepts anything it would
                // not have.
                meshpay_proto::verify_memo::enable();
            }
            let s = Scenario::load(&scenario)?.scaled(scale, hours)?;
            let devices = s.merchants.count + s.carriers.count;
            let trace = match trace {
                Some(p) => {
                    let f = std::fs::File::open(&p)
                        .map_err(|e| format!("cannot open trace {}: {e}", p.display()))?;
                    Some(world::read_trace(std::io::BufReader::new(f), devices)?)
                }
                None => None,
            };
            tracing::info!(scenario = %s.name, seed, "building the world");
            let wall = Instant::now();
            let end_s = (s.duration_hours * 3600.0) as u64;
            let bar = ProgressBar::with_draw_target(Some(end_s), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} simulated s ({eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let mut sim = Simulation::new(s, seed, trace);
            sim.rotate = !no_rotate;
            sim.threads = match threads {
                Some(0) => return Err("--threads must be at least 1".into()),
                Some(n) => n,
                None => meshpay_sim::parallel::default_threads(),
            };
            let mut next_log = 0;
            sim.run(&mut |t| {
                bar.set_position(t / 1000);
                // One line per simulated hour for logs of long runs
                // (RUST_LOG=info), which have no terminal for the bar.
                if t >= next_log {
                    next_log = t + 3_600_000;
                    tracing::info!(
                        simulated_h = t / 3_600_000,
                        wall_s = wall.elapsed().as_secs(),
                        "progress"
                    );
                }
            });
            bar.finish_and_clear();
            let report = Report::new(&mut sim);
            let secs = wall.elapsed().as_secs_f64();
            if print_json {
                print!("{}", output::json(&report));
            } else {
                print!("{}", output::table(&report));
                println!(
                    "wall time {:.1} s, {:.0} events/s ({} sync sessions)",
                    secs,
                    report.events as f64 / secs.max(1e-9),
                    report.sessions.by_end.values().sum::<u64>()
                );
            }
            if let Some(p) = json {
                std::fs::write(&p, output::json(&report))
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            if let Some(p) = csv {
                for (path, text) in output::csv_paths(&p).iter().zip(output::csv(&report)) {
                    std::fs::write(path, text)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
            }
            if let Some(dir) = plots {
                plot::draw_all(&report, &dir, &font)?;
            }
            // The process ends here: its memory goes back to the system at
            // once, where freeing a big run's millions of small allocations
            // one by one takes seconds.
            std::mem::forget(sim);
            Ok(())
        }
    }
}
