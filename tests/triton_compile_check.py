"""Compile the fused kernels for an H100 (sm_90) without a GPU: Triton's whole pipeline down to
ptxas, which catches what the interpreter cannot (types, shapes, register spills). Run by
``tests/test_triton_kernels.py`` in a subprocess, because the tests' own process defines the
kernels in interpreter mode. Prints one line per kernel: registers and stack bytes per thread."""

import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from neuroplastic.kernels import triton_rsnn as kernels

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_one(fn, constexprs: dict, ints: set, num_warps: int) -> str:
    signature = {
        name: "constexpr" if name in constexprs else "i32" if name in ints else "*fp32"
        for name in fn.arg_names
    }
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs={})
    options = {"num_warps": num_warps, "enable_fp_fusion": False}
    compiled = triton.compile(source, target=TARGET, options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True,
                               text=True).stdout  # fmt: skip
    registers, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    return f"{fn.fn.__name__} {constexprs} warps {num_warps}: REG {registers} STACK {stack}"


def main() -> None:
    ints = {"steps", "batch", "n", "columns"}
    width = kernels.RESIDENT_WIDTH
    warps = kernels._warps(width, torch.float32)
    common = {"RECURRENT": True, "ROWS": kernels.ROWS_PER_PROGRAM}
    adjoint = {**common, "ADAPTIVE": True, "DETACH_RESET": False}
    tile = {"TILE": kernels.TILE_WIDTH}
    jobs = [
        (kernels._lif_forward_kernel, {**common, "WIDTH": width}, warps),
        (kernels._lif_adjoint_kernel, {**adjoint, "WIDTH": width}, warps),
        (kernels._lif_forward_tiled_kernel, {**common, **tile}, kernels.TILED_WARPS),
        (kernels._lif_adjoint_tiled_kernel, {**adjoint, **tile}, kernels.TILED_WARPS),
        (kernels._scan_kernel, {"REVERSE": True, "SHIFTED": True, "FACTOR_PER_STEP": True,
                                "BLOCK": 1024}, 4),  # fmt: skip
    ]
    for fn, constexprs, num_warps in jobs:
        print(compile_one(fn, constexprs, ints, num_warps), flush=True)


if __name__ == "__main__":
    sys.exit(main())
