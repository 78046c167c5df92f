"""The backward of the fused Triton scan (training with ``triton_scans``): on a GPU where there is one, else through
Triton's CPU interpreter. Every gradient is compared with autograd through the unfused path (flipped copies and the
selective-scan backend's own backward), over the cases that exercise the segment summaries, their fold, the
chunked recomputation, ragged channel blocks, reversed and column-order directions and half-precision inputs."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from sigma_ros.model.sigma import scan_directions, triton_training_scans  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


@pytest.fixture(scope="module")
def kernel(triton_ops):
    return triton_ops("triton_scan")


@pytest.fixture(scope="module")
def backward(triton_ops):
    return triton_ops("triton_scan_backward")


def _inputs(g, batch, groups, bidirectional, dim, seq_len, d_state, dt_rank=3, dtype=torch.float32):
    k = 2 * groups if bidirectional else groups
    u = torch.randn(batch, groups, dim, seq_len, generator=g).to(dtype)
    delta = (0.5 * torch.randn(batch, k, dim, seq_len, generator=g)).to(dtype)
    a = -(0.1 + 2 * torch.rand(k * dim, d_state, generator=g))
    x_dbl = torch.randn(batch, k, dt_rank + 2 * d_state, seq_len, generator=g).to(dtype)
    b, c = x_dbl[:, :, dt_rank:dt_rank + d_state], x_dbl[:, :, dt_rank + d_state:]  # strided views, as the model's
    out = u, delta, a, b, c, torch.randn(k * dim, generator=g), 0.3 * torch.randn(k * dim, generator=g)
    return [t.to(DEVICE) for t in out]


def _reference_grads(args, bidirectional, gy):
    """Autograd through the unfused path, in float32."""
    leaves = [t.detach().float().requires_grad_(True) for t in args]
    scan_directions(*leaves, bidirectional).backward(gy)
    return [t.grad for t in leaves]


def _relative_errors(grads, expected):
    return {name: ((g.float() - e).norm() / e.norm()).item() for name, g, e in zip(NAMES, grads, expected)}


@pytest.mark.parametrize("groups,bidirectional,dim,seq_len,d_state,config", [
    (1, False, 3, 20, 4, (4, 8, 4, 3)),     # CroMB: one direction; 3 segments of 2 chunks, 3 programs
    (2, True, 6, 37, 16, (4, 12, 4, 5)),    # SS2D: ragged last segment and chunk, du from two directions
    (1, True, 5, 50, 4, (2, 16, 8, 2)),     # ConMB: forwards + reversed; 4 segments
    (2, True, 40, 33, 4, (32, 16, 8, 7)),   # two channel blocks, the second ragged
    (1, True, 4, 9, 8, None),               # default configs: 32 channels a warp at d_state 8 and 16,
    (1, True, 20, 30, 16, None),
    (1, True, 70, 25, 4, None),             # and at d_state 4
    (1, True, 70, 25, 4, (64, 16, 8, 3)),   # 64 channels a warp (two a lane) at d_state 4
    (1, True, 20, 30, 16, (16, 8, 4, 3)),   # 16 channels a warp: two lanes a channel, 8 states each
])
def test_backward_matches_autograd_of_flipped_copies(backward, groups, bidirectional, dim, seq_len, d_state,
                                                     config):
    g = torch.Generator().manual_seed(seq_len)
    args = _inputs(g, 2, groups, bidirectional, dim, seq_len, d_state)
    gy = torch.randn(2, groups, dim, seq_len, generator=g).to(DEVICE)
    grads = backward.scan_directions_backward(gy, *args, bidirectional, config=config)
    for grad, t in zip(grads, args):
        assert grad.shape == t.shape and grad.dtype == t.dtype and torch.isfinite(grad).all()
    errors = _relative_errors(grads, _reference_grads(args, bidirectional, gy))
    assert max(errors.values()) < 1e-5, errors


def test_backward_reads_the_column_order_in_place(backward):
    """map_height: gradients for the row-major token tensor of an (H, W) map scanned in both orders equal those
    through explicit column-order copies (as the forward's test)."""
    g = torch.Generator().manual_seed(6)
    batch, height, width, dim, n = 2, 3, 5, 4, 4
    seq_len = height * width
    x = torch.randn(batch, seq_len, dim, generator=g)
    dt = 0.5 * torch.randn(batch, seq_len, 4, dim, generator=g)
    bc = torch.randn(batch, seq_len, 4, 2 * n, generator=g)
    a = -(0.1 + 2 * torch.rand(4 * dim, n, generator=g))
    d, bias = torch.randn(4 * dim, generator=g), 0.3 * torch.randn(4 * dim, generator=g)
    gy_rows = torch.randn(batch, 2, seq_len, dim, generator=g)  # output gradient at row-major positions

    def column_order(t):
        return t.view(batch, height, width, *t.shape[2:]).transpose(1, 2).reshape(t.shape)

    def per_direction(t):
        return torch.stack([(column_order(t) if k % 2 else t)[:, :, k] for k in range(4)], 1).transpose(-1, -2)

    leaves = [t.clone().requires_grad_(True) for t in (x, dt, a, bc, d, bias)]
    lx, ldt, la, lbc, ld, lbias = leaves
    u_copies = torch.stack([lx, column_order(lx)], 1).transpose(-1, -2)
    bc_copies = per_direction(lbc)
    y = scan_directions(u_copies, per_direction(ldt), la, bc_copies[:, :, :n], bc_copies[:, :, n:], ld, lbias, True)
    gy_copies = torch.stack([gy_rows[:, 0], column_order(gy_rows[:, 1])], 1).transpose(-1, -2)
    y.backward(gy_copies)

    u = x.transpose(1, 2)[:, None].expand(batch, 2, dim, seq_len)
    dt_in, bc_in = dt.permute(0, 2, 3, 1), bc.permute(0, 2, 3, 1)
    args = [t.to(DEVICE) for t in (u, dt_in, a, bc_in[:, :, :n], bc_in[:, :, n:], d, bias)]
    gy = gy_rows.transpose(-1, -2).to(DEVICE)
    du, ddt, da, db, dc, dd, dbias = (t.cpu() for t in backward.scan_directions_backward(
        gy, *args, True, map_height=height, config=(2, 8, 4, 3)))
    dbc = torch.cat([db, dc], 2).permute(0, 3, 1, 2)  # back to (batch, L, K, 2N)
    for got, want in ((du.sum(1).transpose(1, 2), lx.grad), (ddt.permute(0, 3, 1, 2), ldt.grad), (da, la.grad),
                      (dbc, lbc.grad), (dd, ld.grad), (dbias, lbias.grad)):
        assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_backward_takes_half_precision_inputs(backward):
    """bf16 inputs (fp32 state and sums): gradients as fp32 math gives on the same bf16 values, up to the
    approximate softplus and the bf16 rounding of ddelta."""
    g = torch.Generator().manual_seed(8)
    args = _inputs(g, 1, 2, True, 6, 40, 16, dtype=torch.bfloat16)
    gy = torch.randn(1, 2, 6, 40, generator=g).to(DEVICE)
    grads = backward.scan_directions_backward(gy, *args, True, config=(4, 16, 4, 3))
    assert [t.dtype for t in grads] == [t.dtype for t in args]
    errors = _relative_errors(grads, _reference_grads(args, True, gy))
    assert max(errors.values()) < 1e-2, errors


def test_scan_op_trains_through_autograd_and_its_fake_matches(kernel):
    """``scan_directions_op`` has a registered backward: gradients reach every input, and its schema, fake
    tensors and autograd registration pass torch.library.opcheck (which also runs it under AOT autograd)."""
    g = torch.Generator().manual_seed(9)
    args = _inputs(g, 1, 2, True, 5, 24, 4)
    leaves = [t.detach().clone().requires_grad_(True) for t in args]
    y = kernel.scan_directions_op(*leaves, True)
    gy = torch.randn_like(y)
    y.backward(gy)
    errors = _relative_errors([t.grad for t in leaves], _reference_grads(args, True, gy))
    assert max(errors.values()) < 1e-5, errors
    torch.library.opcheck(kernel.scan_directions_op, (*leaves, True, False))
    with pytest.raises(ValueError, match="twins_apart is for inference"):  # its twins' gradients would differ
        kernel.scan_directions_op(*leaves, True, False, 0, True)


@pytest.mark.parametrize("a_transposed", [False, True])
def test_backward_op_gives_da_the_layout_of_a(backward, a_transposed):
    """dA comes back laid out as A: stored transposed when A is (the model's A, which the kernels read (N, K*D);
    then no copy), contiguous otherwise; its fake tensors agree (opcheck)."""
    g = torch.Generator().manual_seed(11)
    u, delta, a, b, c, d, bias = _inputs(g, 1, 2, True, 5, 24, 4)
    if a_transposed:
        a = a.t().contiguous().t()
    gy = torch.randn(1, 2, 5, 24, generator=g).to(DEVICE)
    args = (gy, u, delta, a, b, c, d, bias, True, 0)
    da = backward.scan_directions_backward_op(*args)[2]
    assert da.stride() == a.stride() and da.t().is_contiguous() == a_transposed
    torch.library.opcheck(backward.scan_directions_backward_op, args)


@pytest.mark.parametrize("seq_len", [24, 140])  # one segment; three of 64 steps (cut as the backward cuts them)
def test_training_op_hands_its_summaries_to_the_backward(kernel, backward, monkeypatch, seq_len):
    """``scan_directions_train_op`` keeps its first pass's segment summaries for the backward, which then skips that
    pass: the forward kernel runs twice forwards and not again backwards, with the gradients of autograd through
    flipped copies. Its schema, fake tensors and autograd registration pass torch.library.opcheck."""
    g = torch.Generator().manual_seed(seq_len)
    args = _inputs(g, 1, 2, True, 5, seq_len, 4)
    leaves = [t.detach().clone().requires_grad_(True) for t in args]
    launches = []
    real = kernel._scan_directions_kernel
    monkeypatch.setattr(kernel, "_scan_directions_kernel", type("Spy", (), {
        "__getitem__": lambda self, grid: launches.append(grid) or real[grid]})())
    y = kernel.scan_directions_train(*leaves, True)
    forward_launches = len(launches)
    segments = launches[0][2]
    gy = torch.randn_like(y)
    y.backward(gy)
    assert forward_launches == 2 and len(launches) == 2  # both forward passes; none in the backward
    assert (segments > 1) == (seq_len > 64)
    errors = _relative_errors([t.grad for t in leaves], _reference_grads(args, True, gy))
    assert max(errors.values()) < 1e-5, errors
    if segments == 1:  # (opcheck runs the op many times: once is enough)
        monkeypatch.undo()
        torch.library.opcheck(kernel.scan_directions_train_op, (*leaves, True, False))


def test_model_trains_with_triton_scans(kernel, backward, monkeypatch):
    """``triton_training_scans`` routes a block's scans, with gradients, to the Triton kernel and its backward:
    the same loss and parameter gradients as the selective-scan backend on flipped copies."""
    from sigma_ros.model.sigma import ConcatMambaFusion, SS2D

    calls = []
    for module, name in ((kernel, "scan_directions"), (backward, "scan_directions_backward")):
        monkeypatch.setattr(module, name, lambda *a, _f=getattr(module, name), _n=name, **k: calls.append(_n)
                            or _f(*a, **k))

    torch.manual_seed(3)
    modules = torch.nn.ModuleList([SS2D(16, d_state=4, ssm_ratio=1.0), ConcatMambaFusion(16, d_state=4,
                                                                                           ssm_ratio=1.0)]).to(DEVICE)
    x = torch.randn(2, 4, 6, 16, device=DEVICE)

    def grads(triton_scans):
        modules.zero_grad()
        with triton_training_scans(triton_scans):
            loss = modules[0](x).square().mean() + modules[1](x, x.flip(1)).square().mean()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in modules.named_parameters() if p.grad is not None}

    loss_ref, ref = grads(False)
    assert not calls
    loss, got = grads(True)
    assert calls == ["scan_directions"] * 2 + ["scan_directions_backward"] * 2
    assert abs(loss - loss_ref) < 1e-5 * abs(loss_ref)
    assert got.keys() == ref.keys() and len(got) > 10
    for name in ref:
        assert ((got[name] - ref[name]).norm() / ref[name].norm()).item() < 1e-4, name


