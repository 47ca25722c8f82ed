"""Our Keras classes against the reference TF classes of ``transformers==4.55.4`` on weights loaded
from the same PyTorch checkpoint. The reference needs Keras 2 and a transformers older than the
one the other tests compare with, so it runs in its own interpreter (``DEIT_TF_REFERENCE_PYTHON``,
else ``.venv-ref/bin/python``, which ``make test`` builds; see the Makefile) on reference_tf_check.py.

Where the reference is right (logits, hidden states, attentions) the difference is <= 1e-4; where
it is wrong (README, "Compatibility notes"), the numbers that show it are checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from keras_backend import import_deit_keras
from test_keras_parity import PAIRS, twin

import deit

dk = import_deit_keras(need="tensorflow")

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PYTHON = Path(os.environ.get("DEIT_TF_REFERENCE_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))


@pytest.mark.skipif(not REFERENCE_PYTHON.is_file(), reason=f"no reference interpreter at {REFERENCE_PYTHON} (make venv-ref)")
def test_keras_classes_match_the_reference_tf_classes(tmp_path):
    for torch_cls, keras_cls in PAIRS:  # a checkpoint of each class, so that every head is loaded, not initialised
        twin(torch_cls, keras_cls)[0].save_pretrained(tmp_path / torch_cls.__name__)
    src = str(Path(deit.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "KERAS_BACKEND": "tensorflow"}
    run = subprocess.run([str(REFERENCE_PYTHON), str(Path(__file__).with_name("reference_tf_check.py")), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])

    for name in ("DeiTForImageClassificationWithTeacher", "DeiTForImageClassification", "DeiTModel"):
        for key, diff in result[name].items():
            assert diff <= 1e-4, f"TF{name}.{key}: max abs difference {diff:.2e} from the reference TF class"
    interpolation = result["interpolate_pos_encoding"]
    assert interpolation["ours_embeddings_vs_pytorch"] <= 1e-4 and interpolation["ours_logits_vs_pytorch"] <= 1e-4
    # Its transpose and resize move the position embeddings by a good part of their size.
    assert interpolation["reference_embeddings_vs_pytorch"] > 0.2 * interpolation["position_embeddings_max_abs"], interpolation
    assert result["head_mask"] == "NotImplementedError"
    mim = result["masked_image_modeling"]
    assert mim["ours_reconstruction_vs_pytorch"] <= 1e-4 and mim["ours_loss_vs_pytorch"] <= 1e-4
    assert mim["reference_reconstruction_vs_pytorch"] > 1e-2, mim  # its sequence[:, 1:-1] feature map
    # Its loss is the masked L1 at batch size 1 only (it averages over the batch axis in between).
    assert mim["reference_loss_vs_masked_l1_batch1"] <= 1e-4 < mim["reference_loss_vs_masked_l1_batch2"], mim
    print(json.dumps(result, indent=1))
