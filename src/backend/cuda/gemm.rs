//! cuBLASLt GEMMs in the three layouts a transformer's linear layers need, with every descriptor,
//! layout, preference and chosen algorithm built once per shape and cached, and one workspace
//! allocated up front (so a step can be captured into a CUDA graph: nothing is created or
//! allocated on the second call of a shape).
//!
//! Row-major everywhere on the Rust side (`x[N, in]`, weights `[out, in]` as `nn.Linear`); cuBLASLt
//! is column-major, so a row-major `[r, c]` buffer is handed over as a column-major `c x r` matrix
//! with leading dimension `c`:
//!
//! | op | row-major | cuBLASLt (column-major) |
//! |---|---|---|
//! | [`Gemm::forward`] | `y[N,out] = x[N,in] W^T (+ r)` | `Y^T = op_T(W) X^T`: m=out n=N k=in, A=W (T), B=x (N) |
//! | [`Gemm::forward_relu_mask`] | `y[N,out] = max(x[N,in] W^T, 0)`, mask `y > 0` | as `forward`, epilogue `RELU_AUX` |
//! | [`Gemm::dgrad_relu_mask`] | `dx[N,in] = (dy[N,out] W) where mask` | as `dgrad`, epilogue `DRELU` |
//! | [`Gemm::dgrad`]   | `dx[N,in] = dy[N,out] W`        | `dX^T = W^T dY^T`: m=in n=N k=out, A=W (N), B=dy (N) |
//! | [`Gemm::wgrad`]   | `dW[out,in] (+)= dy^T x`        | `dW^T = X^T dY`: m=in n=out k=N, A=x (N), B=dy (T) |
//!
//! Inputs are `T` ([`Bf16`] or `f32`), accumulation is always fp32 (`CUBLAS_COMPUTE_32F`; with f32
//! inputs that is true fp32, TF32 off, which is what the parity tests use). `forward` and `dgrad`
//! write `T`; `wgrad` writes fp32 (the gradient arena) and can accumulate (`beta = 1`).
//!
//! None of this has run on a GPU yet (written on a machine without one); `tests/gpu_parity.rs`
//! checks it against the CPU matmul when a GPU is present.

use super::loader::{Bf16, GpuFloat};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::Arc;

/// Workspace handed to every cuBLASLt call (llm.c and cudarc use 32 MiB on sm_90).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// The element type of a GEMM operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub fn of<T: GpuFloat>() -> Dtype {
        if T::SUFFIX == Bf16::SUFFIX {
            Dtype::Bf16
        } else {
            Dtype::F32
        }
    }

    fn cuda(self) -> sys::cudaDataType {
        match self {
            Dtype::F32 => sys::cudaDataType::CUDA_R_32F,
            Dtype::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// What cuBLASLt does to `alpha op(A) op(B) + beta C` before it stores D. The two ReLU epilogues
/// share a mask of one bit per element of D (`m x n`, leading dimension m, which cuBLASLt needs a
/// multiple of 128), in a layout only cuBLASLt reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// D is the sum itself.
    None,
    /// `D = max(sum, 0)`, and the mask gets `sum > 0` (`CUBLASLT_EPILOGUE_RELU_AUX`): the MLP's
    /// activation in the up projection's store instead of a pass of its own.
    ReluMask,
    /// `D = sum` where the mask's bit is set, else 0 (`CUBLASLT_EPILOGUE_DRELU`): the ReLU's
    /// backward in the down projection's dgrad.
    DreluMask,
}

impl Epilogue {
    fn cuda(self) -> sys::cublasLtEpilogue_t {
        use sys::cublasLtEpilogue_t as E;
        match self {
            Epilogue::None => E::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::ReluMask => E::CUBLASLT_EPILOGUE_RELU_AUX,
            Epilogue::DreluMask => E::CUBLASLT_EPILOGUE_DRELU,
        }
    }
}

/// Bytes of the ReLU mask of an `[n, d]` activation (one bit per element), or `None` where cuBLASLt
/// takes no mask for it (`d`, the mask's leading dimension, not a multiple of 128).
pub fn relu_mask_bytes(n: usize, d: usize) -> Option<usize> {
    d.is_multiple_of(128).then_some(n * d / 8)
}

/// One column-major GEMM `D = alpha op(A) op(B) + beta C` (C and D share a layout), the cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub trans_a: bool,
    pub trans_b: bool,
    pub ab: Dtype,
    pub cd: Dtype,
    /// Whether `beta != 0` (C is read); part of the key because the heuristic may differ.
    pub accumulate: bool,
    /// The largest power of two (at most 256) dividing every operand's address: the heuristic
    /// is told this alignment, so the chosen algorithm is valid for these pointers (weights
    /// inside the arena after a norm gain may be only `2 d`-byte aligned). Filled by
    /// [`Gemm::raw`]; 0 in a shape built by a caller.
    pub align: u32,
    /// What is done to the sum before D is stored (part of the plan: the descriptor carries it).
    pub epilogue: Epilogue,
}

