//! Device selection: the only place GPU-runtime-specific code lives (docs/DESIGN.md §12).

use burn::tensor::Device;

use crate::error::{Error, Result};

/// `cpu` → Burn's Flex device; `cuda` / `cuda:N` → CUDA device N (needs the `cuda` feature);
/// `vulkan` (the best adapter), `vulkan:N` (discrete GPU N) or `vulkan-cpu` (a software
/// adapter) → Burn's wgpu device on Vulkan with cubecl's SPIR-V kernels (needs the `vulkan`
/// feature, and a device with `VK_KHR_workgroup_memory_explicit_layout`: see
/// `spirv_shared_memory`); `wgpu`, `wgpu:N` or
/// `wgpu-cpu` → the same device with WGSL kernels that wgpu's naga translates for the driver
/// (needs the `wgpu` feature without `vulkan`; this is the path CI runs on lavapipe).
pub fn select(name: &str) -> Result<Device> {
    let bad = |m: String| Error::InvalidArgument {
        what: "device",
        message: m,
    };
    let adapter = |prefix: &str, what: &str| -> Result<Option<Adapter>> {
        if name == format!("{prefix}-cpu") {
            return Ok(Some(Adapter::Cpu));
        }
        if name == prefix {
            return Ok(Some(Adapter::Best));
        }
        match name.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) {
            Some(i) => i
                .parse()
                .map(|i| Some(Adapter::Discrete(i)))
                .map_err(|_| bad(format!("bad {what} GPU index in {name:?}"))),
            None => Ok(None),
        }
    };
    match name {
        "cpu" | "flex" => return Ok(Device::flex()),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let index: usize = match n.strip_prefix("cuda:") {
                Some(i) => i
                    .parse()
                    .map_err(|_| bad(format!("bad CUDA index in {n:?}")))?,
                None => 0,
            };
            return cuda(index).map_err(bad);
        }
        _ => {}
    }
    if let Some(a) = adapter("vulkan", "Vulkan")? {
        return wgpu(a, Kernels::SpirV).map_err(bad);
    }
    if let Some(a) = adapter("wgpu", "wgpu")? {
        return wgpu(a, Kernels::Wgsl).map_err(bad);
    }
    Err(bad(format!(
        "unknown device {name:?} (use cpu, cuda, cuda:N, vulkan, vulkan:N, vulkan-cpu, wgpu, \
         wgpu:N or wgpu-cpu)"
    )))
}

/// Whether `device` is Burn's Flex (CPU) device, with or without autodiff.
pub fn is_flex(device: &Device) -> bool {
    *device == Device::flex() || *device == Device::flex().autodiff()
}

