"""``nnunet-ext benchmark-scan``: time and peak memory of the selective-scan implementations."""

import json


def register(sub) -> None:
    p = sub.add_parser(
        "benchmark-scan", help="time our selective scans vs selective_scan_ref and mambapy",
        description="Forward and forward+backward time (mean of --repeats) and extra peak memory of "
                    "the selective-scan implementations on the same inputs, each in a fresh process. "
                    "Default cases: B1 E96 N16 L 512/4096/8192/32768 and B2 E192 N16 L4096.")
    p.add_argument("--lengths", type=int, nargs="+", metavar="L",
                   help="sequence lengths (with --batch/--channels/--state instead of the default cases)")
    p.add_argument("--batch", type=int, default=None, help="B (default 1)")
    p.add_argument("--channels", type=int, default=None, help="E (default 96)")
    p.add_argument("--state", type=int, default=None, help="N (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (mean reported)")
    p.add_argument("--backends", nargs="+", default=None, metavar="METHOD",
                   help="subset of: torch fused cuda reference mambapy, and torch@T for the PyTorch scan with "
                        "blocks of T tokens (default: torch fused cuda reference mambapy)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current)")
    p.add_argument("--reference-max-length", type=int, default=None,
                   help="skip selective_scan_ref above this L (default 8192; its backward is O(L²))")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import sys

    import torch

    from nnunet_ext.cli import _checks
    from nnunet_ext.bench import scan as bm

    methods = tuple(args.backends or bm.METHODS)
    bad = [m for m in methods if m not in bm.METHODS and not (m.startswith("torch@") and m[6:].isdigit()
                                                              and int(m[6:]) >= 1)]
    if bad:
        raise SystemExit(f"nnunet-ext benchmark-scan: unknown --backends {' '.join(bad)}; "
                         f"choose from {' '.join(bm.METHODS)} or torch@T with T >= 1 tokens per block")
    if len(set(methods)) != len(methods):
        raise SystemExit("nnunet-ext benchmark-scan: --backends names a method twice")
    for option, value in (("--batch", args.batch), ("--channels", args.channels), ("--state", args.state),
                          ("--repeats", args.repeats), ("--threads", args.threads),
                          ("--reference-max-length", args.reference_max_length),
                          *(("--lengths", L) for L in args.lengths or ())):
        _checks.at_least("benchmark-scan", option, value, 1)
    if any(v is not None for v in (args.lengths, args.batch, args.channels, args.state)):
        cases = [(args.batch or 1, args.channels or 96, args.state or 16, L)
                 for L in (args.lengths or [4096])]
    else:
        cases = bm.DEFAULT_CASES
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("nnunet-ext benchmark-scan: --device cuda but torch sees no CUDA device")
    def progress(r):  # one line per measurement on stderr, so an interrupted run still has its numbers
        nums = (f"fwd {r['fwd_ms']:.1f} ms, fwd+bwd {r['fwd_bwd_ms']:.1f} ms, "
                f"extra peak {r.get('extra_peak_mb', '-')} MB" if "fwd_ms" in r else r.get("note", ""))
        print(f"  B{r['B']} E{r['E']} N{r['N']} L{r['L']} {r['method']}: {nums}", file=sys.stderr, flush=True)

    load0 = os.getloadavg()[0]
    rows = bm.benchmark_scan(cases, methods, args.repeats, device, args.threads, not args.no_memory,
                             args.reference_max_length or bm.REFERENCE_MAX_LENGTH, progress)
    if args.json:
        print(json.dumps(rows))
        return 0
    threads = next((r["threads"] for r in rows if "threads" in r), args.threads or torch.get_num_threads())
    print(f"selective scan on {device}, {threads} thread(s); times are means of {args.repeats} runs "
          f"after a warm-up; '× X' = X's time / this row's time; "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(bm.format_table(rows))
    return 0