impl GemmShape {
    /// `2 m n k`.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// Bytes read and written at least once: A, B, D (and C when accumulating).
    pub fn bytes(&self) -> f64 {
        let ab = self.ab.bytes() as f64 * (self.m * self.k + self.k * self.n) as f64;
        let cd = self.cd.bytes() as f64 * (self.m * self.n) as f64;
        ab + cd * if self.accumulate { 2.0 } else { 1.0 }
    }
}

/// Cached cuBLASLt objects for one [`GemmShape`].
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    cd: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle bound to one stream, a workspace, and the per-shape plan cache.
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    /// Owns the workspace; `workspace_ptr` is its device address (fixed for its lifetime).
    _workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    plans: HashMap<GemmShape, Plan>,
    /// Shapes with an epilogue for which cuBLASLt offered no algorithm (asked once each).
    refused: HashSet<GemmShape>,
}

/// cuBLASLt offers no algorithm for a shape with an epilogue: the caller runs the plain product
/// and the epilogue's own kernel instead.
#[derive(Debug, thiserror::Error)]
#[error("cuBLASLt has no algorithm for {0:?}")]
pub struct NoEpilogueAlgorithm(GemmShape);

impl std::fmt::Debug for Gemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemm")
            .field("plans", &self.plans.len())
            .finish()
    }
}

fn lt_err(what: &str) -> impl FnOnce(lt::CublasError) -> anyhow::Error + '_ {
    move |e| anyhow!("cuBLASLt {what}: {e:?}")
}

