//! The deployment files (docker/, docker/k8s/) linted offline and checked against this very
//! binary: hadolint, ShellCheck, yamllint, the compose schema, kustomize renders validated by
//! kubernetes-validate, and tests/deploy/check_deploy.py (env vars, the ConfigMap TOML the
//! server really accepts, ports, probe paths, signals, drain vs grace, metric names).
//! Tools come from the `make test` venv (tests/python/requirements.txt).

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn deployment_files_lint_clean_and_match_the_server() {
    let python = common::python();
    let venv = Path::new(&python)
        .parent()
        .and_then(Path::parent)
        .expect("CODETR_PYTHON is VENV/bin/python");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(repo.join("docker/lint.sh"))
        .arg(venv)
        .arg(env!("CARGO_BIN_EXE_codetr-serve"))
        .current_dir(&repo)
        .output()
        .expect("run docker/lint.sh");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "deployment lint failed:\n{text}");
    assert!(
        text.contains("check_deploy:") && text.contains(" 0 failed"),
        "{text}"
    );
}
