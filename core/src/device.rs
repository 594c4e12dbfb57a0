//! Device selection: the only place GPU-runtime-specific code lives (docs/DESIGN.md §12).

use burn::tensor::Device;

use crate::error::{Error, Result};

/// `cpu` → Burn's Flex device; `cuda` / `cuda:N` → CUDA device N (needs the `cuda` feature);
/// `vulkan` (the best adapter), `vulkan:N` (discrete GPU N) or `vulkan-cpu` (a software
/// adapter; Mesa's lavapipe 22.3 and 25.0 crash compiling cubecl's SPIR-V, checked) → wgpu on
/// Vulkan (needs the `vulkan` feature).
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
        "vulkan-cpu" => vulkan(VulkanAdapter::Cpu).map_err(bad),
        n if n == "vulkan" || n.starts_with("vulkan:") => {
            let adapter = match n.strip_prefix("vulkan:") {
                Some(i) => VulkanAdapter::Discrete(
                    i.parse()
                        .map_err(|_| bad(format!("bad Vulkan GPU index in {n:?}")))?,
                ),
                None => VulkanAdapter::Best,
            };
            vulkan(adapter).map_err(bad)
        }
        other => Err(bad(format!(
            "unknown device {other:?} (use cpu, cuda, cuda:N, vulkan, vulkan:N or vulkan-cpu)"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> std::result::Result<Device, String> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> std::result::Result<Device, String> {
    Err(
        "this build has no CUDA support: rebuild with `cargo build --release -p codetr-train \
         --features cuda` on a machine with internet (Burn's CUDA backend downloads LLVM at \
         build time), or use --features vulkan (see README, \"GPU training\")"
            .into(),
    )
}

/// Which Vulkan adapter to open.
#[cfg_attr(not(feature = "vulkan"), allow(dead_code))]
enum VulkanAdapter {
    Best,
    Discrete(usize),
    Cpu,
}

/// Opens the adapter now, so that a machine without one is an error here rather than a panic
/// at the first tensor.
#[cfg(feature = "vulkan")]
fn vulkan(adapter: VulkanAdapter) -> std::result::Result<Device, String> {
    use burn::tensor::DeviceKind;
    use burn::tensor::wgpu::WgpuBackend;
    let kind = match adapter {
        VulkanAdapter::Best => DeviceKind::DefaultDevice,
        VulkanAdapter::Discrete(i) => DeviceKind::DiscreteGpu(i),
        VulkanAdapter::Cpu => DeviceKind::Cpu,
    };
    Device::wgpu_options()
        .device_kind(kind)
        .graphics_api(WgpuBackend::Vulkan)
        .init()
        .map_err(|e| {
            format!(
                "no Vulkan device ({e}); a GPU node needs the NVIDIA driver's Vulkan ICD and \
                 libvulkan1, a CPU-only machine Mesa's lavapipe (`vulkan-cpu`)"
            )
        })
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(_adapter: VulkanAdapter) -> std::result::Result<Device, String> {
    Err(
        "this build has no Vulkan support: rebuild with `cargo build --release -p codetr-train \
         --features vulkan` (see README, \"GPU training\")"
            .into(),
    )
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
        let e = super::select("vulkan:one").unwrap_err().to_string();
        assert!(e.contains("bad Vulkan GPU index"), "{e}");
        #[cfg(not(feature = "vulkan"))]
        {
            let e = super::select("vulkan").unwrap_err().to_string();
            assert!(e.contains("--features vulkan"), "{e}");
        }
    }
}
