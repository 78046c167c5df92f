"""The fused multi-direction Triton scan (GPU fast path): on a GPU where there is one, else through Triton's CPU
interpreter (conftest turns it on where there is no GPU).

The interpreter executes the same kernel source program by program, so indexing, masking, reversal, the segment
passes, the state carry and the two-addend accumulation are all checked without a GPU. Speed is measured on the GPU
machine (bench/bench_gpu_scan.py, bench/bench_gpu_inference.py, bench/RESULTS.md).
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from sigma_ros.model.sigma import (  # noqa: E402
    SS2D, ConcatMambaFusion, CrossMambaFusion, fused_norms, fused_scans, scan_directions)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel(triton_ops):
    """ops.triton_scan, its kernels compiled for the GPU or run by Triton's interpreter on the CPU."""
    return triton_ops("triton_scan")


def _inputs(g, batch, groups, bidirectional, dim, seq_len, d_state, dt_rank=3, dtype=torch.float32):
    k = 2 * groups if bidirectional else groups
    u = torch.randn(batch, groups, dim, seq_len, generator=g)
    delta = (0.5 * torch.randn(batch, k, dim, seq_len, generator=g)).to(dtype)
    a = -(0.1 + 2 * torch.rand(k * dim, d_state, generator=g))
    x_dbl = torch.randn(batch, k, dt_rank + 2 * d_state, seq_len, generator=g).to(dtype)
    b, c = x_dbl[:, :, dt_rank:dt_rank + d_state], x_dbl[:, :, dt_rank + d_state:]  # strided views, as the model's
    out = u, delta, a, b, c, torch.randn(k * dim, generator=g), 0.3 * torch.randn(k * dim, generator=g)
    return tuple(t.to(DEVICE) for t in out)


@pytest.mark.parametrize("groups,bidirectional,dim,seq_len,d_state,config", [
    (2, True, 6, 37, 16, (4, 3, 1, 2)),  # SS2D: 2 base orders x forwards/reversed; ragged D block, 3 segments
    (1, True, 5, 50, 4, (2, 7, 1, 1)),  # ConMB: one sequence forwards + reversed
    (1, False, 3, 20, 4, (4, 1, 1, 2)),  # CroMB: one direction, plain store, one segment
    (1, True, 4, 29, 4, (4, 2, 1, 4)),   # four steps in flight, the last group partly past the end
    (2, True, 4, 9, 8, None),            # a 9-step sequence, default config
    (1, True, 3, 70, 4, (2, 23, 1, 2)),  # 23 segments: the fold walks several groups of summaries
])
def test_fused_scan_equals_flipped_copies(kernel, groups, bidirectional, dim, seq_len, d_state, config):
    g = torch.Generator().manual_seed(seq_len)
    args = _inputs(g, 2, groups, bidirectional, dim, seq_len, d_state)
    fused = kernel.scan_directions(*args, bidirectional, config=config)
    unfused = scan_directions(*args, bidirectional)  # cat/flip copies + the reference recurrence
    assert fused.shape == unfused.shape == (2, groups, dim, seq_len) and fused.dtype == torch.float32
    assert torch.isfinite(fused).all()
    assert ((fused - unfused).norm() / unfused.norm()).item() < 1e-5


def test_fused_scan_reads_channels_last_inputs(kernel):
    """Strides are free: (batch, L, dim) storage viewed as (batch, dim, L) gives the same result."""
    g = torch.Generator().manual_seed(5)
    args = _inputs(g, 1, 2, True, 6, 30, 4)
    last = [t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() == 4 else t for t in args]
    assert last[0].stride(-1) != 1 and last[3].stride(-1) != 1
    expected = kernel.scan_directions(*args, True, config=(4, 3, 1, 1))
    assert torch.equal(kernel.scan_directions(*last, True, config=(4, 3, 1, 1)), expected)
    stored_last = kernel.scan_directions(*last, True, channels_last=True, config=(4, 3, 1, 1))
    assert stored_last.stride(-2) == 1 and torch.equal(stored_last, expected)


