"""Selective-scan backends: numerics (numba vs reference vs a direct formula), dispatch, errors, fork/thread safety."""
from __future__ import annotations

import importlib
import math
import multiprocessing as mp
import sys
import threading

import pytest
import torch

from sigma_ros.ops import (
    a_from_log,
    available_backends,
    describe_backend,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
)

# The package re-exports the function under the module's name, so fetch the module itself.
ss = importlib.import_module("sigma_ros.ops.selective_scan")
HAS_NUMBA = "cpu" in available_backends()
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba backend unavailable")


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv(ss.ENV_VAR, raising=False)


def make_inputs(batch, dim, length, n, groups, *, softplus=True, three_d=False, with_d=True, with_bias=True,
                dtype=torch.float32, seed=0):
    """Inputs in Sigma's regime: dt ~ softplus(small + bias), A = -(positive), grouped B/C."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    if softplus:
        delta = 0.5 * torch.randn(batch, dim, length, generator=g)
        bias = torch.randn(dim, generator=g) * 0.5 - 2.0
    else:  # raw dt must stay positive without softplus
        delta = 0.1 * torch.rand(batch, dim, length, generator=g)
        bias = 0.05 * torch.rand(dim, generator=g) + 0.01
    A = -(torch.rand(dim, n, generator=g) * 2.0 + 0.1)
    bshape = (batch, n, length) if three_d else (batch, groups, n, length)
    B = torch.randn(*bshape, generator=g)
    C = torch.randn(*bshape, generator=g)
    D = torch.randn(dim, generator=g)
    return dict(u=u.to(dtype), delta=delta.to(dtype), A=A, B=B.to(dtype), C=C.to(dtype),
                D=D if with_d else None, delta_bias=bias if with_bias else None)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def run_with_grads(inputs, softplus, backend, seed=1):
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    y = selective_scan(**leaves, delta_softplus=softplus, backend=backend)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    names = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(y, [leaves[k] for k in names], gy)
    return y, dict(zip(names, grads))


# ---------------------------------------------------------------------------------------------------------------------
# The scan as a custom op (training under torch.compile)
# ---------------------------------------------------------------------------------------------------------------------
@needs_numba
def test_scan_op_passes_torch_library_checks():
    """The op's fake implementation, its registered backward and its schema agree with what it really does."""
    x = make_inputs(2, 8, 37, 4, 2)
    args = [t.float().contiguous() for t in (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"])]
    args = [t.requires_grad_(True) for t in args]
    torch.library.opcheck(ss._scan_op, (*args, True))


@needs_numba
def test_compiled_scan_is_one_graph_with_the_eager_results_and_gradients():
    """Under torch.compile the scan is the custom op: no graph break (fullgraph), same output and gradients as the
    eager backend, for bf16 inputs and 3-d B/C too."""
    for dtype, three_d in ((torch.float32, False), (torch.bfloat16, True)):
        inputs = make_inputs(2, 8, 37, 4, 2, three_d=three_d, dtype=dtype)
        y0, g0 = run_with_grads(inputs, True, None)
        scan = torch.compile(lambda **kw: selective_scan(**kw, delta_softplus=True), backend="aot_eager",
                             fullgraph=True)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        y1 = scan(**leaves)
        gy = torch.randn(y1.shape, generator=torch.Generator().manual_seed(1)).to(y1.dtype)
        g1 = dict(zip(leaves, torch.autograd.grad(y1, list(leaves.values()), gy)))
        assert y1.dtype == dtype
        torch.testing.assert_close(y1, y0, rtol=0, atol=0)
        for k in g0:
            assert g1[k].dtype == inputs[k].dtype, k
            torch.testing.assert_close(g1[k], g0[k], rtol=0, atol=0, msg=k)


# ---------------------------------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------------------------------
def test_reference_matches_direct_formula():
    """The reference against a scalar, per-element evaluation of the documented recurrence (float64)."""
    inp = make_inputs(2, 4, 7, 3, 2, seed=3)
    inp["delta"][0, 1, 2] = 23.0  # above the softplus threshold: dt = v, not log1p(exp(v))
    inp = {k: v.double() for k, v in inp.items()}
    y = selective_scan_reference(**inp, delta_softplus=True, compute_dtype=torch.float64)
    u, delta, A, B, C, D, bias = (inp[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"))
    batch, dim, length = u.shape
    n, groups = A.shape[1], B.shape[1]
    expect = torch.zeros(batch, dim, length, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            g = d // (dim // groups)
            h = [0.0] * n
            for t in range(length):
                v = float(delta[b, d, t] + bias[d])
                dt = math.log1p(math.exp(v)) if v <= 20 else v
                acc = 0.0
                for k in range(n):
                    h[k] = math.exp(dt * float(A[d, k])) * h[k] + dt * float(B[b, g, k, t]) * float(u[b, d, t])
                    acc += float(C[b, g, k, t]) * h[k]
                expect[b, d, t] = acc + float(D[d]) * float(u[b, d, t])
    assert rel_err(y, expect) < 1e-12


CASES = [
    # batch, dim, L, N, G, softplus, 3-D B/C, D, bias
    pytest.param(2, 8, 300, 16, 4, True, False, True, True, id="G4-N16-multichunk"),
    pytest.param(1, 6, 257, 5, 2, False, False, True, True, id="G2-N5-nosoftplus"),
    pytest.param(2, 4, 130, 4, 1, True, True, True, True, id="3D-BC"),
    pytest.param(1, 4, 70, 4, 1, True, False, True, True, id="G1-4D"),
    pytest.param(3, 12, 50, 3, 4, True, False, False, False, id="G4-noD-nobias"),
    pytest.param(1, 8, 129, 4, 4, True, False, False, True, id="G4-noD"),
]


@needs_numba
@pytest.mark.parametrize("batch,dim,length,n,groups,softplus,three_d,with_d,with_bias", CASES)
def test_cpu_matches_reference_fwd_and_grads(batch, dim, length, n, groups, softplus, three_d, with_d, with_bias):
    inp = make_inputs(batch, dim, length, n, groups, softplus=softplus, three_d=three_d, with_d=with_d,
                      with_bias=with_bias)
    y_ref, g_ref = run_with_grads(inp, softplus, "reference")
    y_cpu, g_cpu = run_with_grads(inp, softplus, "cpu")
    assert y_cpu.dtype == torch.float32 and y_cpu.shape == y_ref.shape
    assert rel_err(y_cpu, y_ref) <= 1e-5
    assert g_cpu.keys() == g_ref.keys()
    for k in g_ref:
        assert g_cpu[k].shape == g_ref[k].shape, k
        assert rel_err(g_cpu[k], g_ref[k]) <= 1e-5, k


@needs_numba
def test_cpu_extreme_dt_and_nan():
    """softplus pass-through above 20, near-zero dt far below, and NaN propagation (divergence stays visible)."""
    inp = make_inputs(1, 4, 40, 4, 2, seed=13)
    inp["delta_bias"] = torch.zeros(4)
    inp["delta"][0, 0, 5] = 25.0   # dt = v
    inp["delta"][0, 1, 7] = 19.5   # just under the threshold: log1p(exp(v))
    inp["delta"][0, 2, 9] = -40.0  # dt ~ 4e-18
    y_ref, g_ref = run_with_grads(inp, True, "reference")
    y_cpu, g_cpu = run_with_grads(inp, True, "cpu")
    assert rel_err(y_cpu, y_ref) <= 1e-5
    for k in g_ref:
        assert rel_err(g_cpu[k], g_ref[k]) <= 1e-5, k
    inp["delta"][0, 3, 10] = float("nan")
    for backend in ("reference", "cpu"):
        y = selective_scan(**inp, delta_softplus=True, backend=backend)
        assert torch.isnan(y[0, 3, 10:]).all(), backend
        assert torch.isfinite(y[0, :3]).all() and torch.isfinite(y[0, 3, :10]).all(), backend


@needs_numba
def test_cpu_grads_close_to_float64():
    """Tighter: the fp32 numba gradients against the float64 reference (no fp32 reference noise)."""
    inp = make_inputs(2, 8, 200, 16, 4, seed=5)
    y, g = run_with_grads(inp, True, "cpu")
    leaves = {k: v.double().requires_grad_(True) for k, v in inp.items()}
    y64 = selective_scan_reference(**leaves, delta_softplus=True, compute_dtype=torch.float64)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).double()
    g64 = dict(zip(leaves, torch.autograd.grad(y64, list(leaves.values()), gy)))
    assert rel_err(y, y64) < 2e-6
    for k in g64:
        assert rel_err(g[k], g64[k]) < 2e-6, k


@needs_numba
def test_cpu_grad_split_channels(monkeypatch):
    """dB/dC summed over several channel slices of a group (many-thread layout) equals one slice."""
    inp = make_inputs(1, 12, 150, 4, 1, seed=7)
    monkeypatch.setattr(ss, "_nsplit", lambda batch, dim, groups: 1)
    y1, g1 = run_with_grads(inp, True, "cpu")
    monkeypatch.setattr(ss, "_nsplit", lambda batch, dim, groups: 5)
    y5, g5 = run_with_grads(inp, True, "cpu")
    assert rel_err(y5, y1) < 1e-6
    for k in g1:
        assert rel_err(g5[k], g1[k]) < 1e-5, k


@needs_numba
def test_cpu_gradcheck_style_directional_derivative():
    """Finite differences of the numba forward agree with its backward along a random direction."""
    inp = make_inputs(1, 4, 40, 4, 2, seed=11)
    y, g = run_with_grads(inp, True, "cpu", seed=2)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    dirs = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(20 + i))
            for i, (k, v) in enumerate(inp.items())}
    eps = 1e-2

    def f(sign):
        moved = {k: (v.double() + sign * eps * dirs[k].double()) for k, v in inp.items()}
        out = selective_scan_reference(**moved, delta_softplus=True, compute_dtype=torch.float64)
        return (out * gy.double()).sum().item()

    numeric = (f(1) - f(-1)) / (2 * eps)
    analytic = sum((g[k].double() * dirs[k].double()).sum().item() for k in g)
    assert abs(numeric - analytic) <= 1e-3 * max(1.0, abs(numeric))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bf16_inputs(backend):
    if backend == "cpu" and not HAS_NUMBA:
        pytest.skip("numba backend unavailable")
    inp = make_inputs(2, 8, 64, 4, 4, dtype=torch.bfloat16, seed=4)
    y, g = run_with_grads(inp, True, backend)
    assert y.dtype == torch.bfloat16
    assert g["u"].dtype == torch.bfloat16 and g["B"].dtype == torch.bfloat16 and g["A"].dtype == torch.float32
    # Same bf16 inputs, float64 math: only the bf16 rounding of the output separates them.
    y64 = selective_scan_reference(**{k: v.double() for k, v in inp.items()}, delta_softplus=True,
                                   compute_dtype=torch.float64)
    assert rel_err(y, y64) < 1e-2


@needs_numba
def test_half_and_noncontiguous_inputs():
    inp = make_inputs(2, 8, 33, 4, 2, seed=9)
    ref = selective_scan(**inp, delta_softplus=True, backend="reference")
    # Non-contiguous views of the same values.
    nc = dict(inp)
    nc["u"] = inp["u"].transpose(1, 2).contiguous().transpose(1, 2)
    nc["B"] = inp["B"].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    nc["A"] = inp["A"].t().contiguous().t()
    assert not nc["u"].is_contiguous() and not nc["B"].is_contiguous()
    assert rel_err(selective_scan(**nc, delta_softplus=True, backend="cpu"), ref) < 1e-5
    y16 = selective_scan(**{k: (v.half() if k in ("u", "delta", "B", "C") else v) for k, v in inp.items()},
                         delta_softplus=True, backend="cpu")
    assert y16.dtype == torch.float16 and rel_err(y16, ref) < 5e-3


@needs_numba
def test_no_grad_and_inference_mode_save_nothing():
    inp = make_inputs(1, 4, 20, 4, 2)
    leaves = {k: v.requires_grad_(True) for k, v in inp.items()}
    with torch.no_grad():
        assert selective_scan(**leaves, delta_softplus=True, backend="cpu").grad_fn is None
    with torch.inference_mode():
        y = selective_scan(**{k: v.detach() for k, v in inp.items()}, delta_softplus=True, backend="cpu")
    assert y.grad_fn is None and torch.isfinite(y).all()


def test_a_from_log():
    a_log = torch.log(torch.arange(1, 5, dtype=torch.float64)).repeat(3, 1)
    A = a_from_log(a_log)
    assert A.dtype == torch.float32 and torch.allclose(A, -torch.arange(1, 5.0).repeat(3, 1))


# ---------------------------------------------------------------------------------------------------------------------
# Dispatch and errors
# ---------------------------------------------------------------------------------------------------------------------
@needs_numba
def test_auto_uses_numba_on_cpu(monkeypatch):
    assert resolve_backend("cpu") == "cpu"
    assert describe_backend("cpu").startswith("cpu (numba ")
    calls = []
    real = ss._scan_cpu
    monkeypatch.setattr(ss, "_scan_cpu", lambda *a: calls.append(1) or real(*a))
    selective_scan(**make_inputs(1, 4, 10, 4, 2), delta_softplus=True)
    assert calls == [1]


def test_env_var_forces_backend(monkeypatch):
    inp = make_inputs(1, 4, 10, 4, 2)
    calls = []
    real = ss.selective_scan_reference
    monkeypatch.setattr(ss, "selective_scan_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv(ss.ENV_VAR, "reference")
    assert resolve_backend("cpu") == "reference"
    assert "forced by SIGMA_SCAN_BACKEND" in describe_backend("cpu")
    selective_scan(**inp, delta_softplus=True)
    assert calls == [1]
    if HAS_NUMBA:  # the argument wins over the environment
        selective_scan(**inp, delta_softplus=True, backend="cpu")
        assert calls == [1]
        monkeypatch.setenv(ss.ENV_VAR, " CPU ")
        assert resolve_backend("cpu") == "cpu"
    monkeypatch.setenv(ss.ENV_VAR, "auto")
    assert resolve_backend("cpu") == ("cpu" if HAS_NUMBA else "reference")


def test_bad_backend_names(monkeypatch):
    inp = make_inputs(1, 4, 10, 4, 2)
    with pytest.raises(ValueError, match=r"unknown selective-scan backend 'triton'.*cuda, cpu, reference"):
        selective_scan(**inp, backend="triton")
    monkeypatch.setenv(ss.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=r"SIGMA_SCAN_BACKEND=gpu"):
        selective_scan(**inp)
    assert describe_backend("cpu").startswith("unavailable: unknown selective-scan backend 'gpu'")


@pytest.mark.skipif("cuda" in available_backends(), reason="mamba-ssm CUDA kernel present")
def test_forced_cuda_without_mamba_is_a_clear_error(monkeypatch):
    inp = make_inputs(1, 4, 10, 4, 2)
    monkeypatch.setenv(ss.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match=r"^SIGMA_SCAN_BACKEND=cuda but "):
        selective_scan(**inp)
    with pytest.raises(RuntimeError, match=r"^backend='cuda' but "):
        resolve_backend("cuda", backend="cuda")
    assert "cuda" not in available_backends()
    if ss._load_mamba()[0] is None:
        with pytest.raises(RuntimeError, match=r"mamba_ssm\.ops\.selective_scan_interface cannot be imported: "):
            selective_scan(**inp)


@needs_numba
def test_cpu_backend_rejects_other_devices(monkeypatch):
    with pytest.raises(RuntimeError, match=r"backend='cpu' but the tensors are on meta"):
        resolve_backend(torch.device("meta"), backend="cpu")
    monkeypatch.setattr(ss, "_mamba_state", (lambda *a: None, None, "test"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match=r"backend='cuda' but the tensors are on cpu"):
        selective_scan(**make_inputs(1, 4, 10, 4, 2), backend="cuda")


def test_auto_on_gpu_without_mamba_falls_back_to_reference(monkeypatch):
    monkeypatch.setattr(ss, "_mamba_state", (None, "not installed (test)", None))
    monkeypatch.setattr(ss, "_warned", set())
    with pytest.warns(RuntimeWarning, match="reference scan on the GPU"):
        assert resolve_backend("cuda") == "reference"


def test_cuda_argument_preparation_with_fake_kernel():
    """What reaches mamba-ssm's selective_scan_fn: one dtype for u/delta/B/C, fp32 A/D/bias, all contiguous."""
    inp = make_inputs(2, 8, 24, 4, 4, seed=2)
    seen = {}

    def fake_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        for k, t in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias).items():
            assert t.is_contiguous(), k
        assert u.dtype == delta.dtype == B.dtype == C.dtype
        assert A.dtype == D.dtype == delta_bias.dtype == torch.float32
        assert z is None and B.dim() == 4
        seen["dtype"] = u.dtype
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)

    nc = dict(inp)
    nc["u"] = inp["u"].transpose(1, 2).contiguous().transpose(1, 2).to(torch.bfloat16)
    nc["delta"] = inp["delta"].to(torch.bfloat16)
    nc["B"] = inp["B"].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # fp32 B with bf16 u -> fp32 all
    y = ss._scan_cuda(nc["u"], nc["delta"], nc["A"], nc["B"], nc["C"], nc["D"], nc["delta_bias"], True, fn=fake_fn)
    assert seen["dtype"] == torch.float32 and y.dtype == torch.bfloat16
    ref = selective_scan_reference(**nc, delta_softplus=True)
    assert rel_err(y, ref) < 1e-2


def _write_fake_mamba(root, init_body: str, interface_body: str) -> None:
    pkg = root / "mamba_ssm"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "utils").mkdir()
    (pkg / "__init__.py").write_text(init_body)
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "utils" / "torch.py").write_text("MARK = 1\n")
    (pkg / "ops" / "selective_scan_interface.py").write_text(interface_body)


