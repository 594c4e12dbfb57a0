//! codetr-loadtest: load generator and peer benchmarks. Not built yet (tracked in issue 8); the binary exists so the
//! workspace layout is fixed and says so plainly instead of pretending to work.

fn main() {
    eprintln!("codetr-loadtest is not implemented yet (see issue 8 in the project tracker)");
    std::process::exit(2);
}
