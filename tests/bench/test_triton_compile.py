"""The Triton scan's kernels compiled for real GPUs without one (:mod:`nnunet_ext.bench.triton_compile`).

``nnunet-ext gpu-check --compile-only`` runs once for the module (sm_80 and sm_90, coverage ``ci``):
every specialisation compiles, none spills at N <= 64, and the specialisations compiled cover every
tile, option combination and dtype the dispatcher launches (checked here against launches of
:func:`~nnunet_ext.ops.scan_triton.kernel_launches` for other shapes than the ones compiled).
Triton caches what it compiled (``~/.triton/cache``), so a second run takes seconds; a cold run
takes ~2 minutes on two cores. Blackwell (sm_100, sm_120: Triton's ``ptxas-blackwell``) gets
the networks' specialisations.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json

import pytest
import torch

triton = pytest.importorskip("triton")

from nnunet_ext.bench import triton_compile as tc  # noqa: E402
from nnunet_ext.cli.main import main  # noqa: E402
from nnunet_ext.ops import scan_triton  # noqa: E402

KERNELS = ("_fwd_kernel", "_bwd_carry_kernel", "_bwd_kernel")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(exit code, JSON report, stdout) of `nnunet-ext gpu-check --compile-only`."""
    if scan_triton.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 is set for the whole run")
    out = tmp_path_factory.mktemp("compile") / "report.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["gpu-check", "--compile-only", "--out", str(out)])
    return rc, json.loads(out.read_text()), buf.getvalue()


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills_at_small_n(compiled):
    rc, report, stdout = compiled
    assert report["failed"] == [] and report["ok"] and rc == 0, report["failed"]
    assert report["archs"] == ["sm_80", "sm_90"] and report["compiled"] == 2 * report["specialisations"]
    rows = report["rows"]
    assert {(r["kernel"], r["arch"], r["n"]) for r in rows} == set(itertools.product(KERNELS, ("sm_80", "sm_90"),
                                                                                       tc.N_VALUES))
    for r in rows:
        assert r["status"] == "ok" and 0 < r["regs"] <= 255 and r["seconds"] > 0, r
        if r["n"] <= tc.SPILL_FREE_MAX_N:
            assert r["stack"] == r["local"] == 0, r
    # the table: one line per kernel x arch x N, its numbers those of the rows
    summary = {(s["kernel"], s["arch"], s["n"]): s for s in report["summary"]}
    assert len(summary) == len(KERNELS) * 2 * len(tc.N_VALUES)
    for key, s in summary.items():
        mine = [r for r in rows if (r["kernel"], r["arch"], r["n"]) == key]
        assert s["compiled"] == len(mine) and s["regs"] == max(r["regs"] for r in mine)
        assert s["spill_bytes"] == max(r["stack"] + r["local"] for r in mine)
        line = f"| {key[0]} | {key[1]} | {key[2]} | "
        assert sum(ln.startswith(line) for ln in stdout.splitlines()) == 1, line


def _launched(call_list):
    """(kernel, tile, flags set to True, pointer dtypes) of every launch of the calls."""
    out = set()
    for call in call_list:
        for launch in call.launches():
            a = launch.args
            flags = tuple(sorted(k for k, v in a.items() if v is True))
            dtypes = tuple(sorted({str(v.dtype).replace("torch.", "") for v in a.values()
                                   if isinstance(v, torch.Tensor)}))
            out.add((launch.kernel.__name__, (a["BE"], a["BN"], a["T"]), flags, dtypes))
    return out


def _compiled_keys(report):
    names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    out = set()
    for r in report["rows"]:
        out.add((r["kernel"], tuple(int(x) for x in r["tile"].split("×")),
                 tuple(sorted(r["flags"].split(","))) if r["flags"] else (),
                 tuple(sorted(k for k, v in names.items() if f"*{v}" in r["dtypes"].split(",")))))
    return out


def test_what_the_dispatcher_launches_was_compiled(compiled):
    """Tiles for other E (and N) than the compiled calls, every option combination, every dtype."""
    _, report, _ = compiled
    keys = _compiled_keys(report)
    act, par = tc.NETWORK_DTYPES
    tiles = _launched(tc.Call(n, e=e, dtype=act, param_dtype=par)
                      for n in tc.N_VALUES for e in (1, 2, 3, 5, 7, 17, 100, 777, tc.E_MAX))
    options = _launched(tc.Call(16, e=40, length=300, d=d, z=z, bias=b, softplus=s, grad=g, last_grad=g and lg)
                        for d, z, b, s, g, lg in itertools.product((True, False), repeat=6))
    dtypes = _launched(tc.Call(16, e=5, dtype=a, param_dtype=p) for a, p in tc.DTYPES)
    for what, launched in (("tile", tiles), ("option combination", options), ("dtype", dtypes)):
        missing = launched - keys
        assert not missing, f"a {what} the dispatcher launches was not compiled: {sorted(missing)[:3]}"
    assert len({k[0] for k in options}) == 3 and len(options) == 32 + 16 + 16


