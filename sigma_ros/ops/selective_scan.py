"""Selective scan (Mamba S6) with mamba-ssm ``selective_scan_fn`` semantics, behind three backends.

    y = selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend=None)

Shapes: u, delta (batch, dim, L); A (dim, N) float32, real; B, C (batch, G, N, L) with group g driving
channels g*dim/G .. (g+1)*dim/G - 1, or (batch, N, L) for one group; D, delta_bias (dim,) float32.
Semantics (as mamba-ssm's CUDA kernel): dt = softplus(delta + delta_bias) if delta_softplus (log1p(exp(v))
for v <= 20, else v); h_0 = 0; h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t; y_t = <C_t, h_t> + D * u_t.
Math is float32 whatever the input dtype; the result has u's dtype. All backends are differentiable.

Backends:
  "cuda"       mamba-ssm's ``selective_scan_fn`` (``mamba_ssm.ops.selective_scan_interface``); CUDA tensors.
  "cpu"        numba kernels (``_scan_numba``), forward and backward; CPU tensors.
  "reference"  the plain PyTorch recurrence (any device; slow, memory-hungry; kept for tests).
Choice: the ``backend`` argument, else the environment variable SIGMA_SCAN_BACKEND (cuda|cpu|reference|auto),
else auto: "cuda" for CUDA tensors when mamba-ssm imports, "cpu" for CPU tensors when numba imports,
otherwise "reference" (with a one-time warning).
Under torch.compile the "cuda" and "cpu" backends run as the custom ops ``sigma_ros::selective_scan`` and
``sigma_ros::selective_scan_backward``, so a compiled training step keeps the scans inside its graphs.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "available_backends",
    "resolve_backend",
    "describe_backend",
    "a_from_log",
    "BACKENDS",
    "ENV_VAR",
]

BACKENDS = ("cuda", "cpu", "reference")
ENV_VAR = "SIGMA_SCAN_BACKEND"
_MAMBA_MODULE = "mamba_ssm.ops.selective_scan_interface"

# --------------------------------------------------------------------------------------------------------------------
# Optional dependencies, imported lazily (importing mamba-ssm pulls triton; numba costs ~0.3 s)
# --------------------------------------------------------------------------------------------------------------------
_mamba_state: tuple | None = None  # (selective_scan_fn or None, reason or None, version or None)
_numba_state: tuple | None = None  # (kernels module or None, reason or None)
_import_lock = threading.Lock()


def _load_mamba() -> tuple:
    """Import mamba-ssm's selective_scan_fn once. Returns (fn | None, reason | None, version | None)."""
    global _mamba_state
    if _mamba_state is not None:
        return _mamba_state
    with _import_lock:
        if _mamba_state is None:
            _mamba_state = _import_mamba()
    return _mamba_state