@pytest.mark.parametrize("batch,height,width,dim", [(2, 3, 5, 4), (1, 13, 37, 2)])
def test_fused_scan_reads_column_order_in_place(kernel, batch, height, width, dim):
    """map_height: the second base sequence is the column-major order of the first's (H, W) map, read (and written)
    at row-major positions of the same tensors; equal to scanning explicit column-order copies. The kernel finds a
    position's column by a float32 division: the larger map checks it over some five hundred positions."""
    g = torch.Generator().manual_seed(6)
    n = 4
    seq_len = height * width
    x = torch.randn(batch, seq_len, dim, generator=g)  # row-major tokens
    dt = 0.5 * torch.randn(batch, seq_len, 4, dim, generator=g)  # per direction, at row-major positions
    bc = torch.randn(batch, seq_len, 4, 2 * n, generator=g)
    a = -(0.1 + 2 * torch.rand(4 * dim, n, generator=g))
    d, bias = torch.randn(4 * dim, generator=g), 0.3 * torch.randn(4 * dim, generator=g)

    def column_order(t):  # (batch, L, ...) row-major -> column-major
        return t.view(batch, height, width, *t.shape[2:]).transpose(1, 2).reshape(t.shape)

    def per_direction(t):  # directions 1 and 3 scan the column order
        return torch.stack([(column_order(t) if k % 2 else t)[:, :, k] for k in range(4)], 1).transpose(-1, -2)

    u_copies = torch.stack([x, column_order(x)], 1).transpose(-1, -2)
    bc_copies = per_direction(bc)
    expected = scan_directions(u_copies, per_direction(dt), a, bc_copies[:, :, :n], bc_copies[:, :, n:], d, bias, True)
    expected_cols = expected[:, 1].transpose(1, 2).reshape(batch, width, height, dim).transpose(1, 2) \
        .reshape(batch, seq_len, dim)  # back to row-major positions

    u = x.transpose(1, 2)[:, None].expand(batch, 2, dim, seq_len)  # one tensor, both orders
    dt_in, bc_in = dt.permute(0, 2, 3, 1), bc.permute(0, 2, 3, 1)
    args = [t.to(DEVICE) for t in (u, dt_in, a, bc_in[:, :, :n], bc_in[:, :, n:], d, bias)]
    for config in ((2, 3, 1, 2), (4, 1, 1, 1)):
        y = kernel.scan_directions(*args, True, channels_last=True, map_height=height, config=config).cpu()
        assert (y[:, 0] - expected[:, 0]).abs().max().item() < 1e-5
        assert (y[:, 1].transpose(1, 2) - expected_cols).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match=f"map_height={height + 1}"):  # not a whole map
        kernel.scan_directions(*args, True, map_height=height + 1)


def test_first_pass_zeroes_the_outputs_twin_directions_add_onto(kernel, monkeypatch):
    """With segments, no fill runs before the kernel: its first pass zeroes what the second adds twins onto. NaN
    in every output buffer the kernel is to zero itself leaves the results unchanged: SS2D's column twins over
    three segments and a short last one, ConMB's reversed twin over seven."""
    original = kernel._output

    def poisoned(u, zeroed, channels_last, groups=0):
        y = original(u, zeroed, channels_last, groups)
        return y if zeroed else y.fill_(float("nan"))

    monkeypatch.setattr(kernel, "_output", poisoned)
    test_fused_scan_reads_column_order_in_place(kernel, 1, 13, 37, 2)
    test_fused_scan_equals_flipped_copies(kernel, 1, True, 5, 50, 4, (2, 7, 1, 1))


