//! Loads the embedded kernels onto a GPU once and hands out their functions by name.
//!
//! [`GpuKernels::new`] creates the device's primary context and one compute stream, loads every
//! embedded module (the sm_90a cubin on sm_90 devices, otherwise the compute_80 PTX, which the
//! driver JIT-compiles), and resolves every training entry point listed in [`TRAINING_ENTRIES`],
//! so a missing or misnamed kernel is an error at start-up, not in the middle of a step.
//!
//! Nothing here touches the driver before [`gpu_unavailable_reason`] has confirmed that libcuda
//! loads and a GPU answers (cudarc panics when libcuda is missing), and the loading itself runs
//! under `catch_unwind`: on a machine without CUDA every path returns an error, never panics.

use super::{cached_probe, embedded_kernels, EmbeddedKernel};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

/// A bf16 value as its raw bits (`__nv_bfloat16` on the device: same size and layout).
///
/// `half` is not a direct dependency of the crate, so the CUDA backend uses this newtype for bf16
/// buffers; conversions round to nearest, ties to even, as the kernels do.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bf16(pub u16);

// SAFETY: a plain 2-byte value with no padding and no invalid bit patterns.
unsafe impl DeviceRepr for Bf16 {}
// SAFETY: all-zero bits are +0.0.
unsafe impl ValidAsZeroBits for Bf16 {}

impl Bf16 {
    /// Round to nearest, ties to even; NaN stays a quiet NaN, infinities stay infinite.
    pub fn from_f32(x: f32) -> Self {
        let bits = x.to_bits();
        if bits & 0x7fff_ffff > 0x7f80_0000 {
            return Bf16(((bits >> 16) | 0x40) as u16);
        }
        let rounding_bias = 0x7fff + ((bits >> 16) & 1);
        Bf16((bits.wrapping_add(rounding_bias) >> 16) as u16)
    }

    /// Exact widening.
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// A storage type the training kernels are instantiated for: `f32` (the parity path) or [`Bf16`]
/// (the training path). Arithmetic inside the kernels is fp32 either way.
pub trait GpuFloat: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// Suffix of the kernel entry points for this type ("f32" or "bf16").
    const SUFFIX: &'static str;
    /// `f32_name` when `Self` is f32, else `bf16_name` (entry names without allocating).
    fn pick(f32_name: &'static str, bf16_name: &'static str) -> &'static str;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl GpuFloat for f32 {
    const SUFFIX: &'static str = "f32";
    fn pick(f32_name: &'static str, _: &'static str) -> &'static str {
        f32_name
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl GpuFloat for Bf16 {
    const SUFFIX: &'static str = "bf16";
    fn pick(_: &'static str, bf16_name: &'static str) -> &'static str {
        bf16_name
    }
    fn from_f32(x: f32) -> Self {
        Bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        Bf16::to_f32(self)
    }
}

/// Every entry point the training launchers use, by module (`kernels/<module>.cu`).
pub const TRAINING_ENTRIES: &[(&str, &[&str])] = &[
    ("adamw", &["adamw", "adamw_dev_f32", "adamw_dev_bf16"]),
    (
        "attention",
        &[
            "attention_forward_f32",
            "attention_forward_bf16",
            "attention_backward_preprocess_f32",
            "attention_backward_preprocess_bf16",
            "attention_backward_dkdv_f32",
            "attention_backward_dkdv_bf16",
            "attention_backward_dq_f32",
            "attention_backward_dq_bf16",
        ],
    ),
    (
        "attention_tc",
        &[
            "attention_forward_tc_bf16",
            "attention_backward_dkdv_tc_bf16",
            "attention_backward_dq_tc_bf16",
        ],
    ),
    ("cast", &["cast_f32_to_bf16", "cast_bf16_to_f32"]),
    (
        "classifier",
        &[
            "classifier_forward_backward_f32",
            "classifier_forward_backward_bf16",
            "loss_sums",
        ],
    ),
    (
        "embed",
        &[
            "embed_forward_f32",
            "embed_forward_bf16",
            "embed_backward_f32",
            "embed_backward_bf16",
        ],
    ),
    (
        "global_norm",
        &[
            "global_norm_squared_f32",
            "global_norm_squared_bf16",
            "global_norm_finish",
        ],
    ),
    (
        "norm",
        &[
            "rmsnorm_forward_f32",
            "rmsnorm_forward_bf16",
            "fused_residual_rmsnorm_forward_f32",
            "fused_residual_rmsnorm_forward_bf16",
            "rmsnorm_backward_f32",
            "rmsnorm_backward_bf16",
            "rmsnorm_dgain_reduce",
        ],
    ),
    (
        "relu",
        &[
            "relu_forward_f32",
            "relu_forward_bf16",
            "relu_backward_f32",
            "relu_backward_bf16",
        ],
    ),
    ("rope", &["rope_f32", "rope_bf16"]),
];

