import pytest

from optcourse.core import hardware


def test_auto_picks_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_available", lambda: False)
    assert hardware.resolve_profile("auto") == "cpu"
    assert hardware.resolve_profile(" CPU ") == "cpu"


def test_auto_picks_cuda_with_gpu(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_available", lambda: True)
    assert hardware.resolve_profile("auto") == "cuda"
    assert hardware.resolve_profile(None) == "cuda"


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown hardware profile 'tpu'.*auto, cpu, cuda"):
        hardware.resolve_profile("tpu")


def test_cuda_requested_without_gpu_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        hardware.resolve_profile("cuda")


def test_capabilities_report_real_backends():
    caps = hardware.capabilities()
    assert caps["torch"] and caps["onnxruntime"]
    assert "CPUExecutionProvider" in caps["ort_providers"]
    # the CPU build of vLLM is in the lock; TensorRT is a GPU-only package
    assert caps["vllm"] is not None
    assert caps["cuda"] is hardware.cuda_available()


def test_describe_path_says_which_path():
    assert "not installed" in hardware.describe_path("TensorRT", False, "engine", "ONNX Runtime CPU")
    assert hardware.describe_path("TensorRT", True, "engine", "ORT") == "TensorRT: engine"


def test_last_level_cache_is_the_largest_data_cache(tmp_path):
    from optcourse.core.hardware import last_level_cache_bytes

    caches = (("Data", "48K"), ("Instruction", "512M"), ("Unified", "2048K"), ("Unified", "105M"))
    for i, (kind, size) in enumerate(caches):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "type").write_text(kind + "\n")
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    assert last_level_cache_bytes(str(tmp_path)) == 105 << 20      # the instruction cache is not data
    assert last_level_cache_bytes(str(tmp_path / "nowhere")) is None


def test_int8_saturates_on_x86_without_vnni_only():
    from optcourse.core.hardware import int8_saturates

    assert int8_saturates({"avx2", "fma"}, "x86_64")
    assert not int8_saturates({"avx2", "avx512_vnni"}, "x86_64")
    assert not int8_saturates({"avx2", "avx_vnni"}, "x86_64")
    assert not int8_saturates(set(), "aarch64")  # Arm's INT8 dot products do not saturate this way


def test_ort_sessions_compute_int8_exactly_where_the_cpu_would_saturate(monkeypatch):
    """A session's INT8 arithmetic must not depend on the CPU: bench.ort_session asks for 16-bit products where
    hardware.int8_saturates, and leaves the fast kernels elsewhere or when told."""
    import onnxruntime as ort

    from optcourse.core import hardware
    from optcourse.measure import bench
    from optcourse.models.digits import load_digits_resnet
    from optcourse.techniques import export

    seen = []
    real = ort.SessionOptions.add_session_config_entry
    monkeypatch.setattr(ort.SessionOptions, "add_session_config_entry",
                        lambda self, key, value: (seen.append((key, value)), real(self, key, value))[1])
    import tempfile, pathlib
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_digits(load_digits_resnet(), pathlib.Path(tmp) / "m.onnx")
        for saturates, exact, expected in ((True, None, True), (False, None, False), (True, False, False),
                                           (False, True, True)):
            seen.clear()
            monkeypatch.setattr(hardware, "int8_saturates", lambda *a, s=saturates: s)
            bench.ort_session(path, exact_int8=exact)
            assert (("session.x64quantprecision", "1") in seen) is expected, (saturates, exact)
