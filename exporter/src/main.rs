//! codetr-export: checkpoint → ONNX exporter. Not built yet (tracked in issue 10); the binary exists so the
//! workspace layout is fixed and says so plainly instead of pretending to work.

fn main() {
    eprintln!("codetr-export is not implemented yet (see issue 10 in the project tracker)");
    std::process::exit(2);
}
