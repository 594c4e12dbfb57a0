//! Temporary entry point: only `codetr-train eval --gt GT --dt DT [--json]`.
//! The real clap CLI replaces this and calls `codetr_train::eval::run_eval_cli`.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: codetr-train eval --gt GT.json --dt DETECTIONS.json [--json]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("eval") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let (mut gt, mut dt, mut json) = (None::<PathBuf>, None::<PathBuf>, false);
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--gt" => gt = it.next().map(PathBuf::from),
            "--dt" => dt = it.next().map(PathBuf::from),
            "--json" => json = true,
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(gt), Some(dt)) = (gt, dt) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match codetr_train::eval::run_eval_cli(&gt, &dt, json) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
