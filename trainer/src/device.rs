//! Device selection: the only place CUDA-specific code lives (DESIGN.md §12).

use burn::tensor::Device;

use crate::error::{Error, Result};

/// `cpu` → Burn's Flex device; `cuda` / `cuda:N` → CUDA device N (needs the `cuda` feature).
pub fn select(name: &str) -> Result<Device> {
    let bad = |m: String| Error::InvalidArgument {
        what: "device",
        message: m,
    };
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let index: usize = match n.strip_prefix("cuda:") {
                Some(i) => i
                    .parse()
                    .map_err(|_| bad(format!("bad CUDA index in {n:?}")))?,
                None => 0,
            };
            cuda(index).map_err(bad)
        }
        other => Err(bad(format!(
            "unknown device {other:?} (use cpu, cuda or cuda:N)"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> std::result::Result<Device, String> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> std::result::Result<Device, String> {
    Err("this build has no CUDA support: rebuild with `cargo build --release -p codetr-train --features cuda` \
         on a machine with the CUDA toolkit (see README, \"GPU training\")"
        .into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_works_and_unknown_or_missing_devices_are_clear_errors() {
        assert!(super::select("cpu").is_ok());
        let e = super::select("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown device"), "{e}");
        let e = super::select("cuda:x").unwrap_err().to_string();
        assert!(e.contains("bad CUDA index"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = super::select("cuda").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
