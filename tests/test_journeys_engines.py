"""Journeys of deit.optimize's engines and int8 through the console script: ``deit predict
--backend`` and ``--dtype int8``, ``deit eval --dtype int8``, on a checkpoint folder and real
images (tests/journey_fixtures.py). Skipped where the ``onnx`` extra is absent.

Tolerances: the ONNX Runtime engine computes the float32 function (scores within 1e-4 of the
PyTorch engine's); int8 moves the tiny model's class probabilities by up to 0.05.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from journey_fixtures import console_script, run_deit, save_hf_checkpoint, write_image_folder, write_predict_inputs

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytestmark = pytest.mark.skipif(console_script() is None, reason="no deit console script next to this Python; pip install -e . installs it")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def checkpoint(workspace) -> Path:
    return save_hf_checkpoint(workspace / "tiny-deit")


def scores(proc) -> dict[str, dict[str, float]]:
    assert proc.returncode == 0, proc.stderr
    return {r["name"]: {p["label"]: p["score"] for p in r["predictions"]} for r in json.loads(proc.stdout) if "predictions" in r}


def test_predict_on_each_engine_and_in_int8_gives_the_same_labels(workspace, checkpoint):
    photos = write_predict_inputs(workspace / "photos")
    photos["not_image"].unlink()
    common = ("predict", photos["jpeg"].parent, "--model", checkpoint, "--top-k", "3", "--json")
    on_torch = scores(run_deit(*common, "--backend", "torch"))
    on_onnxruntime = scores(run_deit(*common, "--backend", "onnxruntime"))
    in_int8 = scores(run_deit(*common, "--dtype", "int8"))
    assert set(on_torch) == set(on_onnxruntime) == set(in_int8) and len(on_torch) == 3
    for name, expected in on_torch.items():
        assert max(expected, key=expected.get) == max(on_onnxruntime[name], key=on_onnxruntime[name].get)
        assert all(abs(expected[label] - on_onnxruntime[name][label]) < 1e-4 for label in expected)
        assert all(abs(expected[label] - in_int8[name].get(label, 0.0)) < 0.05 for label in expected)


def test_eval_in_int8_reports_the_accuracies(workspace, checkpoint):
    folder = write_image_folder(workspace / "imagefolder")
    float32 = run_deit("eval", checkpoint, "--data", folder, "--num-workers", "0", "--json")
    int8 = run_deit("eval", checkpoint, "--data", folder, "--num-workers", "0", "--json", "--dtype", "int8")
    assert float32.returncode == 0 and int8.returncode == 0, int8.stderr
    expected, got = json.loads(float32.stdout), json.loads(int8.stdout)
    assert got["num_samples"] == expected["num_samples"] and set(got) == set(expected)


def test_int8_where_it_cannot_run_is_a_clear_error(workspace, checkpoint):
    photo = write_predict_inputs(workspace / "one")["jpeg"]
    proc = run_deit("predict", photo, "--model", checkpoint, "--dtype", "int8", "--backend", "torch")
    assert proc.returncode != 0 and "int8 inference runs on ONNX Runtime" in proc.stderr and "Traceback" not in proc.stderr


def test_export_int8_writes_a_quantized_file_with_the_metadata(workspace, checkpoint):
    import onnx
    import onnxruntime

    target = workspace / "tiny-int8.onnx"
    proc = run_deit("export", checkpoint, "--onnx", target, "--int8", timeout=300)  # (the export alone takes a minute on a loaded machine)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote int8 ONNX graph of DeiTForImageClassificationWithTeacher to {target}" in proc.stdout
    assert "largest absolute difference: logits" in proc.stdout
    nodes = onnx.load(str(target)).graph.node
    ops = [node.op_type for node in nodes]
    assert "MatMulInteger" in ops and "Conv" in ops
    # The two heads stay float32: their weights feed float matmuls, no integer one.
    head_ops = [node.op_type for node in nodes if any("classifier" in name for name in node.input) and node.op_type != "Add"]
    assert sorted(head_ops) in (["MatMul", "MatMul"], ["Gemm", "Gemm"]), head_ops
    metadata = onnxruntime.InferenceSession(str(target)).get_modelmeta().custom_metadata_map
    assert {"id2label", "image_size", "preprocessor_config"} <= set(metadata)
    refused = run_deit("export", checkpoint, "--pt2", workspace / "x.pt2", "--int8")
    assert refused.returncode != 0 and "--int8 quantizes the ONNX file: give --onnx OUT.onnx" in refused.stderr


def test_predict_keeps_the_engine_graph_in_the_cache_and_quantizes_without_advice(workspace, checkpoint, monkeypatch):
    """deit predict keeps the ONNX Runtime engine's graph files in $DEIT_CACHE_DIR (a second
    process reuses them, not exporting again), and the int8 build prints no ONNX Runtime advice."""
    cache = workspace / "predict-cache"
    monkeypatch.setenv("DEIT_CACHE_DIR", str(cache))
    photo = write_predict_inputs(workspace / "one-photo")["jpeg"]
    first = run_deit("predict", photo, "--model", checkpoint, "--dtype", "int8", "--json")
    assert first.returncode == 0, first.stderr
    assert "pre-processing" not in first.stderr, first.stderr
    files = {path.name: path.stat().st_mtime_ns for path in cache.glob("deit-*.onnx")}
    assert len(files) == 2 and sum(name.endswith("-int8.onnx") for name in files) == 1
    again = run_deit("predict", photo, "--model", checkpoint, "--dtype", "int8", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(first.stdout)
    assert {path.name: path.stat().st_mtime_ns for path in cache.glob("deit-*.onnx")} == files
