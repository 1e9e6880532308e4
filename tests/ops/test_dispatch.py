"""Back-end dispatch: auto order, the forcing switch, and optional packages that are absent or broken."""

import importlib
import os
import subprocess
import sys
import textwrap
import types
import warnings

import re

import pytest
import torch

from nnunet_ext.ops import (ENV_VAR, BackendUnavailableError, available_backends, backends, causal_conv1d,
                            resolve_backend, selective_scan)
from nnunet_ext.ops.backends import SlowBackendWarning
from nnunet_ext.ops.reference import selective_scan_sequential

ss = importlib.import_module("nnunet_ext.ops.selective_scan")
conv_module = importlib.import_module("nnunet_ext.ops.causal_conv1d")


def small_inputs(length=6):
    g = torch.Generator().manual_seed(0)
    return dict(u=torch.randn(1, 2, length, generator=g), delta=torch.rand(1, 2, length, generator=g),
                A=-torch.rand(2, 3, generator=g), B=torch.randn(1, 3, length, generator=g),
                C=torch.randn(1, 3, length, generator=g))


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    backends.clear_cache()
    yield
    backends.clear_cache()


BROKEN_MAMBA = {
    "mamba_ssm/__init__.py": "",
    "mamba_ssm/ops/__init__.py": "",
    # what a CPU-only `MAMBA_FORCE_BUILD=TRUE pip install mamba-ssm` leaves behind
    "mamba_ssm/ops/selective_scan_interface.py": "import selective_scan_cuda\nselective_scan_fn = None\n",
    "causal_conv1d/__init__.py": "import causal_conv1d_cuda\ncausal_conv1d_fn = None\n",
}


@pytest.fixture
def broken_mamba(tmp_path, monkeypatch):
    for rel, text in BROKEN_MAMBA.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "causal_conv1d")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="selective_scan_cuda"):
        importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    return tmp_path


def test_broken_mamba_ssm_does_not_break_and_auto_skips_cuda(broken_mamba):
    assert "cuda" not in available_backends("cuda")
    with pytest.warns(SlowBackendWarning, match="selective_scan_cuda"):
        assert resolve_backend(torch.device("cuda")) == "torch"
    with pytest.warns(SlowBackendWarning, match="causal_conv1d_cuda"):
        assert resolve_backend(torch.device("cuda"), op="conv") == "torch"
    assert resolve_backend(torch.zeros(1)) in ("fused", "torch")
    y = selective_scan(**small_inputs())
    torch.testing.assert_close(y, selective_scan_sequential(**small_inputs()), rtol=1e-4, atol=1e-5)


def test_forcing_cuda_without_kernels_names_the_fix(broken_mamba):
    # installed without its CUDA extension: the fix is a source build, not another `pip install`
    with pytest.raises(BackendUnavailableError,
                       match=r"selective_scan_cuda.*MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation"):
        resolve_backend(torch.device("cuda"), "cuda")
    with pytest.raises(BackendUnavailableError, match="causal-conv1d.*CAUSAL_CONV1D_FORCE_BUILD=TRUE"):
        resolve_backend(torch.device("cuda"), "cuda", op="conv")