@pytest.fixture
def fresh_mamba(monkeypatch):
    """Isolate mamba_ssm imports: our cached state and sys.modules entries are restored afterwards."""
    monkeypatch.setattr(ss, "_mamba_state", None)
    saved = {k: v for k, v in sys.modules.items() if k.startswith("mamba_ssm")}
    for k in saved:  # a real mamba-ssm imported earlier must not answer for the fake
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k.startswith("mamba_ssm")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_mamba_import_skips_a_broken_package_init(tmp_path, monkeypatch, fresh_mamba):
    """mamba_ssm/__init__.py needing a missing extra (triton, transformers) must not hide the scan kernel."""
    _write_fake_mamba(tmp_path, "__version__ = '9.9'\nimport triton_not_installed_here\n",
                      "from mamba_ssm.utils.torch import MARK\ndef selective_scan_fn(*a, **k):\n    return MARK\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn, reason, _ = ss._load_mamba()
    assert reason is None and fn() == 1
    assert "mamba_ssm" not in sys.modules  # no placeholder package left behind


def test_mamba_without_cuda_extension_explains_why(tmp_path, monkeypatch, fresh_mamba):
    _write_fake_mamba(tmp_path, "", "import selective_scan_cuda\ndef selective_scan_fn(*a):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", None)  # missing, also where a real build is installed
    fn, reason, _ = ss._load_mamba()
    assert fn is None
    assert "selective_scan_cuda" in reason and "MAMBA_KEEP_CUDA_BUILD" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match=r"^backend='cuda' but mamba_ssm\.ops\.selective_scan_interface cannot"):
        resolve_backend("cuda", backend="cuda")