/// Which compiled form of the kernels was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum KernelSource {
    /// The sm_90a cubin (H100, H200): no JIT, the code nvcc scheduled.
    Cubin,
    /// The compute_80 PTX, JIT-compiled by the driver for the device (any sm_80 or newer GPU).
    Ptx,
}

/// Why the CUDA kernels cannot run in this process, or `None` when they can: the binary has no
/// embedded kernels (built without nvcc), libcuda is missing, or the driver reports no usable GPU.
///
/// Never panics; probes the driver once per process. Tests use this to skip with a reason: when
/// it returns `None`, a failure in [`GpuKernels::new`] is a real error, not a reason to skip.
pub fn gpu_unavailable_reason() -> Option<String> {
    if embedded_kernels().is_empty() {
        return Some(
            "this binary was built without nvcc, so it embeds no CUDA kernels (run \
             scripts/install-nvcc.sh and rebuild with NVCC set)"
                .to_string(),
        );
    }
    let p = cached_probe();
    if !p.driver_found || p.gpus.is_empty() {
        return Some(p.note.clone());
    }
    None
}

/// The loaded kernels on one GPU, with the context and the compute stream they launch on.
pub struct GpuKernels {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    source: KernelSource,
    compute_capability: (i32, i32),
    device_name: String,
    modules: Vec<(&'static str, Arc<CudaModule>)>,
    functions: HashMap<&'static str, CudaFunction>,
}

impl std::fmt::Debug for GpuKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuKernels")
            .field("device", &self.device_name)
            .field("compute_capability", &self.compute_capability)
            .field("source", &self.source)
            .field("modules", &self.modules.len())
            .field("functions", &self.functions.len())
            .finish()
    }
}

impl GpuKernels {
    /// Loads every embedded module on GPU `ordinal`: the cubin on an sm_90 device, the PTX
    /// otherwise. `TERSE_CUDA_KERNELS=ptx` (or `cubin`) in the environment forces one form.
    pub fn new(ordinal: usize) -> Result<Self> {
        let forced = match std::env::var("TERSE_CUDA_KERNELS").ok().as_deref() {
            Some("ptx") => Some(KernelSource::Ptx),
            Some("cubin") => Some(KernelSource::Cubin),
            _ => None,
        };
        Self::with_source(ordinal, forced)
    }

    /// As [`GpuKernels::new`], choosing the compiled form (`None`: by compute capability).
    pub fn with_source(ordinal: usize, source: Option<KernelSource>) -> Result<Self> {
        if let Some(reason) = gpu_unavailable_reason() {
            bail!("no usable GPU: {reason}");
        }
        match std::panic::catch_unwind(|| Self::load(ordinal, source)) {
            Ok(r) => r,
            Err(payload) => Err(anyhow!(
                "loading the CUDA kernels panicked: {}",
                super::panic_message(payload.as_ref())
            )),
        }
    }