@pytest.fixture
def no_mamba(monkeypatch):
    """mamba-ssm and causal-conv1d not installed: their imports raise ModuleNotFoundError."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "causal_conv1d")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)


def test_forcing_cuda_without_the_package_names_the_extra(no_mamba):
    with pytest.raises(BackendUnavailableError, match=r'mamba-ssm is not installed.*pip install --no-build-isolation mamba-ssm'):
        resolve_backend(torch.device("cuda"), "cuda")


def test_forcing_cuda_on_cpu_tensors_is_refused():
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors"):
        selective_scan(**small_inputs(), backend="cuda")


def test_import_in_fresh_interpreter_with_broken_mamba(broken_mamba):
    code = textwrap.dedent("""
        import torch, nnunet_ext.ops as ops
        for _ in range(3):
            choices = [ops.resolve_backend(torch.device('cuda')), ops.resolve_backend(torch.zeros(1)),
                       ops.resolve_backend(torch.device('cuda'), op='conv')]
        print(*choices)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(broken_mamba), *sys.path]))
    env.pop(ENV_VAR, None)
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cuda_choice, cpu_choice, conv_choice = out.stdout.split()
    assert cuda_choice == conv_choice == "torch" and cpu_choice in ("fused", "torch")
    # under the default warning filters: one message per op on stderr, whatever the number of calls
    assert out.stderr.count("SlowBackendWarning") == 2 + (cpu_choice == "torch"), out.stderr
    assert out.stderr.count("MAMBA_FORCE_BUILD=TRUE") == 1 and out.stderr.count("CAUSAL_CONV1D_FORCE_BUILD=TRUE") == 1


# --------------------------------------------------------------------------- no silent slow path

def _fake_cuda_packages(monkeypatch):
    """mamba-ssm and causal-conv1d import fine (fakes that must not be called)."""
    def never(*a, **k):
        raise AssertionError("the CUDA kernel must not run")

    scan_mod = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    scan_mod.selective_scan_fn = never
    conv_mod = types.ModuleType("causal_conv1d")
    conv_mod.causal_conv1d_fn = never
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", scan_mod)
    monkeypatch.setitem(sys.modules, "causal_conv1d", conv_mod)


