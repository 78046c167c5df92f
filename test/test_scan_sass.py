"""bench/scan_sass.py: the fused scan compiled for sm_90 on this machine (Triton's own ptxas; no GPU), its loop
over the sequence found and counted. What it counts is what the kernel's speed rests on: one exponential for each
state and step in each pass, one store a step in the second pass, none in the first, and no spilled registers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scan_sass.py"


@pytest.mark.parametrize("d_state, layout", [(16, []), (4, ["--no-map-layout"])])
def test_scan_loop_takes_one_exponential_per_state_and_step_and_spills_nothing(tmp_path, d_state, layout):
    out = tmp_path / "sass.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--d-state", str(d_state), "--steps", "1", *layout,
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    if p.returncode != 0 and "ptxas" in p.stderr and "No such file" in p.stderr:
        pytest.skip("this Triton has no ptxas to compile with")
    assert p.returncode == 0, p.stdout + p.stderr
    first, second = (json.loads(out.read_text())["passes"][name] for name in ("first", "second"))
    for figures in (first, second):
        assert figures["opcodes"]["MUFU"] == d_state
        assert figures["local"] == 0
    assert "STG" not in first["opcodes"] and second["opcodes"]["STG"] == 1
    assert first["instructions"] < second["instructions"]  # the first pass neither loads C nor computes outputs
    assert f"{first['instructions']:.1f} instructions a step" in p.stdout
