//! Device → host reads of the training step, in one place and metered.
//!
//! On a GPU every read is a synchronisation (the host waits for the queue to drain) plus a copy
//! over PCIe, so the step keeps them few and small: the Hungarian solve reads the gt-label
//! columns of the logits, not all of them; the RPN reads its top-k per level, not every anchor;
//! the loss terms are read once, together. Every read of the step goes through [`read_f32`],
//! which counts it per thread, so the bench and the tests can state and bound what the step
//! moves (`docs/DESIGN.md` §12).

use std::cell::Cell;

use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};

/// What the current thread has read back since it started (or since the last [`reset`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostReads {
    /// Number of reads (each one a device synchronisation).
    pub reads: u64,
    /// Bytes copied to the host, as f32.
    pub bytes: u64,
    /// The largest single read, in bytes.
    pub largest: u64,
}

impl HostReads {
    /// The reads between `earlier` and `self` (`largest` stays the maximum since [`reset`]).
    pub fn since(&self, earlier: &HostReads) -> HostReads {
        HostReads {
            reads: self.reads - earlier.reads,
            bytes: self.bytes - earlier.bytes,
            largest: self.largest,
        }
    }
}

thread_local! {
    static METER: Cell<HostReads> = const { Cell::new(HostReads { reads: 0, bytes: 0, largest: 0 }) };
}

/// This thread's reads so far.
pub fn snapshot() -> HostReads {
    METER.with(Cell::get)
}

/// Zeroes this thread's meter (a step's bound starts from here).
pub fn reset() {
    METER.with(|m| m.set(HostReads::default()));
}

/// The error a device's failure becomes: the device, what was being read or awaited, and the
/// runtime's cause. The runtime's chain can run to thousands of lines (every queued kernel it
/// skipped): keep its first few lines of substance.
fn device_error(device: &Device, what: &'static str, cause: &dyn std::fmt::Display) -> Error {
    let full = cause.to_string();
    let noise = ["Caused by:", "No backtrace available", "Asked at:"];
    let lines: Vec<&str> = full
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !noise.contains(l))
        .filter(|l| !l.starts_with("skipped") && !l.starts_with('('))
        .collect();
    let mut message = lines
        .iter()
        .take(6)
        .copied()
        .collect::<Vec<_>>()
        .join(" | ");
    if lines.len() > 6 {
        message.push_str(" | …");
    }
    Error::Device {
        device: format!("{device:?}"),
        what,
        message,
    }
}

/// Waits until everything queued on `device` has run. A read need not wait for all of it: on
/// the wgpu device (lavapipe) a scalar read returned while the device still had seconds of
/// queued work. So the step's timed phases end with this.
pub fn sync(device: &Device, what: &'static str) -> Result<()> {
    device.sync().map_err(|e| device_error(device, what, &e))
}

/// Host copy (f32, row-major) of `t`, detached, counted as one read. `what` names the tensor in
/// the error a backend's failed read becomes.
pub fn read_f32<const D: usize>(t: Tensor<D>, what: &'static str) -> Result<Vec<f32>> {
    let device = t.device();
    let data = t
        .detach()
        .try_into_data()
        .map_err(|e| device_error(&device, what, &e))?;
    let v = data
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| Error::InvalidArgument {
            what,
            message: format!("cannot read the tensor back from the device: {e:?}"),
        })?;
    let bytes = (v.len() * std::mem::size_of::<f32>()) as u64;
    METER.with(|m| {
        let s = m.get();
        m.set(HostReads {
            reads: s.reads + 1,
            bytes: s.bytes + bytes,
            largest: s.largest.max(bytes),
        })
    });
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn counts_reads_bytes_and_largest() {
        reset();
        let dev = Device::flex();
        let a = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 6], [2, 3]), &dev);
        let b = Tensor::<1>::from_data(TensorData::new(vec![2.0f32; 2], [2]), &dev);
        let before = snapshot();
        assert_eq!(read_f32(a, "a").unwrap(), vec![1.0; 6]);
        assert_eq!(read_f32(b, "b").unwrap(), vec![2.0; 2]);
        let got = snapshot().since(&before);
        assert_eq!(
            got,
            HostReads {
                reads: 2,
                bytes: 32,
                largest: 24
            }
        );
    }

    /// A read whose computation the device fails is an error naming the tensor, never a panic
    /// (the step's error then ends `fit` with a message). On lavapipe a 512 MB tensor fails:
    /// its storage buffers are capped at 128 MB. A device that holds it must read it right.
    #[cfg(any(feature = "wgpu", feature = "vulkan"))]
    #[test]
    fn a_read_the_device_fails_is_an_error_not_a_panic() {
        let Some(gpu) = codetr_core::device::software_gpu().unwrap() else {
            return;
        };
        let n = 128 << 20;
        let t = Tensor::<1>::ones([n], &gpu) * 2.0;
        match read_f32(t, "big tensor") {
            Err(e @ Error::Device { .. }) => {
                let m = e.to_string();
                eprintln!("{m}");
                assert!(
                    m.contains("big tensor") && m.contains("out of memory"),
                    "{m}"
                );
            }
            Err(other) => panic!("not a device error: {other}"),
            Ok(v) => assert!(v.len() == n && v.iter().all(|&x| x == 2.0)),
        }
    }
}