impl Gemm {
    /// Creates the handle and the workspace on `stream`. Errors (never panics) when libcublasLt
    /// cannot be loaded.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        // SAFETY: only tries to dlopen the library.
        ensure!(
            unsafe { sys::is_culib_present() },
            "libcublasLt (libcublasLt.so.13) not found by the dynamic loader; set LD_LIBRARY_PATH \
             to the CUDA 13 libraries"
        );
        let handle = lt::create_handle().map_err(lt_err("create handle"))?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .context("allocating the cuBLASLt workspace")?;
        let workspace_ptr = {
            let (p, _g) = workspace.device_ptr(&stream);
            p
        };
        Ok(Gemm {
            handle,
            stream,
            _workspace: workspace,
            workspace_ptr,
            plans: HashMap::new(),
            refused: HashSet::new(),
        })
    }

    /// Number of distinct shapes planned so far.
    pub fn plans(&self) -> usize {
        self.plans.len()
    }

    fn plan(&mut self, s: GemmShape) -> Result<&Plan> {
        if self.refused.contains(&s) {
            return Err(NoEpilogueAlgorithm(s).into());
        }
        if !self.plans.contains_key(&s) {
            match self.build_plan(s) {
                Ok(p) => {
                    self.plans.insert(s, p);
                }
                Err(e) if e.is::<NoEpilogueAlgorithm>() => {
                    self.refused.insert(s);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(&self.plans[&s])
    }

    fn build_plan(&self, s: GemmShape) -> Result<Plan> {
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(lt_err("matmul desc"))?;
        // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (an int32 attribute).
        let (ta, tb) = (s.trans_a as i32, s.trans_b as i32);
        // SAFETY: desc is live; each buffer is an i32 of the size given.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &ta as *const i32 as *const c_void,
                4,
            )
            .map_err(lt_err("TRANSA"))?;
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &tb as *const i32 as *const c_void,
                4,
            )
            .map_err(lt_err("TRANSB"))?;
            if s.epilogue != Epilogue::None {
                use sys::cublasLtMatmulDescAttributes_t as D;
                let (epilogue, ld) = (s.epilogue.cuda() as u32, s.m as i64);
                lt::set_matmul_desc_attribute(
                    desc,
                    D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    &epilogue as *const u32 as *const c_void,
                    4,
                )
                .map_err(lt_err("EPILOGUE"))?;
                lt::set_matmul_desc_attribute(
                    desc,
                    D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                    &ld as *const i64 as *const c_void,
                    8,
                )
                .map_err(lt_err("EPILOGUE_AUX_LD"))?;
            }
        }
        // Stored shapes (before op): A is m x k (k x m when transposed), B is k x n (n x k).
        let (ar, ac) = if s.trans_a { (s.k, s.m) } else { (s.m, s.k) };
        let (br, bc) = if s.trans_b { (s.n, s.k) } else { (s.k, s.n) };
        let a =
            lt::create_matrix_layout(s.ab.cuda(), ar, ac, ar as i64).map_err(lt_err("layout A"))?;
        let b =
            lt::create_matrix_layout(s.ab.cuda(), br, bc, br as i64).map_err(lt_err("layout B"))?;
        let cd = lt::create_matrix_layout(s.cd.cuda(), s.m, s.n, s.m as i64)
            .map_err(lt_err("layout C/D"))?;
        let pref = lt::create_matmul_pref().map_err(lt_err("preference"))?;
        let ws = WORKSPACE_BYTES as u64;
        let align = s.align;
        // SAFETY: all objects are live; ws is a u64 and align a u32 as the attributes require.
        let heur = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
            .map_err(lt_err("workspace preference"))?;
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            for attr in [
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                lt::set_matmul_pref_attribute(pref, attr, &align as *const u32 as *const c_void, 4)
                    .map_err(lt_err("alignment preference"))?;
            }
            let h = lt::get_matmul_algo_heuristic(self.handle, desc, a, b, cd, cd, pref);
            lt::destroy_matmul_pref(pref).map_err(lt_err("destroy preference"))?;
            match h {
                Ok(h) => h,
                Err(e) => {
                    let _ = lt::destroy_matrix_layout(a);
                    let _ = lt::destroy_matrix_layout(b);
                    let _ = lt::destroy_matrix_layout(cd);
                    let _ = lt::destroy_matmul_desc(desc);
                    // Only "no such algorithm" is a refusal the caller may work around.
                    let refused = e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED;
                    if refused && s.epilogue != Epilogue::None {
                        return Err(NoEpilogueAlgorithm(s).into());
                    }
                    return Err(anyhow!("cuBLASLt has no algorithm for {s:?}: {e:?}"));
                }
            }
        };
        Ok(Plan {
            desc,
            a,
            b,
            cd,
            algo: heur.algo,
        })
    }

    /// Raw GEMM on device pointers: `D = alpha op(A) op(B) + beta C`. `c` may equal `d`.
    ///
    /// # Safety
    /// The pointers must be live device allocations on this context holding at least the stored
    /// sizes of `s` (A: m k, B: k n, C/D: m n elements of their dtypes).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn raw(
        &mut self,
        s: GemmShape,
        a: u64,
        b: u64,
        c: u64,
        d: u64,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        // SAFETY: the caller's; a shape without an epilogue reads no mask.
        unsafe { self.raw_masked(s, a, b, c, d, 0, alpha, beta) }
    }

    /// [`Gemm::raw`] with the device address of the ReLU mask its epilogue writes or reads,
    /// 256-byte aligned (the heuristic chose its algorithm without seeing the address, and an
    /// allocation's alignment is what it may assume).
    ///
    /// # Safety
    /// As [`Gemm::raw`]; `mask` must hold `m n / 8` bytes where `s` has a ReLU epilogue.
    #[allow(clippy::too_many_arguments)]
    unsafe fn raw_masked(
        &mut self,
        s: GemmShape,
        a: u64,
        b: u64,
        c: u64,
        d: u64,
        mask: u64,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        ensure!(
            s.accumulate == (beta != 0.0),
            "GEMM plan key says accumulate = {} but beta = {beta}",
            s.accumulate
        );
        let align = [a, b, c, d]
            .iter()
            .map(|&p| 1u64 << p.trailing_zeros().min(8))
            .min()
            .unwrap_or(256) as u32;
        ensure!(
            align >= s.ab.bytes() as u32,
            "GEMM operand not aligned to its element size"
        );
        let s = GemmShape { align, ..s };
        let (handle, stream, ws) = (self.handle, self.stream.cu_stream(), self.workspace_ptr);
        ensure!(
            s.epilogue == Epilogue::None || mask.is_multiple_of(256),
            "GEMM ReLU mask not 256-byte aligned"
        );
        let p = self.plan(s)?;
        if s.epilogue != Epilogue::None {
            // The plan is shared by every layer of this shape; the mask is this call's. cuBLASLt
            // reads the descriptor when the call is issued (or captured into a graph).
            // SAFETY: the descriptor is live; the attribute is a device pointer (8 bytes).
            unsafe {
                lt::set_matmul_desc_attribute(
                    p.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                    &mask as *const u64 as *const c_void,
                    8,
                )
                .map_err(lt_err("EPILOGUE_AUX_POINTER"))?;
            }
        }
        lt::matmul(
            handle,
            p.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            a as *const c_void,
            p.a,
            b as *const c_void,
            p.b,
            c as *const c_void,
            p.cd,
            d as *mut c_void,
            p.cd,
            &p.algo,
            ws as *mut c_void,
            WORKSPACE_BYTES,
            stream as sys::cudaStream_t,
        )
        .map_err(|e| anyhow!("cuBLASLt matmul {s:?}: {e:?}"))
    }

    /// `y[n, out] = x[n, in] W[out, in]^T`, plus `residual[n, out]` when given (`beta = 1`, read
    /// from a separate buffer, so the residual stream is fused into the projection).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: GpuFloat>(
        &mut self,
        y: &mut impl DevicePtrMut<T>,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        residual: Option<&dyn DevicePtrDyn<T>>,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        // SAFETY: no epilogue, so no mask is read or written.
        unsafe { self.forward_with(y, x, w, residual, Epilogue::None, 0, n, d_in, d_out) }
    }

    /// `y[n, out] = max(x[n, in] W[out, in]^T, 0)` in one product (the ReLU in cuBLASLt's
    /// epilogue), and `mask` ([`relu_mask_bytes`]`(n, out)` bytes) gets which outputs were
    /// positive, for [`Gemm::dgrad_relu_mask`]. `Ok(false)`, with nothing run, where cuBLASLt takes
    /// no mask for this shape or offers no algorithm for it: the caller then runs
    /// [`Gemm::forward`] and the ReLU kernels.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_relu_mask<T: GpuFloat>(
        &mut self,
        y: &mut impl DevicePtrMut<T>,
        mask: &mut impl DevicePtrMut<u8>,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<bool> {
        let Some(bytes) = relu_mask_bytes(n, d_out) else {
            return Ok(false);
        };
        need(mask.len(), bytes, "gemm forward relu mask")?;
        let st = self.stream.clone();
        let (pm, _g) = mask.device_ptr_mut(&st);
        // SAFETY: the mask holds the n out / 8 bytes the epilogue writes.
        let r = unsafe { self.forward_with(y, x, w, None, Epilogue::ReluMask, pm, n, d_in, d_out) };
        epilogue_ran(r)
    }

    /// The one forward product behind [`Gemm::forward`] and [`Gemm::forward_relu_mask`].
    ///
    /// # Safety
    /// Where `epilogue` is not `None`, `mask` is a live device address holding
    /// [`relu_mask_bytes`]`(n, d_out)` bytes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_with<T: GpuFloat>(
        &mut self,
        y: &mut impl DevicePtrMut<T>,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        residual: Option<&dyn DevicePtrDyn<T>>,
        epilogue: Epilogue,
        mask: u64,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        need(y.len(), n * d_out, "gemm forward y")?;
        need(x.len(), n * d_in, "gemm forward x")?;
        need(w.len(), d_out * d_in, "gemm forward w")?;
        if n == 0 || d_out == 0 {
            return Ok(());
        }
        let s = GemmShape {
            epilogue,
            ..forward_shape(Dtype::of::<T>(), n, d_in, d_out, residual.is_some())
        };
        let st = self.stream.clone();
        let (py, _g0) = y.device_ptr_mut(&st);
        let (px, _g1) = x.device_ptr(&st);
        let (pw, _g2) = w.device_ptr(&st);
        let (pc, beta) = match residual {
            Some(r) => {
                need(r.dyn_len(), n * d_out, "gemm forward residual")?;
                (r.dyn_ptr(&st), 1.0)
            }
            None => (py, 0.0),
        };
        // SAFETY: lengths checked above, the mask's by the caller; all buffers live on this
        // stream's context.
        unsafe { self.raw_masked(s, pw, px, pc, py, mask, 1.0, beta) }
    }

    /// `dx[n, in] = dy[n, out] W[out, in]` where the bit of `mask` (written by
    /// [`Gemm::forward_relu_mask`] for the `[n, in]` activation) is set, else 0: the ReLU's
    /// backward in the product's epilogue. `Ok(false)`, with nothing run, as `forward_relu_mask`.
    #[allow(clippy::too_many_arguments)]
    pub fn dgrad_relu_mask<T: GpuFloat>(
        &mut self,
        dx: &mut impl DevicePtrMut<T>,
        mask: &impl DevicePtr<u8>,
        dy: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<bool> {
        let Some(bytes) = relu_mask_bytes(n, d_in) else {
            return Ok(false);
        };
        need(mask.len(), bytes, "gemm dgrad relu mask")?;
        let st = self.stream.clone();
        let (pm, _g) = mask.device_ptr(&st);
        // SAFETY: the mask holds the n in / 8 bytes the epilogue reads.
        let r =
            unsafe { self.dgrad_with(dx, dy, w, Epilogue::DreluMask, pm, n, d_in, d_out, false) };
        epilogue_ran(r)
    }

    /// `dx[n, in] = dy[n, out] W[out, in]` (`accumulate`: `dx +=`).
    #[allow(clippy::too_many_arguments)]
    pub fn dgrad<T: GpuFloat>(
        &mut self,
        dx: &mut impl DevicePtrMut<T>,
        dy: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        n: usize,
        d_in: usize,
        d_out: usize,
        accumulate: bool,
    ) -> Result<()> {
        // SAFETY: no epilogue, so no mask is read.
        unsafe { self.dgrad_with(dx, dy, w, Epilogue::None, 0, n, d_in, d_out, accumulate) }
    }

    /// The one data-gradient product behind [`Gemm::dgrad`] and [`Gemm::dgrad_relu_mask`].
    ///
    /// # Safety
    /// Where `epilogue` is not `None`, `mask` is a live device address holding
    /// [`relu_mask_bytes`]`(n, d_in)` bytes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn dgrad_with<T: GpuFloat>(
        &mut self,
        dx: &mut impl DevicePtrMut<T>,
        dy: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        epilogue: Epilogue,
        mask: u64,
        n: usize,
        d_in: usize,
        d_out: usize,
        accumulate: bool,
    ) -> Result<()> {
        need(dx.len(), n * d_in, "gemm dgrad dx")?;
        need(dy.len(), n * d_out, "gemm dgrad dy")?;
        need(w.len(), d_out * d_in, "gemm dgrad w")?;
        if n == 0 || d_in == 0 {
            return Ok(());
        }
        let s = GemmShape {
            epilogue,
            ..dgrad_shape(Dtype::of::<T>(), n, d_in, d_out, accumulate)
        };
        let st = self.stream.clone();
        let (pdx, _g0) = dx.device_ptr_mut(&st);
        let (pdy, _g1) = dy.device_ptr(&st);
        let (pw, _g2) = w.device_ptr(&st);
        let beta = if accumulate { 1.0 } else { 0.0 };
        // SAFETY: lengths checked above, the mask's by the caller.
        unsafe { self.raw_masked(s, pw, pdy, pdx, pdx, mask, 1.0, beta) }
    }

    /// `dW[out, in] = dy[n, out]^T x[n, in]` in fp32 (`accumulate`: `dW +=`).
    #[allow(clippy::too_many_arguments)]
    pub fn wgrad<T: GpuFloat>(
        &mut self,
        dw: &mut impl DevicePtrMut<f32>,
        dy: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        n: usize,
        d_in: usize,
        d_out: usize,
        accumulate: bool,
    ) -> Result<()> {
        need(dw.len(), d_out * d_in, "gemm wgrad dw")?;
        need(dy.len(), n * d_out, "gemm wgrad dy")?;
        need(x.len(), n * d_in, "gemm wgrad x")?;
        if d_in == 0 || d_out == 0 {
            return Ok(());
        }
        let s = wgrad_shape(Dtype::of::<T>(), n, d_in, d_out, accumulate);
        let st = self.stream.clone();
        let (pdw, _g0) = dw.device_ptr_mut(&st);
        let (pdy, _g1) = dy.device_ptr(&st);
        let (px, _g2) = x.device_ptr(&st);
        let beta = if accumulate { 1.0 } else { 0.0 };
        // SAFETY: lengths checked above.
        unsafe { self.raw(s, px, pdy, pdw, pdw, 1.0, beta) }
    }

    /// The backward of a linear layer `y[n, out] = x[n, in] W[out, in]^T`: `dx = dy W`,
    /// overwritten, and `dW = dy^T x` (fp32), overwritten or, with `accumulate`, added to.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward<T: GpuFloat>(
        &mut self,
        dx: &mut impl DevicePtrMut<T>,
        dw: &mut impl DevicePtrMut<f32>,
        dy: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        n: usize,
        d_in: usize,
        d_out: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.dgrad(dx, dy, w, n, d_in, d_out, false)?;
        self.wgrad(dw, dy, x, n, d_in, d_out, accumulate)
    }
}