/// The build's GPU backends and Burn's kernel options, e.g. `burn 0.22.1; gpu: vulkan;
/// autotune: on; fusion: on` (`gpu: none` in a CPU-only build). A GPU figure depends on all of
/// them: the trainer prints this in `--version` and in `fit`'s log, `gpu_ops` in every row.
/// (The Burn version is the workspace's pin.)
pub fn build_summary() -> String {
    let gpu: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("vulkan", cfg!(feature = "vulkan")),
        ("wgpu", cfg!(feature = "wgpu")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let on = |b: bool| if b { "on" } else { "off" };
    format!(
        "burn 0.22.1; gpu: {}; autotune: {}; fusion: {}",
        if gpu.is_empty() {
            "none".to_string()
        } else {
            gpu.join(", ")
        },
        on(cfg!(feature = "autotune")),
        on(cfg!(feature = "fusion")),
    )
}

/// Set (to anything) where a software GPU must open: CI sets it once it has installed Mesa's
/// lavapipe, so that a test on [`software_gpu`] cannot pass by skipping there.
pub const REQUIRE_SOFTWARE_GPU: &str = "CODETR_WGPU_REQUIRED";

/// For tests of the GPU backend without a GPU: the `wgpu-cpu` device (Mesa's lavapipe), or
/// `vulkan-cpu` in a `vulkan` build (SPIR-V kernels: lavapipe needs a fixed cubecl-spirv and
/// [`ALLOW_IMPLICIT_SHARED`] for them, see `bench/spirv_lavapipe.sh`). `Ok(None)`, with the
/// reason on stderr, where it does not open (no lavapipe, or a CPU-only build), unless
/// [`REQUIRE_SOFTWARE_GPU`] is set: then the reason is the error.
pub fn software_gpu() -> Result<Option<Device>> {
    let name = if cfg!(feature = "vulkan") {
        "vulkan-cpu"
    } else {
        "wgpu-cpu"
    };
    match select(name) {
        Ok(device) => Ok(Some(device)),
        Err(e) if std::env::var_os(REQUIRE_SOFTWARE_GPU).is_some() => Err(e),
        Err(e) => {
            eprintln!("SKIP (no software GPU; set {REQUIRE_SOFTWARE_GPU} to fail instead): {e}");
            Ok(None)
        }
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

/// Which adapter to open.
#[cfg_attr(not(any(feature = "vulkan", feature = "wgpu")), allow(dead_code))]
enum Adapter {
    Best,
    Discrete(usize),
    Cpu,
}

/// What the wgpu device's kernels are compiled to. cubecl picks SPIR-V for every Vulkan
/// adapter whenever the build has it (`vulkan`), so WGSL is a build without that feature.
enum Kernels {
    SpirV,
    Wgsl,
}

/// Opens the adapter now, so that a machine without one is an error here rather than a panic
/// at the first tensor.
fn wgpu(adapter: Adapter, kernels: Kernels) -> std::result::Result<Device, String> {
    let (spirv, wgsl) = (cfg!(feature = "vulkan"), cfg!(feature = "wgpu"));
    match kernels {
        Kernels::SpirV if !spirv => {
            return Err(
                "this build has no Vulkan support: rebuild with `cargo build --release \
                        -p codetr-train --features vulkan` (see README, \"GPU training\")"
                    .into(),
            );
        }
        Kernels::Wgsl if !wgsl => {
            return Err(
                "this build has no wgpu support: rebuild with `cargo build --release \
                        -p codetr-train --features wgpu` (see README, \"GPU training\")"
                    .into(),
            );
        }
        Kernels::Wgsl if spirv => {
            return Err(
                "this build has --features vulkan, whose SPIR-V kernels every Vulkan \
                        adapter then runs: use --device vulkan*, or build with --features wgpu \
                        alone for WGSL kernels"
                    .into(),
            );
        }
        _ => {}
    }
    open(adapter, kernels)
}

#[cfg(any(feature = "vulkan", feature = "wgpu"))]
fn open(adapter: Adapter, kernels: Kernels) -> std::result::Result<Device, String> {
    use burn::tensor::DeviceKind;
    use burn::tensor::wgpu::WgpuBackend;
    let kind = match adapter {
        Adapter::Best => DeviceKind::DefaultDevice,
        Adapter::Discrete(i) => DeviceKind::DiscreteGpu(i),
        Adapter::Cpu => DeviceKind::Cpu,
    };
    let (device, setup) = Device::wgpu_options()
        .device_kind(kind)
        .graphics_api(WgpuBackend::Vulkan)
        .init_with_setup()
        .map_err(|e| {
            format!(
                "no Vulkan device ({e}); a GPU node needs the NVIDIA driver's Vulkan ICD and \
                 libvulkan1, a CPU-only machine Mesa's lavapipe (Debian: mesa-vulkan-drivers)"
            )
        })?;
    if matches!(kernels, Kernels::SpirV) && std::env::var_os(ALLOW_IMPLICIT_SHARED).is_none() {
        spirv_shared_memory(&setup.adapter)?;
    }
    Ok(device)
}

/// Set (to anything) to let `--device vulkan*` open an adapter that `spirv_shared_memory`
/// refuses: for a build whose cubecl-spirv has the fix (`bench/spirv_lavapipe.sh`).
pub const ALLOW_IMPLICIT_SHARED: &str = "CODETR_VULKAN_IMPLICIT_SHARED";

/// The Vulkan extension whose absence sends cubecl-spirv down its broken shared-memory path.
#[cfg(any(feature = "vulkan", feature = "wgpu"))]
const EXPLICIT_LAYOUT: &std::ffi::CStr = c"VK_KHR_workgroup_memory_explicit_layout";

/// Whether Burn 0.22's SPIR-V kernels can run on `adapter`. cubecl-spirv 0.11.3 declares a
/// kernel's shared memory with the explicit-layout extension where the device has it (NVIDIA
/// does) and otherwise through a lowering that types each shared array as a pointer to a
/// pointer: invalid SPIR-V (the Khronos validation layer: "OpInBoundsAccessChain reached
/// non-composite type") in every kernel with shared memory, matmul and reductions included.
/// Mesa's lavapipe (22.3 and 25.0) lacks the extension and segfaults creating such a pipeline,
/// so the device is refused here with the way out instead of a crash at the first matmul.
#[cfg(any(feature = "vulkan", feature = "wgpu"))]
fn spirv_shared_memory(
    adapter: &burn::tensor::wgpu::wgpu::Adapter,
) -> std::result::Result<(), String> {
    match has_extension(adapter, EXPLICIT_LAYOUT) {
        Some(true) => Ok(()),
        Some(false) => Err(format!(
            "the Vulkan device {:?} lacks {}, without which Burn 0.22's SPIR-V compiler \
             (cubecl-spirv 0.11.3) writes invalid shared memory into its matmul and reduction \
             kernels (Mesa's lavapipe segfaults on them; docs/DESIGN.md §12): use a build \
             with --features wgpu alone and --device wgpu* (WGSL kernels), or set {} with a \
             cubecl-spirv that has the fix",
            adapter.get_info().name,
            EXPLICIT_LAYOUT.to_string_lossy(),
            ALLOW_IMPLICIT_SHARED,
        )),
        None => Err("the wgpu adapter is not a Vulkan one".into()),
    }
}

/// Whether the Vulkan device behind `adapter` has the device extension `name` (`None`: not a
/// Vulkan adapter).
#[cfg(any(feature = "vulkan", feature = "wgpu"))]
fn has_extension(
    adapter: &burn::tensor::wgpu::wgpu::Adapter,
    name: &std::ffi::CStr,
) -> Option<bool> {
    use burn::tensor::wgpu::wgpu::hal::api::Vulkan;
    // SAFETY: only reads the adapter's cached extension list; nothing is created or destroyed.
    unsafe { adapter.as_hal::<Vulkan>() }
        .map(|hal| hal.physical_device_capabilities().supports_extension(name))
}

#[cfg(not(any(feature = "vulkan", feature = "wgpu")))]
fn open(_adapter: Adapter, _kernels: Kernels) -> std::result::Result<Device, String> {
    Err("this build has no wgpu backend".into())
}

#[cfg(test)]
mod tests {
    /// Every GPU build autotunes and fuses, as Burn's own GPU crates do by default (except
    /// `wgpu` alone, CI's lavapipe build: fused, untuned); the summary says what the build has.
    #[test]
    fn gpu_builds_fuse_and_the_summary_says_so() {
        let s = super::build_summary();
        let gpu = cfg!(any(feature = "cuda", feature = "vulkan", feature = "wgpu"));
        assert_eq!(s.contains("gpu: none"), !gpu, "{s}");
        assert_eq!(s.contains("fusion: on"), gpu, "{s}");
        let tuned = cfg!(any(feature = "cuda", feature = "vulkan"));
        if tuned {
            assert!(s.contains("autotune: on"), "{s}");
        }
    }

    /// On Mesa's lavapipe (CI's software GPU), which lacks the explicit-layout extension, the
    /// SPIR-V kernels are refused with the way out; the extension query itself is checked on
    /// one that every lavapipe has.
    #[cfg(any(feature = "vulkan", feature = "wgpu"))]
    #[test]
    fn spirv_kernels_are_refused_where_their_shared_memory_would_be_invalid() {
        use burn::tensor::wgpu::wgpu;
        let vulkan = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: vulkan,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let lavapipe = cubecl::future::block_on(instance.enumerate_adapters(vulkan))
            .into_iter()
            .find(|a| a.get_info().device_type == wgpu::DeviceType::Cpu);
        let Some(lavapipe) = lavapipe else {
            assert!(
                std::env::var_os(super::REQUIRE_SOFTWARE_GPU).is_none(),
                "no software Vulkan adapter"
            );
            eprintln!("SKIP: no software Vulkan adapter");
            return;
        };
        assert_eq!(
            super::has_extension(&lavapipe, c"VK_KHR_shader_float16_int8"),
            Some(true)
        );
        // lavapipe 22.3 (CI's) and 25.0 lack the extension; a later one may not.
        match super::has_extension(&lavapipe, super::EXPLICIT_LAYOUT) {
            Some(false) => {
                let e = super::spirv_shared_memory(&lavapipe).unwrap_err();
                assert!(e.contains("VK_KHR_workgroup_memory_explicit_layout"), "{e}");
                assert!(e.contains("--features wgpu"), "{e}");
            }
            has => assert_eq!(
                (has, super::spirv_shared_memory(&lavapipe)),
                (Some(true), Ok(()))
            ),
        }
    }

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
        let e = super::select("wgpu:").unwrap_err().to_string();
        assert!(e.contains("bad wgpu GPU index"), "{e}");
        let e = super::select("vulkanx").unwrap_err().to_string();
        assert!(e.contains("unknown device"), "{e}");
        #[cfg(not(feature = "vulkan"))]
        {
            let e = super::select("vulkan").unwrap_err().to_string();
            assert!(e.contains("--features vulkan"), "{e}");
        }
        #[cfg(not(feature = "wgpu"))]
        {
            let e = super::select("wgpu-cpu").unwrap_err().to_string();
            assert!(e.contains("--features wgpu"), "{e}");
        }
        #[cfg(all(feature = "wgpu", feature = "vulkan"))]
        {
            let e = super::select("wgpu-cpu").unwrap_err().to_string();
            assert!(e.contains("SPIR-V"), "{e}");
        }
    }
}
