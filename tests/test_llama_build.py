"""The llama.cpp build check (runtime/llama_build.py): a build with AMX compiled in crashed every
route on a Xeon VM (SIGSEGV in ggml_backend_amx_mul_mat), so it is refused with the rebuild."""

import pytest

from toolroute.runtime import llama_build
from toolroute.runtime.llama_build import LlamaBuildError, check_llama_build, crashing_features

WITH_AMX = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
    "OPENMP = 1 | REPACK = 1 | "
)
WITHOUT_AMX = WITH_AMX.replace("AMX_INT8 = 1 | ", "")


def test_amx_in_the_system_info_is_what_crashes():
    assert crashing_features(WITH_AMX) == ["AMX_INT8"]
    assert crashing_features(WITHOUT_AMX) == []
    assert crashing_features(WITH_AMX.replace("AMX_INT8 = 1", "AMX_INT8 = 0")) == []


def test_a_build_with_amx_is_refused_with_the_rebuild_command(monkeypatch):
    monkeypatch.setattr(llama_build, "_installed_system_info", lambda: WITH_AMX)
    with pytest.raises(LlamaBuildError, match="AMX_INT8 = 1") as raised:
        check_llama_build()
    assert llama_build.NO_AMX_FLAGS in str(raised.value) and "make setup" in str(raised.value)
    assert llama_build.main() == 1


def test_the_installed_build_runs_here():
    """`make setup` builds without AMX: this fails on an AMX machine whose wheel has it."""
    check_llama_build()
    assert llama_build.main() == 0


def test_router_load_refuses_before_llama_cpp_opens_the_file(monkeypatch, tmp_path_factory):
    import runtime_support

    from toolroute.runtime import router as router_module

    path = runtime_support.tiny_router_file(tmp_path_factory)
    monkeypatch.setattr(llama_build, "_installed_system_info", lambda: WITH_AMX)
    opened = []
    monkeypatch.setattr(router_module, "Llama", lambda *args, **kwargs: opened.append(args))
    with pytest.raises(LlamaBuildError):
        router_module.Router.load(path, n_threads=1)
    assert opened == []