def test_training_scan_recomputes_delta_instead_of_saving_it(kernel, backward):
    """An SS2D block training with Triton scans keeps no (B, K, D, L) delta for its backward, eagerly or under
    torch.compile (whose partitioner decides what the compiled forward keeps): the backward recomputes it from the
    x projection's dt rows, which the scan keeps anyway (test_model_trains_with_triton_scans checks gradients)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from sigma_ros.model.sigma import SS2D

    torch.manual_seed(6)
    block = SS2D(16, d_state=4, ssm_ratio=1.0).to(DEVICE)
    x = torch.randn(1, 4, 6, 16, device=DEVICE)
    delta_shape = (1, block.K, block.d_inner, 24)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with triton_training_scans(True):
            block(x).square().mean().backward()
    assert saved and not [t for t in saved if t.untyped_storage().nbytes() == 4 * 24 * block.K * block.d_inner]

    kept = []  # the shapes of the compiled forward's outputs: the block's own and what the backward gets

    def forward_compiler(gm, _):
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        kept.extend(tuple(n.meta["val"].shape) for n in outputs if isinstance(n, torch.fx.Node))
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=forward_compiler, partition_fn=min_cut_rematerialization_partition)
    torch._dynamo.reset()
    with triton_training_scans(True):
        torch.compile(block, backend=backend, fullgraph=True)(x).square().mean().backward()
    assert len(kept) > 5 and delta_shape not in kept, kept

    g = torch.Generator().manual_seed(2)  # the op's schema, fake tensors and autograd registration
    args = [torch.randn(1, 1, 5, 24, generator=g), torch.randn(24, 6, generator=g),
            0.3 * torch.randn(10, 6, generator=g), -(0.1 + torch.rand(10, 4, generator=g)),
            torch.randn(1, 2, 4, 24, generator=g),
            torch.randn(1, 2, 4, 24, generator=g), torch.randn(10, generator=g), torch.randn(10, generator=g)]
    torch.library.opcheck(backward.scan_directions_train_projected_op,
                          (*(t.to(DEVICE).requires_grad_(True) for t in args), True, 0))


def test_checkpointed_block_trains_with_triton_scans(kernel, backward):
    """The trainer's activation checkpointing (non-reentrant; the recomputation carries the scan switches) reruns
    the Triton scan in the backward and unpacks its saved tensors once: the gradients of the plain block."""
    from sigma_ros.model.sigma import SS2D
    from sigma_ros.training.step import enable_activation_checkpointing

    torch.manual_seed(4)
    plain = SS2D(16, d_state=4, ssm_ratio=1.0).to(DEVICE)
    checkpointed = torch.nn.Sequential(SS2D(16, d_state=4, ssm_ratio=1.0)).to(DEVICE)
    checkpointed.load_state_dict({f"0.{k}": v for k, v in plain.state_dict().items()})
    assert enable_activation_checkpointing(checkpointed, "all", block_names=("SS2D",)) == 1
    x = torch.randn(1, 4, 6, 16, device=DEVICE)

    def grads(module):
        with triton_training_scans(True):
            y = module(x)
        y.square().mean().backward()
        return [p.grad for p in module.parameters()]

    for g, want in zip(grads(checkpointed), grads(plain), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-7)


def test_triton_training_scans_compile_as_one_graph(kernel, backward, monkeypatch):
    """Under torch.compile (fullgraph) the Triton scan and its backward are custom ops in the graph: a block trains
    with the same gradients as eagerly. aot_eager: the graphs Inductor would get, without its code generation."""
    from sigma_ros.model.sigma import SS2D

    calls = []
    monkeypatch.setattr(backward, "scan_directions_backward",
                        lambda *a, _f=backward.scan_directions_backward, **k: calls.append(1) or _f(*a, **k))

    torch.manual_seed(5)
    block = SS2D(16, d_state=4, ssm_ratio=1.0).to(DEVICE)
    x = torch.randn(1, 4, 6, 16, device=DEVICE)

    def grads(fn):
        block.zero_grad()
        with triton_training_scans(True):
            fn(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in block.named_parameters()}

    torch._dynamo.reset()
    eager, compiled = grads(block), grads(torch.compile(block, backend="aot_eager", fullgraph=True))
    assert len(calls) == 2  # the Triton backward ran eagerly and in the compiled graph
    for name, g in eager.items():
        torch.testing.assert_close(compiled[name], g, rtol=1e-4, atol=1e-6, msg=name)