@pytest.fixture
def kernel_fails_on_this_gpu(monkeypatch):
    """The packages import, a GPU is visible, but the kernels fail their probe (a wheel built for
    another GPU architecture)."""
    _fake_cuda_packages(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def probe(op, fn, dev):
        assert dev == torch.device("cuda", 0)
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(backends, "_run_cuda_probe", probe)
    _fake_triton(monkeypatch, fails="triton compile error: unsupported GPU architecture")


def _fake_triton(monkeypatch, fails: str | None = None):
    """triton imports (a fake scan module); its GPU probe passes, or raises ``fails``."""
    calls = []
    fake = types.ModuleType("nnunet_ext.ops.scan_triton")
    fake.INTERPRET = False
    fake.selective_scan_triton = lambda *a, **k: calls.append(k) or "triton result"
    monkeypatch.setitem(sys.modules, "nnunet_ext.ops.scan_triton", fake)

    def probe(mod, dev):
        assert mod is fake and dev.type == "cuda"
        if fails:
            raise RuntimeError(fails)

    monkeypatch.setattr(backends, "_run_triton_probe", probe)
    return calls


FALLBACK_CASES = {
    # fixture -> (what the scan warning must say: reason, fix), the same for the conv
    "no_mamba": ((r"mamba-ssm is not installed", r"pip install --no-build-isolation mamba-ssm"),
                 (r"causal-conv1d is not installed", r"pip install --no-build-isolation causal-conv1d")),
    "broken_mamba": ((r"without a working CUDA extension.*selective_scan_cuda",
                      r"MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation .*mamba-ssm"),
                     (r"without a working CUDA extension.*causal_conv1d_cuda",
                      r"CAUSAL_CONV1D_FORCE_BUILD=TRUE pip install --no-build-isolation .*causal-conv1d")),
    "kernel_fails_on_this_gpu": ((r"mamba-ssm is installed but its kernel does not run on this GPU.*no kernel image"
                                  r".*Triton kernel cannot run: the Triton scan kernel fails on this GPU.*"
                                  r"unsupported GPU architecture",
                                  r"MAMBA_FORCE_BUILD=TRUE.*or, for the Triton kernel: use the triton version"),
                                 (r"causal-conv1d is installed but its kernel does not run on this GPU",
                                  r"CAUSAL_CONV1D_FORCE_BUILD=TRUE")),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_auto_fallback_on_cuda_warns_once_per_op_with_reason_and_fix(request, case):
    request.getfixturevalue(case)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # the once-per-process rule is ours, not the filter's
        for _ in range(3):
            assert resolve_backend(torch.device("cuda")) == "torch"
            assert resolve_backend(torch.device("cuda", 0), op="conv") == "torch"
    slow = [str(w.message) for w in seen if issubclass(w.category, SlowBackendWarning)]
    assert len(slow) == 2, slow
    for message, (reason, fix) in zip(slow, FALLBACK_CASES[case]):
        assert re.search(reason, message) and re.search(f"Fix: .*{fix}", message), message
        assert f"{ENV_VAR}=torch" in message


def test_working_kernels_and_forced_backends_do_not_warn(monkeypatch, no_mamba):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowBackendWarning)
        assert resolve_backend(torch.device("cuda"), "torch") == "torch"  # asked for: no message
        monkeypatch.setenv(ENV_VAR, "torch")
        assert resolve_backend(torch.device("cuda"), op="conv") == "torch"
        monkeypatch.delenv(ENV_VAR)
        assert resolve_backend(torch.empty(1, device="meta")) == "torch"
        for name in ("mamba_ssm", "causal_conv1d"):
            monkeypatch.delitem(sys.modules, name)
        backends.clear_cache()
        _fake_cuda_packages(monkeypatch)
        assert resolve_backend(torch.device("cuda")) == "cuda"
        assert resolve_backend(torch.device("cuda"), op="conv") == "cuda"


def test_scan_and_conv_on_cuda_tensors_fall_back_with_one_message(monkeypatch, no_mamba):
    """The whole call path on (pretend) CUDA tensors: the device test is the only thing faked."""
    real = backends._device_type
    monkeypatch.setattr(backends, "_device_type", lambda d: "cuda" if real(d) == "cpu" else real(d))
    inputs = small_inputs()
    x, w = torch.randn(1, 2, 5), torch.randn(2, 3)
    with pytest.warns(SlowBackendWarning) as record:
        y = selective_scan(**inputs)
        y2 = selective_scan(**inputs)
        c = causal_conv1d(x, w)
        causal_conv1d(x, w)
    assert [str(r.message).split(" on ")[0] for r in record] == ["nnunet-ext: the selective scan",
                                                               "nnunet-ext: the causal conv1d"]
    assert all("cuda tensors runs the slower 'torch' back-end" in str(r.message) for r in record)
    torch.testing.assert_close(y, selective_scan_sequential(**inputs), rtol=1e-4, atol=1e-5)
    assert torch.equal(y, y2)
    torch.testing.assert_close(c, conv_module.causal_conv1d_torch(x, w))


def test_cpu_fallback_from_the_fused_kernel_warns_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunet_ext.ops.scan_fused", None)
    with pytest.warns(SlowBackendWarning, match=r"cpu tensors runs the slower 'torch' .*fused CPU kernel.*"
                                                r"Fix: `pip install numba`") as record:
        for _ in range(3):
            assert resolve_backend(torch.zeros(1)) == "torch"
    assert len(record) == 1


def test_working_mamba_ssm_is_chosen_for_cuda_tensors(monkeypatch):
    calls = []
    fake = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    fake.selective_scan_fn = lambda *a, **k: calls.append(k) or "cuda result"
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", fake)
    assert available_backends("cuda")[0] == "cuda"
    assert resolve_backend(torch.device("cuda")) == "cuda"
    assert resolve_backend(torch.zeros(1)) != "cuda"  # CPU tensors never go to the CUDA kernel
    monkeypatch.setattr(backends, "resolve_backend", lambda *a, **k: "cuda")
    assert selective_scan(**small_inputs(), delta_softplus=True) == "cuda result"
    assert calls and calls[0]["delta_softplus"] is True


def test_fused_is_auto_on_cpu_when_available(monkeypatch):
    calls = []
    fake = types.ModuleType("nnunet_ext.ops.scan_fused")
    fake.fused_available = lambda: True
    fake.selective_scan_fused = lambda *a, **k: calls.append(k) or "fused result"
    monkeypatch.setitem(sys.modules, "nnunet_ext.ops.scan_fused", fake)
    assert available_backends("cpu") == ["fused", "torch"]
    assert selective_scan(**small_inputs()) == "fused result"
    assert len(calls) == 1


@pytest.mark.parametrize("how", ["absent", "unavailable"])
def test_without_fused_kernel_auto_is_torch_and_forcing_names_numba(monkeypatch, how):
    if how == "absent":
        monkeypatch.setitem(sys.modules, "nnunet_ext.ops.scan_fused", None)  # import raises ImportError
    else:
        fake = types.ModuleType("nnunet_ext.ops.scan_fused")
        fake.fused_available = lambda: False
        monkeypatch.setitem(sys.modules, "nnunet_ext.ops.scan_fused", fake)
    assert available_backends("cpu") == ["torch"]
    with pytest.warns(SlowBackendWarning, match="fused CPU kernel"):
        assert resolve_backend(torch.zeros(1)) == "torch"
    with pytest.raises(BackendUnavailableError, match="numba"):
        selective_scan(**small_inputs(), backend="fused")


@pytest.mark.parametrize("name", ["torch", "TORCH"])
def test_env_var_forces_backend(monkeypatch, name):
    monkeypatch.setenv(ENV_VAR, name)
    assert resolve_backend(torch.zeros(1)) == "torch"
    seen = []
    orig = ss.selective_scan_torch
    monkeypatch.setattr(ss, "selective_scan_torch", lambda *a, **k: seen.append("torch") or orig(*a, **k))
    y = selective_scan(**small_inputs())
    assert seen == ["torch"]
    torch.testing.assert_close(y, selective_scan_sequential(**small_inputs()), rtol=1e-4, atol=1e-5)


def test_argument_beats_env_var(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")  # would refuse CPU tensors
    assert resolve_backend(torch.zeros(1), "torch") == "torch"


@pytest.mark.parametrize("value", ["gpu", "reference"])  # the sequential reference is a function, not a back-end
def test_bad_env_var_value_names_the_choices(monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(ValueError, match=f"{ENV_VAR}='{value}' is not a scan back-end; choose one of auto, cuda, "
                                         "triton, fused, torch$"):
        selective_scan(**small_inputs())


def test_meta_tensors_always_use_torch(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fused")
    assert resolve_backend(torch.empty(1, device="meta")) == "torch"
    inputs = {k: v.to("meta") for k, v in small_inputs().items()}
    assert selective_scan(**inputs).device.type == "meta"


def test_conv_dispatch(monkeypatch):
    assert resolve_backend(torch.zeros(1), op="conv") == "torch"
    monkeypatch.setenv(ENV_VAR, "fused")  # no fused conv: the PyTorch one runs
    x, w = torch.randn(1, 2, 5), torch.randn(2, 3)
    assert causal_conv1d(x, w).shape == (1, 2, 5)
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors"):
        causal_conv1d(x, w, backend="cuda")


def test_available_backends_rejects_unknown_op():
    with pytest.raises(ValueError, match="'scan' or 'conv'"):
        available_backends("cpu", op="attention")


# --------------------------------------------------------------------------- the Triton back-end

@pytest.fixture
def gpu_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_on_cuda_without_mamba_ssm_runs_triton_silently(monkeypatch, no_mamba, gpu_visible):
    calls = _fake_triton(monkeypatch)
    assert available_backends("cuda") == ["triton", "torch"]
    assert available_backends("cpu")[-1] == "torch" and "triton" not in available_backends("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowBackendWarning)  # a kernel runs: nothing slow to report
        assert resolve_backend(torch.device("cuda")) == "triton"
    monkeypatch.setattr(backends, "resolve_backend", lambda *a, **k: "triton")
    assert selective_scan(**small_inputs(), z=None, delta_softplus=True) == "triton result"
    assert calls and calls[0]["delta_softplus"] is True


def test_auto_on_cuda_prefers_mamba_ssm_over_triton(monkeypatch, gpu_visible):
    _fake_cuda_packages(monkeypatch)
    monkeypatch.setattr(backends, "_run_cuda_probe", lambda op, fn, dev: None)
    _fake_triton(monkeypatch)
    assert available_backends("cuda") == ["cuda", "triton", "torch"]
    assert resolve_backend(torch.device("cuda")) == "cuda"
    assert resolve_backend(torch.device("cuda"), "triton") == "triton"
    assert resolve_backend(torch.device("cuda"), "triton", op="conv") == "torch"  # no Triton conv


def test_triton_failing_its_probe_falls_back_to_torch_with_both_reasons(monkeypatch, no_mamba, gpu_visible):
    _fake_triton(monkeypatch, fails="PTXAS error: internal compiler error")
    with pytest.warns(SlowBackendWarning) as record:
        for _ in range(2):
            assert resolve_backend(torch.device("cuda")) == "torch"
    assert len(record) == 1
    message = str(record[0].message)
    assert re.search(r"'torch' back-end instead of mamba-ssm's selective-scan kernel or our Triton kernel: "
                     r"mamba-ssm is not installed.*Triton scan kernel fails on this GPU.*PTXAS error", message)
    assert re.search(r'Fix: .*pip install --no-build-isolation mamba-ssm.*or, for the Triton kernel: use the triton version',
                     message)
    with pytest.raises(BackendUnavailableError, match="'triton' cannot run here.*PTXAS error.*fix: use the triton"):
        resolve_backend(torch.device("cuda"), "triton")


def test_without_triton_auto_skips_it_and_forcing_names_the_install(monkeypatch, no_mamba, gpu_visible):
    monkeypatch.delitem(sys.modules, "nnunet_ext.ops.scan_triton", raising=False)
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ModuleNotFoundError
    assert available_backends("cuda") == ["torch"]
    with pytest.warns(SlowBackendWarning, match=r"Triton kernel cannot run: triton is not installed.*"
                                                r"Fix: .*or, for the Triton kernel: install triton"):
        assert resolve_backend(torch.device("cuda")) == "torch"
    for device in ("cuda", "cpu"):
        with pytest.raises(BackendUnavailableError, match=r"'triton' is not available \(triton is not installed.*"
                                                          r"fix: install triton \(`pip install triton`"):
            resolve_backend(torch.device(device), "triton")


def test_no_gpu_means_no_triton_and_cpu_tensors_need_the_interpreter(monkeypatch, no_mamba):
    _fake_triton(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "triton" not in available_backends("cuda")
    assert "torch sees no CUDA device" in backends._probe_triton_call(None).reason
    with pytest.raises(BackendUnavailableError,
                       match="'triton' needs CUDA tensors, got cpu tensors.*TRITON_INTERPRET=1"):
        selective_scan(**small_inputs(), backend="triton")


def test_mamba_ssm_fixes_ask_for_its_cuda_build():
    """mamba-ssm after 2.3.2 builds selective_scan_cuda only with MAMBA_KEEP_CUDA_BUILD=TRUE (the
    releases before ignore it): both of its fixes set it; causal-conv1d's need no such switch."""
    def fix(op, missing):
        return backends._missing_cuda_package(op, ModuleNotFoundError(f"No module named '{missing}'", name=missing)).fix

    assert "`MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation mamba-ssm`" in fix("scan", "mamba_ssm")
    assert ("`MAMBA_KEEP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation --no-cache-dir "
            "--force-reinstall mamba-ssm`") in fix("scan", "selective_scan_cuda")
    assert "KEEP" not in fix("conv", "causal_conv1d") + fix("conv", "causal_conv1d_cuda")