@pytest.mark.parametrize("groups,map_height,seq_len,config", [
    (2, 3, 15, (4, 3, 1, 2)),   # SS2D: row and column orders of a 3 x 5 map, each with its reversed twin; 3 segments
    (1, 0, 50, (2, 7, 1, 1)),   # ConMB: one sequence and its reversed twin, 7 segments
    (1, 0, 20, (4, 1, 1, 2)),   # one segment: no first pass, and nothing to zero
])
def test_twins_apart_add_up_to_the_summed_result_bitwise(kernel, monkeypatch, groups, map_height, seq_len, config):
    """twins_apart: each direction's own output, map G + g the reversed twin of map g, with plain stores where the
    summed result takes atomic adds onto zeros. Their sum is bitwise the summed result; the buffer is poisoned
    with NaN first, so every element must be written and none relies on a zeroing pass."""
    g = torch.Generator().manual_seed(11)
    u, delta, a, b, c, d, bias = _inputs(g, 2, groups, True, 5, seq_len, 4)
    if map_height:  # one row-major tensor serves both orders
        u = u[:, :1].expand(-1, 2, -1, -1)
    summed = kernel.scan_directions(u, delta, a, b, c, d, bias, True, map_height=map_height, config=config)
    original = kernel._output
    monkeypatch.setattr(kernel, "_output", lambda *args: original(*args).fill_(float("nan")))
    apart = kernel.scan_directions(u, delta, a, b, c, d, bias, True, map_height=map_height, config=config,
                                   twins_apart=True)
    assert apart.shape == (2, 2 * groups, 5, seq_len)
    assert torch.equal(apart[:, :groups] + apart[:, groups:], summed)
    one_way = kernel.scan_directions(u[:, :1], delta[:, :1], a[:5], b[:, :1], c[:, :1], d[:5], bias[:5], False,
                                     config=config, twins_apart=True)  # no twins: the plain result
    assert one_way.shape == (2, 1, 5, seq_len) and torch.isfinite(one_way).all()
    with pytest.raises(ValueError, match="twins_apart is for inference"):
        kernel.scan_directions(u, delta, a, b, c, d, bias, True, twins_apart=True, summaries=True)


def test_fused_scan_takes_half_precision_inputs(kernel):
    g = torch.Generator().manual_seed(1)
    args = _inputs(g, 1, 2, True, 4, 40, 16, dtype=torch.bfloat16)
    u = args[0].to(torch.bfloat16)
    fused = kernel.scan_directions(u, *args[1:], True, config=(2, 4, 1, 2))
    unfused = scan_directions(u.float(), *(t.float() for t in args[1:]), True)
    assert ((fused - unfused).norm() / unfused.norm()).item() < 1e-5  # same bf16 values, fp32 math


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_scan_reads_states_in_pairs_where_aligned(kernel, dtype):
    """B and C load as pairs of adjacent states split by bit operations where their rows allow it (an even
    offset into the projection, as the model lays it out), else as even and odd states apart; both read the
    same values. A state order mixed up between the two halves, or a pair split the wrong way round, would
    give a different result."""
    results = {}
    for dt_rank in (4, 3):  # B and C start 4 or 3 elements into each position's row
        g = torch.Generator().manual_seed(8)
        u, delta, a, _, _, d, bias = _inputs(g, 1, 1, True, 5, 24, 8)
        rows = torch.randn(1, 24, 2, dt_rank + 16, generator=g).to(dtype).to(DEVICE)  # (batch, L, K, R + 2N)
        b, c = rows[..., dt_rank:dt_rank + 8].permute(0, 2, 3, 1), rows[..., dt_rank + 8:].permute(0, 2, 3, 1)
        a = a * torch.linspace(0.2, 3.0, 8, device=DEVICE)  # states that differ from each other
        split = kernel.state_loads(b, c)["SPLIT"]
        assert split == (1 if dt_rank == 4 else 2)
        results[split] = kernel.scan_directions(u.to(dtype), delta.to(dtype), a, b, c, d, bias, True,
                                                config=(4, 3, 1, 2))
        unfused = scan_directions(u.to(dtype).float(), delta.to(dtype).float(), a, b.float(), c.float(), d, bias,
                                  True)
        assert ((results[split] - unfused).norm() / unfused.norm()).item() < 1e-5
    assert kernel.state_loads(b.float(), c)["SPLIT"] == 2  # mixed types: apart