def test_shape_errors():
    inp = make_inputs(1, 6, 10, 4, 3)
    with pytest.raises(ValueError, match=r"not divisible by B's group count 4"):
        selective_scan(**{**inp, "B": torch.randn(1, 4, 4, 10), "C": torch.randn(1, 4, 4, 10)})
    with pytest.raises(ValueError, match=r"A must be \(dim=6, N\)"):
        selective_scan(**{**inp, "A": torch.randn(5, 4)})
    with pytest.raises(ValueError, match=r"C must be"):
        selective_scan(**{**inp, "C": torch.randn(1, 3, 4, 11)})
    with pytest.raises(ValueError, match=r"B has 3 groups but C has 1"):
        selective_scan(**{**inp, "C": torch.randn(1, 4, 10)})
    with pytest.raises(ValueError, match=r"delta_bias must be \(dim=6,\)"):
        selective_scan(**{**inp, "delta_bias": torch.randn(5)})


# ---------------------------------------------------------------------------------------------------------------------
# Threads and processes
# ---------------------------------------------------------------------------------------------------------------------
def _child_scan(queue):
    inp = make_inputs(1, 4, 50, 4, 2)
    y = selective_scan(**inp, delta_softplus=True, backend="cpu")
    queue.put(float(y.double().abs().sum()))


