"""``nnunet-ext gpu-check``: the checks for the first machine with a GPU (see
:mod:`nnunet_ext.bench.gpu_check`), as one table on stdout and one JSON file; with
``--compile-only``, on any machine, every Triton kernel compiled for GPU architectures
(:mod:`nnunet_ext.bench.triton_compile`)."""

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "gpu-check", help="check the scan back-ends and every paper network on a GPU (a few minutes)",
        description="On a CUDA machine: every selective-scan back-end against the reference (error, and "
                    "throughput at SegMamba's 262 144-token first stage); which back-end 'auto' picks and why; "
                    "each paper network at 128³, batch 2, 4 input channels, 4 classes with its own trainer's "
                    "loss and nnU-Net's AMP: training-step time and peak memory, inference time and memory "
                    "per patch (SegMamba beside its paper's numbers), and 20 AMP steps free of NaN/inf. "
                    "Prints one table, writes the details as JSON; exits 1 when a check fails.")
    p.add_argument("--out", default="gpu_check.json", metavar="JSON",
                   help="where to write the report (default gpu_check.json)")
    p.add_argument("--dry-run", action="store_true",
                   help="run the whole check on the CPU at tiny sizes (16³ patch, L 1024, 2 steps under "
                        "bfloat16 autocast) to see that it works before using a GPU machine")
    p.add_argument("--networks", nargs="+", metavar="ARCH",
                   help="check only these networks (default: every registered paper network)")
    p.add_argument("--compile-only", action="store_true",
                   help="no GPU needed: compile every Triton scan kernel specialisation the dispatcher can launch "
                        "for real GPU architectures (triton.compile + the ptxas/cuobjdump in Triton's wheel) and "
                        "print registers, spilled bytes, shared memory and compile seconds per kernel x arch x N; "
                        "exits 1 on a compile error or a spill at N <= 64")
    p.add_argument("--arch", nargs="+", metavar="SM",
                   help="with --compile-only: the architectures (default: sm_80 sm_90; sm_100 and sm_120 use "
                        "Triton's ptxas-blackwell)")
    p.add_argument("--coverage", default="ci", metavar="LEVEL",
                   help="with --compile-only: ci (default: every tile, option combination, dtype pair and integer "
                        "specialisation, ~2 minutes on 2 cores for sm_80 + sm_90), full (their cross product, "
                        "~20 minutes per architecture on 2 cores), or one of tiles, options, dtypes, shapes")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="with --compile-only: compiler processes (default: the CPU count)")
    p.set_defaults(func=run)


def _out_file(args):
    """``--out`` as a path: a file in an existing folder (one line otherwise)."""
    from pathlib import Path

    from nnunet_ext.cli._checks import fail

    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise fail("gpu-check", f"--out {args.out}: give a file in an existing folder, e.g. --out gpu_check.json")
    return out


def run_compile_only(args) -> int:
    import importlib.util

    from nnunet_ext.cli._checks import at_least, fail
    from nnunet_ext.io import write_json

    at_least("gpu-check", "--jobs", args.jobs, 1)
    out = _out_file(args)
    if importlib.util.find_spec("triton") is None:
        raise fail("gpu-check", "--compile-only needs triton: `pip install triton` (PyTorch's Linux wheels ship it)")
    from nnunet_ext.bench import triton_compile

    levels = triton_compile.LEVELS + ("ci", "full")
    if args.coverage not in levels:
        raise fail("gpu-check", f"--coverage {args.coverage}: give one of {', '.join(levels)}")
    archs = args.arch or list(triton_compile.DEFAULT_ARCHS)
    for a in archs:
        try:
            triton_compile.parse_arch(a)
        except ValueError as e:
            raise fail("gpu-check", f"--arch: {e}") from None

    def progress(row):
        if row["status"] != "ok":
            print(f"  {row['kernel']} {row['arch']} N {row['n']} tile {row['tile']}: {row['error']}",
                  file=sys.stderr, flush=True)

    report = triton_compile.run(archs, args.coverage, args.jobs, progress)
    write_json(report, out)
    print(triton_compile.format_table(report))
    print(f"\nreport written to {out}")
    return 0 if report["ok"] else 1


def run(args) -> int:
    if args.compile_only:
        return run_compile_only(args)
    import torch

    from nnunet_ext.architectures import available_architectures
    from nnunet_ext.bench import gpu_check
    from nnunet_ext.cli._checks import fail
    from nnunet_ext.io import write_json

    if args.arch or args.coverage != "ci" or args.jobs:
        raise fail("gpu-check", "--arch, --coverage and --jobs go with --compile-only (the full check compiles "
                                "the Triton kernels for its own GPU)")
    unknown = [a for a in args.networks or () if a not in available_architectures()]
    if unknown:
        raise fail("gpu-check", f"--networks: unknown network(s) {', '.join(unknown)}; "
                                f"known: {', '.join(available_architectures())}")
    out = _out_file(args)
    if not args.dry_run and not torch.cuda.is_available():
        raise fail("gpu-check", "torch sees no CUDA device here; run `nnunet-ext gpu-check --dry-run` to try the "
                                "check on the CPU, or run it on a GPU machine")

    def progress(section, row):
        detail = row.get("reason") or ""
        print(f"  {section}: {gpu_check.row_subject(row)} {row['status']} {detail}".rstrip(), file=sys.stderr,
              flush=True)

    report = gpu_check.run_check(dry_run=args.dry_run, networks=args.networks, progress=progress)
    write_json(report, out)
    print(gpu_check.format_table(report))
    print(f"\nreport written to {out}")
    return 0 if report["ok"] else 1
