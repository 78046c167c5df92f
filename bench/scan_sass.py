"""Instructions a step of the fused scan's main loop, compiled for a GPU architecture on any machine (no GPU needed).

    python bench/scan_sass.py                      # Sigma-T stage 1: bf16, d_state 16, map layout, both passes
    python bench/scan_sass.py --d-state 4 --steps 4 --arch 90 --dump second.sass

Compiles ``ops.triton_scan._scan_directions_kernel`` as the model calls it (channels-last bf16 inputs, B and C as
aligned state pairs, SS2D's map layout, twins apart, step sizes taken already) with Triton's own ptxas, disassembles
it with nvdisasm, finds the loop over the sequence and prints, for each pass, the instructions it issues per scan
step by opcode, its registers and spills. A count, not a time (bench/bench_gpu_scan.py and bench/bench_ab.py time
it on a GPU): fewer instructions pay where the loop is issue-bound, and the registers set how many warps fit.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, even under the tests' interpreter setting

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sigma_ros.ops import triton_scan  # noqa: E402

_ELEM = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
# strides of 1 (channels-last u, dt and y; B and C contiguous along the states), as Triton specialises them
_UNIT = {"su_d", "sdt_d", "sb_n", "sc_n", "sy_d"}
# pointers Triton may assume 16-byte aligned (A and the summaries are left unspecialised on purpose: see the kernel)
_ALIGNED = {"u_ptr", "dt_ptr", "b_ptr", "c_ptr", "dskip_ptr", "bias_ptr", "y_ptr", "dt_seg_ptr"}


def compile_scan(output: bool, d_state: int, steps: int, dtype: str, column_twin: bool, arch: int):
    """The kernel compiled for ``sm_<arch>``, as the model's call would specialise it."""
    fn = triton_scan._scan_directions_kernel
    meta = dict(G=2, N=d_state, OUTPUT=output, ACCUMULATE=False, COLUMN_TWIN=column_twin, APPROX=dtype != "fp32",
                SOFTPLUS=False, BLOCK_D=32, STEPS=steps, FOLD=max(1, 16 // d_state), SPLIT=1, ELEM=_ELEM[dtype],
                APART=True)
    elem = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}[dtype]
    signature, constants, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in meta or name in _UNIT:
            signature[name] = "constexpr"
            constants[(i,)] = meta.get(name, 1)
        elif name.endswith("_ptr"):
            signature[name] = elem if name in ("u_ptr", "dt_ptr", "b_ptr", "c_ptr") else "*fp32"
        else:
            signature[name] = "fp32" if name == "inv_h" else "i32"
        # the model's strides and channel counts are multiples of 16; pointers as noted above
        if name in _ALIGNED or (name.startswith("s") and "_" in name and name not in _UNIT) or name == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=1))


def resources(cubin: bytes) -> dict:
    """Registers, stack and local (spill) memory of the cubin, as cuobjdump reports them."""
    from triton import knobs
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    return {key.lower(): int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out)}


def loop_opcodes(sass: str) -> collections.Counter:
    """Opcodes of the loop over the sequence: of the loops (a label and the branch back to it), the one that
    stores (the second pass writes outputs; the first has no other loop), then the one with the most exponentials
    (the second pass's fold of the segment summaries has as many as its scan when FOLD summaries match 2 * STEPS
    steps)."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\w+):\s*$", line))}
    best = collections.Counter()
    for j, line in enumerate(lines):
        m = re.search(r"BRA (\w+);", line)
        if m and m.group(1) in labels and labels[m.group(1)] < j:
            ops = collections.Counter()
            for body in lines[labels[m.group(1)] + 1:j + 1]:
                op = re.match(r"^\S+\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", body)
                if op:
                    ops[op.group(1)] += 1
            if (ops["STG"] > 0, ops["MUFU"]) > (best["STG"] > 0, best["MUFU"]):
                best = ops
    return best


def profile(output: bool, d_state: int, steps: int, dtype: str, column_twin: bool, arch: int,
            dump: str | None = None) -> dict:
    """One pass's loop: instructions a step in all and by opcode, and the kernel's resources."""
    kernel = compile_scan(output, d_state, steps, dtype, column_twin, arch)
    if dump:
        with open(dump, "w") as f:
            f.write(kernel.asm["sass"])
    ops = loop_opcodes(kernel.asm["sass"])
    per = 2 * steps  # the loop body holds two groups of steps (software pipelining)
    return dict(instructions=sum(ops.values()) / per, opcodes={op: n / per for op, n in ops.most_common()},
                **resources(kernel.asm["cubin"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="steps in flight (pick_config: 4 on long segments)")
    ap.add_argument("--dtype", choices=sorted(_ELEM), default="bf16")
    ap.add_argument("--no-map-layout", dest="column_twin", action="store_false",
                    help="a plain sequence instead of SS2D's row/column map")
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200), 87 (Orin)")
    ap.add_argument("--dump", default=None, help="also write the second pass's SASS to this file")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}, {args.dtype}, d_state {args.d_state}, {args.steps} steps "
          f"in flight, {'map layout' if args.column_twin else 'plain sequence'}")
    passes = {}
    for name, output in (("first", False), ("second", True)):
        p = passes[name] = profile(output, args.d_state, args.steps, args.dtype, args.column_twin, args.arch,
                                   args.dump if output else None)
        top = ", ".join(f"{op} {n:.1f}" for op, n in list(p["opcodes"].items())[:12])
        print(f"{name + ' pass':12s} {p['instructions']:6.1f} instructions a step ({p.get('reg')} registers, "
              f"{p.get('local')} B local): {top}")
    print(f"both passes: {sum(p['instructions'] for p in passes.values()):.1f} instructions a step of a block of "
          f"32 channels (one warp)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(vars(args), triton=triton.__version__, passes=passes), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