def test_fused_scan_takes_step_sizes_as_they_come_without_a_bias(kernel):
    """delta_bias=None: delta is already softplus(dt + bias) (ops.triton_delta), and the kernel adds and takes
    nothing; the summary pass's summed dt and the reversed twins see the same step sizes."""
    g = torch.Generator().manual_seed(6)
    u, delta, a, b, c, d, bias = _inputs(g, 2, 2, True, 5, 33, 4)
    steps = torch.nn.functional.softplus(delta + bias.view(1, 4, 5, 1))
    with_bias = kernel.scan_directions(u, delta, a, b, c, d, bias, True, config=(4, 3, 1, 2))
    without = kernel.scan_directions(u, steps, a, b, c, d, None, True, config=(4, 3, 1, 2))
    assert ((without - with_bias).norm() / with_bias.norm()).item() < 1e-6


@pytest.mark.parametrize("low,high", [(-12, -3), (-3, 20), (20, 24)])
def test_fused_scan_softplus_for_half_inputs_holds_over_its_whole_range(kernel, low, high):
    """16-bit inputs take an approximate softplus: log1p's series at or below -3, the MUFU logarithm above, the
    identity above 20. With D = 0 the output is the scan alone, which for small dt scales with dt: each range must
    give fp32 math's result."""
    g = torch.Generator().manual_seed(11)
    u, _, a, b, c, d, bias = _inputs(g, 1, 1, True, 8, 64, 4, dtype=torch.bfloat16)
    delta = (low + (high - low) * torch.rand(1, 2, 8, 64, generator=g)).to(torch.bfloat16).to(DEVICE)
    u, d, bias = u.to(torch.bfloat16), torch.zeros_like(d), torch.zeros_like(bias)
    fused = kernel.scan_directions(u, delta, a, b, c, d, bias, True, config=(4, 3, 1, 2))
    unfused = scan_directions(u.float(), delta.float(), a, b.float(), c.float(), d, bias, True)
    assert ((fused - unfused).norm() / unfused.norm()).item() < 1e-5


def test_fused_scan_rejects_mismatched_shapes(kernel):
    g = torch.Generator().manual_seed(2)
    u, delta, a, b, c, d, bias = _inputs(g, 1, 2, True, 4, 16, 4)
    with pytest.raises(ValueError, match="4 directions for 2 sequences"):
        kernel.scan_directions(u, delta, a, b, c, d, bias, False)
    with pytest.raises(ValueError, match="shape mismatch"):
        kernel.scan_directions(u, delta[..., :8], a, b, c, d, bias, True)