def _import_mamba() -> tuple:
    if importlib.util.find_spec("mamba_ssm") is None:
        return None, "mamba-ssm is not installed (pip install 'sigma_ros[cuda]' on a CUDA machine)", None
    try:
        mod = importlib.import_module(_MAMBA_MODULE)
    except Exception as exc:  # noqa: BLE001 - any failure means "unavailable", and we say why
        first = exc
        # mamba_ssm/__init__.py imports its models (and their optional extras: triton, transformers, ...).
        # The scan itself needs none of them, so retry without running the package's __init__.
        mod, second = _import_mamba_bypassing_init()
        if mod is None:
            reason = f"{type(first).__name__}: {first}"
            if second is not None and str(second) != str(first):
                reason += f" (without mamba_ssm/__init__: {type(second).__name__}: {second})"
            if "selective_scan_cuda" in reason:
                reason += ("; recent mamba-ssm releases build their CUDA kernels only when installed with "
                           "MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation mamba-ssm")
            return None, reason, None
    fn = getattr(mod, "selective_scan_fn", None)
    if fn is None:
        return None, f"{_MAMBA_MODULE} has no selective_scan_fn", None
    version = getattr(sys.modules.get("mamba_ssm"), "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as _dist_version

            version = _dist_version("mamba-ssm")
        except Exception:  # noqa: BLE001
            version = "?"
    return fn, None, version


def _import_mamba_bypassing_init():
    """Load mamba_ssm.ops.selective_scan_interface with placeholder parent packages; restore sys.modules after."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    root = list(spec.submodule_search_locations)[0]
    saved = {k: v for k, v in sys.modules.items() if k == "mamba_ssm" or k.startswith("mamba_ssm.")}
    for k in saved:
        del sys.modules[k]
    try:
        import types as _types

        for name, sub in (("mamba_ssm", ""), ("mamba_ssm.ops", "ops"), ("mamba_ssm.utils", "utils")):
            pkg = _types.ModuleType(name)
            pkg.__path__ = [os.path.join(root, sub) if sub else root]
            sys.modules[name] = pkg
        return importlib.import_module(_MAMBA_MODULE), None
    except Exception as exc:  # noqa: BLE001
        return None, exc
    finally:
        # Keep the loaded scan module, drop our placeholders so a later `import mamba_ssm` is a real import.
        for k in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.utils"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)


def _load_numba() -> tuple:
    """Import the numba kernels once. Returns (module | None, reason | None)."""
    global _numba_state
    if _numba_state is not None:
        return _numba_state
    with _import_lock:
        if _numba_state is None:
            try:
                import numba

                # workqueue: fork-safe (GNU OpenMP aborts forked children, e.g. DataLoader workers) and it does not
                # spin against torch's own OpenMP pool. It is not re-entrant, so our launches hold _kernel_lock.
                if not os.environ.get("NUMBA_THREADING_LAYER") and numba.config.THREADING_LAYER == "default":
                    numba.config.THREADING_LAYER = "workqueue"
                from . import _scan_numba

                _numba_state = (_scan_numba, None)
            except Exception as exc:  # noqa: BLE001
                _numba_state = (None, f"numba kernels unavailable: {type(exc).__name__}: {exc}")
    return _numba_state


_kernel_lock = threading.Lock()


def _numba_threads() -> int:
    """Threads for the numba kernels: torch's intra-op count (one knob for users), capped by numba's pool."""
    import numba

    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


# --------------------------------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------------------------------
def _device_type(device) -> str:
    if device is None:
        return "cpu"
    if isinstance(device, torch.Tensor):
        return device.device.type
    return torch.device(device).type


def _check_name(name: str, source: str) -> str:
    key = name.strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r} from {source}; expected one of "
                         f"{', '.join(BACKENDS)} (or 'auto')")
    return key


def _unavailable_reason(backend: str) -> str | None:
    """None if ``backend`` can run in this process, else why not (phrased to follow "... but ")."""
    if backend == "cuda":
        fn, reason, _ = _load_mamba()
        if fn is None:
            return f"{_MAMBA_MODULE} cannot be imported: {reason}"
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None
    if backend == "cpu":
        return _load_numba()[1]
    return None


def available_backends() -> list[str]:
    """Backends usable in this process (cuda needs mamba-ssm importable and a CUDA device)."""
    return [b for b in BACKENDS if _unavailable_reason(b) is None]


def _auto(dev_type: str) -> str:
    if dev_type == "cuda":
        reason = _unavailable_reason("cuda")
        if reason is None:
            return "cuda"
        _warn_once("cuda", f"selective scan: mamba-ssm's CUDA kernel is unavailable ({reason}); "
                   "using the slow PyTorch reference scan on the GPU")
        return "reference"
    if dev_type == "cpu":
        reason = _unavailable_reason("cpu")
        if reason is None:
            return "cpu"
        _warn_once("cpu", f"selective scan: {reason}; using the slow PyTorch reference scan")
        return "reference"
    return "reference"  # mps, xpu, ...: only the reference runs there


_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _requested(backend: str | None) -> tuple[str | None, str]:
    """(forced backend or None for auto, where it came from)."""
    if backend is not None and backend.strip().lower() != "auto":
        return _check_name(backend, "the backend argument"), "backend argument"
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env.lower() != "auto":
        return _check_name(env, f"{ENV_VAR}={env}"), ENV_VAR
    return None, "auto"


def resolve_backend(device=None, backend: str | None = None) -> str:
    """The backend ``selective_scan`` uses for tensors on ``device`` (default cpu) given ``backend``.

    Applies the argument, then SIGMA_SCAN_BACKEND, then the automatic choice. Raises RuntimeError when a
    forced backend is unavailable, ValueError for an unknown name.
    """
    dev_type = _device_type(device)
    forced, source = _requested(backend)
    if forced is None:
        return _auto(dev_type)
    where = f"{ENV_VAR}={forced}" if source == ENV_VAR else f"backend={forced!r}"
    reason = _unavailable_reason(forced)
    if reason is not None:
        raise RuntimeError(f"{where} but {reason}")
    if forced == "cpu" and dev_type != "cpu":
        raise RuntimeError(f"{where} but the tensors are on {dev_type}; the numba backend runs on CPU tensors only "
                           f"(move them to the CPU, or use backend 'reference' or 'cuda')")
    if forced == "cuda" and dev_type != "cuda":
        raise RuntimeError(f"{where} but the tensors are on {dev_type}; mamba-ssm's kernel needs CUDA tensors")
    return forced


def describe_backend(device=None, backend: str | None = None) -> str:
    """A short human description for log lines and `sigma-ros info`, e.g. 'cpu (numba 0.68.1, 2 threads)'.

    Never raises: a forced backend that cannot run is described as an error string.
    """
    try:
        name = resolve_backend(device, backend)
    except (RuntimeError, ValueError) as exc:
        return f"unavailable: {exc}"
    forced = _requested(backend)[1]
    note = "" if forced == "auto" else f", forced by {forced}"
    if name == "cuda":
        _, _, version = _load_mamba()
        return f"cuda (mamba-ssm {version} selective_scan_fn{note})"
    if name == "cpu":
        import numba

        return f"cpu (numba {numba.__version__}, {_numba_threads()} threads{note})"
    return f"reference (PyTorch loop, slow{note})"


def a_from_log(A_log: torch.Tensor) -> torch.Tensor:
    """A = -exp(A_log) in float32, the (dim, N) matrix the scan takes (Mamba's stored parameterisation)."""
    return -torch.exp(A_log.float())


# --------------------------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------------------------
def _check_shapes(u, delta, A, B, C, D, delta_bias) -> int:
    """Validate shapes; return the group count G."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported (Sigma's scans are real)")
    n = A.shape[1]
    groups = None
    for name, m in (("B", B), ("C", C)):
        if m.dim() == 3 and m.shape == (batch, n, length):
            g = 1
        elif m.dim() == 4 and m.shape[0] == batch and m.shape[2:] == (n, length):
            g = m.shape[1]
        else:
            raise ValueError(f"selective_scan: {name} must be (batch={batch}, N={n}, L={length}) or "
                             f"(batch, G, N, L), got {tuple(m.shape)}")
        if g < 1 or dim % g != 0:
            raise ValueError(f"selective_scan: dim={dim} is not divisible by {name}'s group count {g}")
        if groups is not None and g != groups:
            raise ValueError(f"selective_scan: B has {groups} groups but C has {g}")
        groups = g
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got {tuple(v.shape)}")
    devices = {t.device for t in (u, delta, A, B, C, D, delta_bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: tensors are on different devices: {sorted(map(str, devices))}")
    return groups


# --------------------------------------------------------------------------------------------------------------------
# Reference backend
# --------------------------------------------------------------------------------------------------------------------
def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
                             compute_dtype: torch.dtype = torch.float32):
    """Plain sequential recurrence in PyTorch (autograd-capable). ``compute_dtype`` float64 is for tests.

    Like mamba-ssm's ``selective_scan_ref`` it materialises exp(dt*A) and dt*B*u as (batch, dim, L, N) tensors
    (vectorised exp, then a Python loop over L), but keeps B/C grouped instead of repeating them per channel.
    """
    ct = compute_dtype
    batch, dim, length = u.shape
    n = A.shape[1]
    B_ = (B.unsqueeze(1) if B.dim() == 3 else B).to(ct)  # (batch, G, N, L)
    C_ = (C.unsqueeze(1) if C.dim() == 3 else C).to(ct)
    groups = B_.shape[1]
    u_ = u.to(ct)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)  # threshold 20: log1p(exp(v)) for v <= 20, else v -- as the CUDA kernel
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A.to(ct)))
    du = (dt * u_).view(batch, groups, dim // groups, length)
    deltaB_u = torch.einsum("bgdl,bgnl->bgdln", du, B_).reshape(batch, dim, length, n)
    h = u_.new_zeros((batch, dim, n))
    ys = []
    # unbind once: indexing [:, :, t] inside the loop would make autograd build a full-size zero tensor per step.
    for a_t, bu_t, c_t in zip(deltaA.unbind(2), deltaB_u.unbind(2), C_.unbind(-1)):
        h = a_t * h + bu_t
        ys.append(torch.einsum("bgdn,bgn->bgd", h.view(batch, groups, dim // groups, n), c_t))
    y = torch.stack(ys, dim=-1).reshape(batch, dim, length) if ys else u_.new_zeros((batch, dim, 0))
    if D is not None:
        y = y + u_ * D.to(ct)[:, None]
    return y.to(u.dtype)


# --------------------------------------------------------------------------------------------------------------------
# CPU (numba) backend
# --------------------------------------------------------------------------------------------------------------------
def _f32c(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def _np(*tensors: torch.Tensor) -> list:
    """Zero-copy numpy views (the tensors are float32 and contiguous here)."""
    return [t.detach().numpy() for t in tensors]


def _numba_forward(u, delta, A, B4, C4, D, delta_bias, softplus: bool, need_grad: bool):
    """y, and the chunk states its backward restarts from (empty without ``need_grad``). Float32 contiguous CPU
    tensors in, B and C grouped (batch, G, N, L)."""
    kern = _load_numba()[0]
    batch, dim, length = u.shape
    n = A.shape[1]
    y = torch.empty((batch, dim, length), dtype=torch.float32)
    nchunks = -(-length // kern.CHUNK) if need_grad else 0
    hsave = torch.empty((batch, dim, nchunks, n) if need_grad else (0, 0, 0, 0), dtype=torch.float32)
    nsplit = _nsplit(batch, dim, B4.shape[1])
    _launch(kern.scan_fwd, *_np(u, delta, A, B4, C4, D, delta_bias), bool(softplus), nsplit, *_np(y, hsave),
            B4.shape[1])
    return y, hsave


def _numba_backward(u, delta, A, B4, C4, D, delta_bias, softplus: bool, hsave, dy):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias), all float32, from the forward's inputs and chunk states."""
    kern = _load_numba()[0]
    batch, dim, length = u.shape
    groups, n = B4.shape[1], A.shape[1]
    dy = _f32c(dy)
    nsplit = _nsplit(batch, dim, groups)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dA_part = torch.empty((batch, dim, n), dtype=torch.float64)
    dB_part = torch.zeros((batch, groups, nsplit, n, length), dtype=torch.float32)
    dC_part = torch.zeros_like(dB_part)
    dD_part = torch.empty((batch, dim), dtype=torch.float64)
    dbias_part = torch.empty((batch, dim), dtype=torch.float64)
    _launch(kern.scan_bwd, *_np(u, delta, A, B4, C4, D, delta_bias), bool(softplus), *_np(hsave, dy), nsplit,
            *_np(du, ddelta, dA_part, dB_part, dC_part, dD_part, dbias_part))
    dA = dA_part.sum(0).float()
    dB = dB_part.sum(2) if nsplit > 1 else dB_part[:, :, 0]
    dC = dC_part.sum(2) if nsplit > 1 else dC_part[:, :, 0]
    return du, ddelta, dA, dB, dC, dD_part.sum(0).float(), dbias_part.sum(0).float()


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B4, C4, D, delta_bias, softplus: bool, need_grad: bool):
        y, hsave = _numba_forward(u, delta, A, B4, C4, D, delta_bias, softplus, need_grad)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B4, C4, D, delta_bias, hsave)
        ctx.softplus = bool(softplus)
        return y

    @staticmethod
    @once_differentiable  # the numba backward is not itself differentiable: double backward raises
    def backward(ctx, dy):
        u, delta, A, B4, C4, D, delta_bias, hsave = ctx.saved_tensors
        return (*_numba_backward(u, delta, A, B4, C4, D, delta_bias, ctx.softplus, hsave, dy), None, None)


