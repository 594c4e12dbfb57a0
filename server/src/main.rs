//! codetr-serve: HTTP detection server over ONNX Runtime. Not built yet (tracked in issue 6); the binary exists so the
//! workspace layout is fixed and says so plainly instead of pretending to work.

fn main() {
    eprintln!("codetr-serve is not implemented yet (see issue 6 in the project tracker)");
    std::process::exit(2);
}