/// Whether a product with an epilogue ran (`false`: cuBLASLt offered no algorithm for it).
fn epilogue_ran(r: Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is::<NoEpilogueAlgorithm>() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Object-safe access to a device buffer's pointer (for the optional residual argument).
pub trait DevicePtrDyn<T> {
    fn dyn_len(&self) -> usize;
    fn dyn_ptr(&self, stream: &Arc<CudaStream>) -> u64;
}

impl<T, P: DevicePtr<T>> DevicePtrDyn<T> for P {
    fn dyn_len(&self) -> usize {
        self.len()
    }
    fn dyn_ptr(&self, stream: &Arc<CudaStream>) -> u64 {
        // The backend's context runs with event tracking off, so the guard records nothing.
        let (p, _g) = self.device_ptr(stream);
        p
    }
}

/// `y[n, out] = x[n, in] W[out, in]^T`: A = W (transposed), B = x, D = y.
pub fn forward_shape(ab: Dtype, n: usize, d_in: usize, d_out: usize, acc: bool) -> GemmShape {
    GemmShape {
        m: d_out as u64,
        n: n as u64,
        k: d_in as u64,
        trans_a: true,
        trans_b: false,
        ab,
        cd: ab,
        accumulate: acc,
        align: 0,
        epilogue: Epilogue::None,
    }
}

/// `dx[n, in] = dy[n, out] W[out, in]`: A = W, B = dy, D = dx.
pub fn dgrad_shape(ab: Dtype, n: usize, d_in: usize, d_out: usize, acc: bool) -> GemmShape {
    GemmShape {
        m: d_in as u64,
        n: n as u64,
        k: d_out as u64,
        trans_a: false,
        trans_b: false,
        ab,
        cd: ab,
        accumulate: acc,
        align: 0,
        epilogue: Epilogue::None,
    }
}

/// `dW[out, in] = dy[n, out]^T x[n, in]` (fp32): A = x, B = dy (transposed), D = dW.
pub fn wgrad_shape(ab: Dtype, n: usize, d_in: usize, d_out: usize, acc: bool) -> GemmShape {
    GemmShape {
        m: d_in as u64,
        n: d_out as u64,
        k: n as u64,
        trans_a: false,
        trans_b: true,
        ab,
        cd: Dtype::F32,
        accumulate: acc,
        align: 0,
        epilogue: Epilogue::None,
    }
}

fn need(len: usize, want: usize, what: &str) -> Result<()> {
    ensure!(
        len >= want,
        "{what}: the buffer holds {len} elements, the shape needs {want}"
    );
    Ok(())
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // SAFETY: every object was created by this struct and is destroyed once. Errors while
        // tearing down are ignored (nothing useful can be done with them in drop).
        unsafe {
            for (_, p) in self.plans.drain() {
                let _ = lt::destroy_matrix_layout(p.a);
                let _ = lt::destroy_matrix_layout(p.b);
                let _ = lt::destroy_matrix_layout(p.cd);
                let _ = lt::destroy_matmul_desc(p.desc);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::matmul::{matmul_backward, matmul_forward};

    /// cuBLASLt's semantics on the host: column-major A (stored `k x m`, ld `k`, when
    /// transposed, else `m x k`, ld `m`), B likewise, `D = alpha op(A) op(B) + beta C`, D `m x n`
    /// with ld `m`. Checks the row-major <-> column-major mapping without a GPU.
    fn colmajor(s: &GemmShape, a: &[f32], b: &[f32], c: &[f32], beta: f32) -> Vec<f32> {
        let (m, n, k) = (s.m as usize, s.n as usize, s.k as usize);
        let op_a = |i: usize, p: usize| {
            if s.trans_a {
                a[p + i * k]
            } else {
                a[i + p * m]
            }
        };
        let op_b = |p: usize, j: usize| {
            if s.trans_b {
                b[j + p * n]
            } else {
                b[p + j * k]
            }
        };
        let mut d = vec![0f32; m * n];
        for j in 0..n {
            for i in 0..m {
                let mut acc = 0f64;
                for p in 0..k {
                    acc += op_a(i, p) as f64 * op_b(p, j) as f64;
                }
                d[i + j * m] = acc as f32 + beta * c[i + j * m];
            }
        }
        d
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "[{i}] {x} vs {y}");
        }
    }

    #[test]
    fn layouts_map_row_major_linear_layers() {
        let (n, d_in, d_out) = (5usize, 3usize, 4usize);
        let f = |len: usize, s: f32| -> Vec<f32> {
            (0..len).map(|i| ((i as f32 + 1.0) * s).sin()).collect()
        };
        let (x, w, dy, r, dw0) = (
            f(n * d_in, 0.7),
            f(d_out * d_in, 1.3),
            f(n * d_out, 0.4),
            f(n * d_out, 2.1),
            f(d_out * d_in, 0.9),
        );
        // forward (and with the residual as C, beta = 1)
        let mut want = vec![0f32; n * d_out];
        matmul_forward(&mut want, &x, &w, n, d_in, d_out);
        let s = forward_shape(Dtype::F32, n, d_in, d_out, false);
        close(&colmajor(&s, &w, &x, &want, 0.0), &want);
        let with_r: Vec<f32> = want.iter().zip(&r).map(|(a, b)| a + b).collect();
        close(&colmajor(&s, &w, &x, &r, 1.0), &with_r);
        // dgrad and wgrad (the CPU twin adds into dw)
        let (mut dx, mut dw) = (vec![0f32; n * d_in], dw0.clone());
        matmul_backward(&mut dx, &mut dw, &dy, &x, &w, n, d_in, d_out, false);
        let s = dgrad_shape(Dtype::F32, n, d_in, d_out, false);
        close(&colmajor(&s, &w, &dy, &dx, 0.0), &dx);
        let s = wgrad_shape(Dtype::F32, n, d_in, d_out, true);
        close(&colmajor(&s, &x, &dy, &dw0, 1.0), &dw);
        assert_eq!(s.flops(), (2 * n * d_in * d_out) as f64);
    }
}