def test_fused_scan_custom_op_fake_matches(kernel):
    g = torch.Generator().manual_seed(3)
    args = _inputs(g, 1, 1, True, 4, 24, 4)
    for channels_last in (False, True):
        for twins_apart in (False, True):
            torch.library.opcheck(kernel.scan_directions_op, (*args, True, channels_last, 0, twins_apart),
                                  test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("block,d_state", [("ss2d", 4), ("cromb", 4), ("conmb", 4), ("ss2d", 3)])
def test_blocks_with_fused_scans_match_unfused(kernel, block, d_state):
    """Each block type that scans gives the same output through the fused kernels (SS2D: 4 directions of 2 base
    orders, merged by the fused norm with its gate; CroMB: C exchanged, one direction; ConMB: concatenated sequence
    forwards + reversed); a state size the
    kernel does not take (3) must fall back to the unfused path instead of failing. The interpreter
    is slow per element, so the blocks are tiny; the whole network is compared on the GPU by the benchmark."""
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    rgb, x = torch.randn(2, 6, 5, 16, generator=g), torch.randn(2, 6, 5, 16, generator=g)
    if block == "ss2d":
        module, args = SS2D(16, d_state=d_state, ssm_ratio=1.0), (rgb,)
    elif block == "cromb":
        module, args = CrossMambaFusion(16, d_state=d_state, ssm_ratio=1.0), (rgb, x)
    else:
        module, args = ConcatMambaFusion(16, d_state=d_state, ssm_ratio=1.0), (rgb, x)
    module, args = module.to(DEVICE), tuple(t.to(DEVICE) for t in args)
    with torch.no_grad():
        reference = module(*args)
        with fused_scans(), fused_norms():
            fused = module(*args)
    for r, f in zip(*(o if isinstance(o, tuple) else (o,) for o in (reference, fused))):
        assert (f - r).abs().max().item() < 1e-5
    with fused_scans():  # with gradients required the forward-only kernel steps aside
        trained = module(*args)
    trained = trained[0] if isinstance(trained, tuple) else trained
    assert trained.requires_grad


def test_inference_copy_freezes_constants_and_casts_matmul_weights(kernel):
    """The fast path's private copy: same outputs as the model it copies (fp32), its matmul weights in the compute
    dtype while norms and scan parameters stay float32, and the caller's model untouched."""
    from sigma_ros.model.fast import inference_copy

    torch.manual_seed(7)
    module = torch.nn.Sequential(SS2D(16, d_state=4, ssm_ratio=1.0), ConcatMambaFusion(16, d_state=4, ssm_ratio=1.0))
    module = module.to(DEVICE).eval()
    x = torch.randn(1, 4, 6, 16, device=DEVICE)
    frozen = inference_copy(module, torch.float32)
    assert frozen[0]._frozen is not None and module[0]._frozen is None
    with torch.no_grad(), fused_scans(), fused_norms():
        assert (frozen[0](x) - module[0](x)).abs().max().item() < 1e-5
        assert (frozen[1](x, x) - module[1](x, x)).abs().max().item() < 1e-5
    half = inference_copy(module, torch.bfloat16)
    assert half[0].in_proj.weight.dtype == half[0].conv2d.bias.dtype == half[0]._frozen[0].dtype == torch.bfloat16
    assert half[0].out_norm.weight.dtype == half[0].A_logs.dtype == half[0]._frozen[2].dtype == torch.float32
    assert module[0].in_proj.weight.dtype == torch.float32


def test_forcing_a_scan_backend_turns_the_fused_scan_off(monkeypatch):
    """SIGMA_SCAN_BACKEND is the one switch for scan kernels: forcing a backend keeps the fast path off Triton."""
    from sigma_ros.model.fast import use_fused_scans

    for env, expected in (("cpu", False), ("cuda", False), ("auto", True), ("", True)):
        monkeypatch.setenv("SIGMA_SCAN_BACKEND", env)
        assert use_fused_scans() is expected, env


def test_segmenter_reports_the_scan_kernel_inference_uses(monkeypatch, micro_checkpoint):
    """Diagnostics name the fused kernel when the GPU fast path will use it, and the plain backend otherwise."""
    from sigma_ros.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(micro_checkpoint, device="cpu")
    assert "fused" not in seg.describe()["scan_backend"]  # CPU: no fast path
    seg.fast = True  # as on a GPU
    monkeypatch.setenv("SIGMA_SCAN_BACKEND", "auto")
    assert seg.describe()["scan_backend"].startswith("fused Triton kernel")
    monkeypatch.setenv("SIGMA_SCAN_BACKEND", "reference")
    assert "fused" not in seg.describe()["scan_backend"]


def test_fast_path_falls_back_when_the_fused_scan_fails(caplog):
    """A fused kernel that cannot run (say, a Triton too old for it) must cost speed, not the node."""
    import sigma_ros.model.sigma as sigma_module
    from sigma_ros.model.fast import build_fast_forward

    class NeedsUnfused(torch.nn.Module):
        def forward(self, rgb, x):
            if sigma_module._fused_scans:
                raise RuntimeError("triton: unsupported")
            return rgb + x

    forward = build_fast_forward(NeedsUnfused(), torch.float32, fused_scan=True)
    with caplog.at_level("WARNING"):
        out = forward(torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4))  # no CUDA here: graphs fail, eager serves
    assert torch.equal(out, torch.full((1, 3, 4, 4), 2.0))
    assert "fused Triton scan failed" in caplog.text