def test_the_compiler_rejects_what_the_interpreter_ran(tmp_path):
    """The type error the interpreter let through in the backward carry kernel: a name bound before
    a loop and rebound to a tile inside it. Compiling reports it (and the fixed kernel compiles,
    above)."""
    import triton.language as tl

    @triton.jit
    def carried(x_ptr, N, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        a, _ = 0.0, 0.0
        for k in range(N):
            _, a = tl.load(x_ptr + i), a + 1.0
        tl.store(x_ptr + i, a + _)

    spec = tc.Spec("carried", (("x_ptr", "*fp32"), ("N", "i32"), ("BLOCK", "constexpr")), (((2,), 16),), (), ())
    row = tc.compile_spec(spec, "sm_90", kernel=carried)
    assert row["status"] == "fail" and "Loop-carried variable _" in row["error"], row


def test_a_spill_at_small_n_fails_and_large_n_reports_it(monkeypatch):
    def fake(spec, arch, kernel=None):
        return {"kernel": spec.kernel, "arch": arch, "status": "ok", "seconds": 0.1, "regs": 255, "stack": 64,
                "shared": 0, "local": 8}

    monkeypatch.setattr(tc, "compile_spec", fake)
    specs = tc.distinct_specs([tc.Call(16, grad=False), tc.Call(256, grad=False)])
    rows = {r["n"]: r for r in tc.compile_all(specs, ["sm_90"], jobs=1)}
    assert rows[16]["status"] == "fail" and "spills 72 bytes at N 16" in rows[16]["error"]
    assert rows[256]["status"] == "ok" and rows[256]["spill_bytes"] == 72


def test_specialisations_follow_tritons_jit():
    """Integers are specialised as Triton's JIT does (1 -> constant, multiple of 16 -> divisibility),
    flags and tiles are constexprs, pointers carry their dtype."""
    (fwd,) = tc.Call(16, e=1, length=32, dtype="bfloat16", grad=False).launches()
    spec = tc.specialise(fwd)
    sig = dict(spec.signature)
    assert sig["E"] == "constexpr" and spec.constant("E") == 1
    assert sig["L"] == "i32" and sig["u_ptr"] == "*bf16" and sig["a_ptr"] == "*fp32"
    assert spec.constant("SAVE") is False and spec.constant("HAS_Z") is True and spec.constant("BN") == 16
    names = [k for k, _ in spec.signature]
    assert ((names.index("L"),), (("tt.divisibility", 16),)) in spec.attrs


@pytest.mark.parametrize("arch", ["sm_100", "sm_120"])
def test_blackwell_compiles_the_networks_kernels(arch):
    """ptxas-blackwell (in Triton's wheel) accepts sm_100 and sm_120: SegMamba's call, N 16."""
    specs = tc.distinct_specs([tc.Call(16, dtype=tc.NETWORK_DTYPES[0], param_dtype=tc.NETWORK_DTYPES[1],
                                       last_grad=False)])
    rows = tc.compile_all(specs, [arch], jobs=1)
    assert {r["kernel"] for r in rows} == set(KERNELS)
    assert all(r["status"] == "ok" and r["stack"] == r["local"] == 0 for r in rows), rows


@pytest.mark.parametrize("argv, fragment", [
    (["--compile-only", "--arch", "ampere"], "--arch: architecture 'ampere': give it as sm_<compute capability>"),
    (["--compile-only", "--coverage", "most"], "--coverage most: give one of tiles, options, dtypes, shapes, ci"),
    (["--compile-only", "--jobs", "0"], "--jobs must be >= 1"),
    (["--arch", "sm_90"], "--arch, --coverage and --jobs go with --compile-only"),
])
def test_bad_arguments_stop_with_one_line(tmp_path, argv, fragment):
    with pytest.raises(SystemExit) as e:
        main(["gpu-check", *argv, "--out", str(tmp_path / "r.json")])
    assert str(e.value).startswith("nnunet-ext gpu-check: ") and fragment in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "r.json").exists()


def test_gpu_check_rows(monkeypatch):
    """gpu-check's section: skipped without a GPU; on one, a row per kernel x N for its own arch."""
    (row,) = tc.gpu_check_rows("cpu")
    assert row["status"] == "skipped" and "--compile-only" in row["reason"]
    seen = {}

    def fake_run(archs, level, jobs=None):
        seen["archs"] = archs
        rows = [{"kernel": "_fwd_kernel", "arch": "sm_86", "n": 16, "tile": "1×16×64", "status": "ok", "seconds": 1.0,
                 "regs": 80, "stack": 0, "local": 0, "shared": 0, "spill_bytes": 0, "driver_regs": 80,
                 "driver_spills": 0}]
        return {"rows": rows, "summary": tc.summarise(rows)}

    monkeypatch.setattr(tc, "run", fake_run)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    (row,) = tc.gpu_check_rows("cuda")
    assert seen["archs"] == ["sm_86"] and row["status"] == "ok" and row["backend"] == "triton _fwd_kernel N 16"
    assert "registers 80, spill bytes 0" in row["reason"] and "driver: registers 80, spills 0" in row["reason"]