    fn load(ordinal: usize, source: Option<KernelSource>) -> Result<Self> {
        let ctx = CudaContext::new(ordinal)
            .with_context(|| format!("creating a context on GPU {ordinal}"))?;
        let compute_capability = ctx.compute_capability()?;
        let device_name = ctx.name()?;
        let source = source.unwrap_or(if compute_capability == (9, 0) {
            KernelSource::Cubin
        } else {
            KernelSource::Ptx
        });
        // One compute stream orders all work, so cudarc's per-buffer event tracking (which adds
        // event records to every launch and would break graph capture) is switched off before
        // anything is allocated.
        // SAFETY: every buffer of this context is used only on `stream` (and host copies on it).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let mut modules = Vec::new();
        for k in embedded_kernels() {
            let m = load_module(&ctx, k, source).with_context(|| {
                format!(
                    "loading kernels/{}.cu ({source:?}) on {device_name} (sm_{}{})",
                    k.name, compute_capability.0, compute_capability.1
                )
            })?;
            modules.push((k.name, m));
        }
        let mut functions = HashMap::new();
        for (module, entries) in TRAINING_ENTRIES {
            let m = modules
                .iter()
                .find(|(n, _)| n == module)
                .map(|(_, m)| m)
                .ok_or_else(|| anyhow!("kernels/{module}.cu is not embedded in this binary"))?;
            for &e in *entries {
                let f = m
                    .load_function(e)
                    .with_context(|| format!("kernel {e} in kernels/{module}.cu"))?;
                functions.insert(e, f);
            }
        }
        Ok(GpuKernels {
            ctx,
            stream,
            source,
            compute_capability,
            device_name,
            modules,
            functions,
        })
    }

    /// The training entry point `name` (one of [`TRAINING_ENTRIES`]).
    pub fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| anyhow!("kernel {name} is not a loaded training entry point"))
    }

    /// A loaded module by file stem (e.g. `"attention"`), for entry points outside the list.
    pub fn module(&self, name: &str) -> Option<&Arc<CudaModule>> {
        self.modules
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launcher in [`super::launch`] enqueues on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn source(&self) -> KernelSource {
        self.source
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Waits for everything enqueued on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }
}

fn load_module(
    ctx: &Arc<CudaContext>,
    k: &EmbeddedKernel,
    source: KernelSource,
) -> Result<Arc<CudaModule>> {
    let ptx = match source {
        KernelSource::Cubin => Ptx::from_binary(k.cubin.to_vec()),
        KernelSource::Ptx => Ptx::from_src(k.ptx.to_string()),
    };
    Ok(ctx.load_module(ptx)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        assert_eq!(Bf16::from_f32(1.0).to_f32(), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0)
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6)
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 1.0 / 64.0);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
        assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
        for i in 0..10_000 {
            let x = ((i as f32) * 0.731).sin() * 100.0;
            let r = Bf16::from_f32(x).to_f32();
            assert!((r - x).abs() <= x.abs() / 256.0, "{x} -> {r}");
        }
    }

    /// Runs without a GPU: every entry point the launchers name is in the embedded PTX, so a
    /// renamed kernel fails CI, not the next GPU session.
    #[test]
    fn training_entry_points_are_embedded() {
        if embedded_kernels().is_empty() {
            eprintln!("SKIPPED: entry-point check (built without nvcc)");
            return;
        }
        for (module, entries) in TRAINING_ENTRIES {
            let k = super::super::embedded_kernel(module)
                .unwrap_or_else(|| panic!("kernels/{module}.cu not embedded"));
            for e in *entries {
                assert!(
                    k.ptx.contains(&format!(".entry {e}(")),
                    "kernels/{module}.cu has no entry point {e}"
                );
            }
        }
    }

    #[test]
    fn loader_never_panics_without_a_gpu() {
        match gpu_unavailable_reason() {
            Some(reason) => {
                let err = GpuKernels::new(0).expect_err("no GPU, yet the kernels loaded");
                assert!(err.to_string().contains(&reason), "{err}");
            }
            None => {
                let k = GpuKernels::new(0).expect("GPU present: kernels must load");
                eprintln!("loaded {k:?}");
            }
        }
    }
}