@needs_numba
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_can_scan_after_parent():
    """GNU-OpenMP numba aborts forked children; our workqueue layer must not (DataLoader workers fork)."""
    inp = make_inputs(1, 4, 50, 4, 2)
    expect = float(selective_scan(**inp, delta_softplus=True, backend="cpu").double().abs().sum())
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_scan, args=(queue,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(expect, rel=1e-6)


@needs_numba
def test_concurrent_calls_from_threads():
    inps = [make_inputs(1, 8, 60, 4, 4, seed=s) for s in range(4)]
    expect = [selective_scan(**i, delta_softplus=True, backend="cpu") for i in inps]
    results, errors = [None] * 4, []

    def work(k):
        try:
            for _ in range(5):
                results[k] = selective_scan(**inps[k], delta_softplus=True, backend="cpu")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r, e in zip(results, expect):
        assert torch.equal(r, e)


@needs_numba
@pytest.mark.parametrize("batch, groups, dim, length, n", [(2, 2, 12, 300, 16), (1, 1, 8, 257, 4), (1, 2, 5, 128, 4)])
def test_cpu_directions_read_reversed_in_place_bitwise_as_flipped_copies(batch, groups, dim, length, n):
    """scan_directions_cpu (the numba kernel reading reversed directions backwards, chunk by chunk) gives bitwise
    the sums of scanning materialised flipped copies, the generic path it replaces; lengths off the 128-step chunk
    exercise a partial chunk at each end."""
    g = torch.Generator().manual_seed(batch * 100 + length)
    k = 2 * groups
    u = torch.randn(batch, groups, dim, length, generator=g)
    delta = 0.5 * torch.randn(batch, k, dim, length, generator=g)
    A = -torch.rand(k * dim, n, generator=g) * 4 - 0.1
    B, C = (torch.randn(batch, k, n, length, generator=g) for _ in range(2))
    D, bias = torch.randn(k * dim, generator=g), torch.randn(k * dim, generator=g) * 0.5 - 2.0
    with torch.no_grad():
        got = ss.scan_directions_cpu(u, delta, A, B.transpose(-1, -2).contiguous().transpose(-1, -2), C, D, bias)
        flip = [torch.cat([t[:, :groups], t[:, groups:].flip(-1)], 1) for t in (delta, B, C)]
        ys = selective_scan(torch.cat([u, u.flip(-1)], 1).reshape(batch, k * dim, length),
                            flip[0].reshape(batch, k * dim, length), A, flip[1], flip[2], D, delta_bias=bias,
                            delta_softplus=True, backend="cpu").view(batch, k, dim, length)
        want = ys[:, :groups] + ys[:, groups:].flip(-1)
    assert got.shape == (batch, groups, dim, length)
    assert torch.equal(got, want)


@needs_numba
def test_cpu_directions_in_place_refuse_gradients():
    u = torch.randn(1, 1, 4, 20, requires_grad=True)
    args = (torch.randn(1, 2, 4, 20), -torch.ones(8, 4), torch.randn(1, 2, 4, 20), torch.randn(1, 2, 4, 20),
            torch.ones(8), torch.zeros(8))
    with pytest.raises(RuntimeError, match="inference"):
        ss.scan_directions_cpu(u, *args)
