//! `codetr-serve` binary: flags → configuration → [`codetr_serve::serve`].

use std::io::IsTerminal;

use clap::Parser;
use codetr_serve::config::{Cli, LogFormat};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    let cfg = cli.resolve()?;
    if cli.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    // Decoding is CPU-bound: more blocking threads than about twice the cores only add stacks
    // and malloc arenas (RSS creeping up with concurrency), never throughput.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .max_blocking_threads((2 * cores).max(4))
        .build()?;
    rt.block_on(codetr_serve::serve(cfg))?;
    Ok(())
}