def _nsplit(batch: int, dim: int, groups: int) -> int:
    """Slices per group: enough (batch, group, slice) tasks for every thread; each slice owns a dB/dC copy."""
    tasks = batch * groups
    threads = _numba_threads()
    if tasks >= 2 * threads or tasks % threads == 0:
        return 1
    return max(1, min(dim // groups, -(-2 * threads // tasks)))


def _launch(kernel, *args) -> None:
    import numba

    with _kernel_lock:  # workqueue layer: one parallel launch at a time
        numba.set_num_threads(_numba_threads())
        kernel(*args)


def _grouped_operands(u, B, C, D, delta_bias) -> tuple:
    """B and C as (batch, G, N, L); absent D / delta_bias as zeros, so a kernel has one specialisation (their
    gradients are then dropped)."""
    zeros = u.new_zeros(u.shape[1], dtype=torch.float32)
    return (B.unsqueeze(1) if B.dim() == 3 else B, C.unsqueeze(1) if C.dim() == 3 else C,
            D if D is not None else zeros, delta_bias if delta_bias is not None else zeros)


def _scan_cpu(u, delta, A, B, C, D, delta_bias, delta_softplus):
    if u.device.type != "cpu":
        raise RuntimeError(f"selective_scan backend 'cpu' needs CPU tensors, got {u.device}")
    B4, C4, D_, bias_ = _grouped_operands(u, B, C, D, delta_bias)
    tensors = (u, delta, A, B4, C4, D_, bias_)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    # Cast/contiguous copies are made under autograd so gradients flow back to the caller's dtype and layout.
    args = [t.to(torch.float32).contiguous() for t in tensors]
    if not need_grad:
        args = [t.detach() for t in args]
    y = _NumbaScan.apply(*args, bool(delta_softplus), need_grad)
    return y.to(u.dtype)


def scan_directions_cpu(u, delta, A, B, C, D, delta_bias, delta_softplus: bool = True) -> torch.Tensor:
    """Inference on the CPU backend: each of the G base sequences of u (batch, G, dim, L) scanned forwards and
    reversed, summed per sequence -> (batch, G, dim, L) float32. delta (batch, 2G, dim, L) and B, C (batch, 2G, N,
    L) are indexed in base order for every direction, A (2G*dim, N), D and delta_bias (2G*dim,). The numba kernel
    reads the reversed directions in place, so none of the inputs is copied flipped (the generic path's cat and
    flip copies took a quarter of a CPU forward). The sums are bitwise those of scanning flipped copies."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)):
        raise RuntimeError("scan_directions_cpu is for inference: its kernel has no backward for in-place reversal")
    batch, groups, dim, length = u.shape
    k_dirs = delta.shape[1]
    if k_dirs != 2 * groups:
        raise ValueError(f"scan_directions_cpu: {k_dirs} directions for {groups} sequences (expected {2 * groups})")
    u_, delta_ = (_f32c(t).reshape(batch, -1, length) for t in (u, delta))
    _check_shapes(delta_, delta_, A, B, C, D, delta_bias)
    B4, C4, D_, bias_ = (_f32c(t) for t in _grouped_operands(delta_, B, C, D, delta_bias))
    kern = _load_numba()[0]
    if kern is None:
        raise RuntimeError(f"scan_directions_cpu: {_load_numba()[1]}")
    y = torch.empty_like(delta_)
    _launch(kern.scan_fwd, *_np(u_, delta_, _f32c(A), B4, C4, D_, bias_), bool(delta_softplus),
            _nsplit(batch, delta_.shape[1], k_dirs), *_np(y, torch.empty((0, 0, 0, 0))), groups)
    ys = y.view(batch, k_dirs, dim, length)
    return ys[:, :groups] + ys[:, groups:]


# --------------------------------------------------------------------------------------------------------------------
# CUDA (mamba-ssm) backend
# --------------------------------------------------------------------------------------------------------------------
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _prepare_cuda_args(u, delta, A, B, C, D, delta_bias):
    """Dtypes and layouts mamba-ssm's kernel requires.

    u, delta, B, C: one dtype (fp32/fp16/bf16; mixed inputs go to the widest, fp16 with bf16 to fp32), made fully
    contiguous (last-dim stride 1, and dense (batch, G, N, L) strides for grouped B/C); A, D, delta_bias:
    contiguous float32.
    """
    dt = u.dtype
    for t in (delta, B, C):
        dt = torch.promote_types(dt, t.dtype)
    if dt not in _KERNEL_DTYPES:
        dt = torch.float32
    u = u.to(dt).contiguous()
    delta = delta.to(dt).contiguous()
    B = B.to(dt).contiguous()
    C = C.to(dt).contiguous()
    A = A.float().contiguous()
    D = D.float().contiguous() if D is not None else None
    delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
    return u, delta, A, B, C, D, delta_bias


def _scan_cuda(u, delta, A, B, C, D, delta_bias, delta_softplus, fn=None):
    if fn is None:
        fn, reason, _ = _load_mamba()
        if fn is None:
            raise RuntimeError(f"selective_scan backend 'cuda' but {_MAMBA_MODULE} cannot be imported: {reason}")
    out_dtype = u.dtype
    u, delta, A, B, C, D, delta_bias = _prepare_cuda_args(u, delta, A, B, C, D, delta_bias)
    y = fn(u, delta, A, B, C, D, None, delta_bias, bool(delta_softplus))
    return y.to(out_dtype)


# --------------------------------------------------------------------------------------------------------------------
# The scan as one differentiable op torch.compile can keep in its graph (training under torch.compile)
# --------------------------------------------------------------------------------------------------------------------
# mamba-ssm's autograd.Function and the numba kernels are opaque to dynamo: each scan would break the graph in two
# (39 breaks a Sigma-T forward), and Inductor could not fuse the copies, casts and norms around the scans. As custom
# ops with a fake implementation and a registered backward, forward and backward compile as one graph each. The ops
# take the backend's own layouts (the caller casts and makes contiguous, in traced code) and return the states the
# backend's backward restarts from.
def _mamba_kernels():
    """mamba-ssm's compiled extension (its loader has been run by :func:`_load_mamba`)."""
    return sys.modules["selective_scan_cuda"]


def _saved_state_shape(u: torch.Tensor, n: int) -> tuple:
    batch, dim, length = u.shape
    if u.is_cuda:  # mamba-ssm: (batch, dim, chunks of 2048, 2N) float32
        return batch, dim, -(-length // 2048), 2 * n
    return batch, dim, -(-length // _load_numba()[0].CHUNK), n


@torch.library.custom_op("sigma_ros::selective_scan", mutates_args=())
def _scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, states): y as the backend computes it (u's dtype on CUDA, float32 on the CPU) and the states its
    backward restarts from. CUDA runs mamba-ssm's kernel, the CPU the numba kernels."""
    if u.is_cuda:
        y, states, *_ = _mamba_kernels().fwd(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
        return y, states
    return _numba_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, True)


@_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus):
    y = u.new_empty(u.shape, dtype=u.dtype if u.is_cuda else torch.float32)
    return y, u.new_empty(_saved_state_shape(u, A.shape[1]), dtype=torch.float32)


@torch.library.custom_op("sigma_ros::selective_scan_backward", mutates_args=())
def _scan_backward_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool, states: torch.Tensor,
                      dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias), each in its input's dtype."""
    if u.is_cuda:
        grads = _mamba_kernels().bwd(u, delta, A, B, C, D, None, delta_bias, dy.contiguous(), states, None, None,
                                     delta_softplus, False)[:7]
    else:
        grads = _numba_backward(u, delta, A, B, C, D, delta_bias, delta_softplus, states, dy)
    inputs = (u, delta, A, B, C, D, delta_bias)
    return tuple(g.to(t.dtype) for g, t in zip(grads, inputs))  # mamba-ssm's dB and dC are float32


@_scan_backward_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, states, dy):
    return tuple(torch.empty_like(t) for t in (u, delta, A, B, C, D, delta_bias))


def _scan_op_setup(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])
    ctx.softplus = softplus


def _scan_op_backward(ctx, dy, dstates):
    u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
    return (*_scan_backward_op(u, delta, A, B, C, D, delta_bias, ctx.softplus, states, dy), None)


_scan_op.register_autograd(_scan_op_backward, setup_context=_scan_op_setup)


def _scan_traceable(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """The backend's kernel through :func:`_scan_op`: the casts and layouts it needs are ordinary (traced,
    differentiable) tensor ops around it."""
    B, C, D, delta_bias = _grouped_operands(u, B, C, D, delta_bias)
    if u.is_cuda:
        args = _prepare_cuda_args(u, delta, A, B, C, D, delta_bias)
    else:
        args = [t.to(torch.float32).contiguous() for t in (u, delta, A, B, C, D, delta_bias)]
    return _scan_op(*args, bool(delta_softplus))[0].to(u.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------------
def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = False, backend: str | None = None) -> torch.Tensor:
    """Selective scan with mamba-ssm ``selective_scan_fn`` semantics (see the module docstring)."""
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    name = resolve_backend(u.device, backend)
    if name in ("cuda", "cpu") and torch.compiler.is_compiling():
        return _scan_traceable(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if name == "cpu":
        return _scan_cpu(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if name == "cuda":
        return _scan_cuda(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)
