"""Run by test_keras_reference.py in an interpreter that has ``transformers==4.55.4`` (the last
release with the TF DeiT classes) and ``tf-keras``: compares those classes with ours on weights
loaded from one PyTorch checkpoint, and prints the max abs differences as JSON.

    python tests/keras/reference_tf_check.py FOLDER

FOLDER holds one PyTorch checkpoint per class, in subfolders named after the PyTorch class.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the reference TF classes need Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import deit.keras as dk  # noqa: E402  (first: it imports torch._dynamo before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import deit  # noqa: E402


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def stack_diff(ours, reference) -> float:
    return max(max_diff(a, b) for a, b in zip(ours, reference, strict=True))


def main(root: str) -> dict:
    assert transformers.__version__ == "4.55.4", transformers.__version__
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    result: dict = {"transformers": transformers.__version__}

    for name in ("DeiTForImageClassificationWithTeacher", "DeiTForImageClassification", "DeiTModel"):
        folder = os.path.join(root, name)
        reference = getattr(transformers, "TF" + name).from_pretrained(folder, from_pt=True)
        ours = getattr(dk, "TF" + name).from_pretrained(folder)
        got = ours(pixels, output_hidden_states=True, output_attentions=True)
        expected = reference(tf.constant(pixels), output_hidden_states=True, output_attentions=True)
        keys = [k for k in ("logits", "cls_logits", "distillation_logits", "last_hidden_state", "pooler_output") if k in got.keys()]
        result[name] = {k: max_diff(got[k], expected[k]) for k in keys}
        result[name]["hidden_states"] = stack_diff(got.hidden_states, expected.hidden_states)
        result[name]["attentions"] = stack_diff(got.attentions, expected.attentions)

    # Where the reference is wrong (the README's compatibility note): the numbers that show it.
    folder = os.path.join(root, "DeiTForImageClassificationWithTeacher")
    teacher = transformers.TFDeiTForImageClassificationWithTeacher.from_pretrained(folder, from_pt=True)
    ours = dk.TFDeiTForImageClassificationWithTeacher.from_pretrained(folder)
    torch_model = deit.DeiTForImageClassificationWithTeacher.from_pretrained(folder)
    larger = rng.standard_normal((2, 3, 48, 40)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(larger), interpolate_pos_encoding=True, output_hidden_states=True)
    reference_out = teacher(tf.constant(larger), interpolate_pos_encoding=True, output_hidden_states=True)
    ours_out = ours(larger, interpolate_pos_encoding=True, output_hidden_states=True)
    result["interpolate_pos_encoding"] = {
        "position_embeddings_max_abs": float(torch_model.deit.embeddings.position_embeddings.detach().abs().max()),
        "reference_embeddings_vs_pytorch": max_diff(reference_out.hidden_states[0], expected.hidden_states[0]),
        "reference_logits_vs_pytorch": max_diff(reference_out.logits, expected.logits),
        "ours_embeddings_vs_pytorch": max_diff(ours_out.hidden_states[0], expected.hidden_states[0]),
        "ours_logits_vs_pytorch": max_diff(ours_out.logits, expected.logits),
    }
    try:
        teacher(tf.constant(pixels), head_mask=tf.ones((4,)))
        result["head_mask"] = "accepted"
    except NotImplementedError:
        result["head_mask"] = "NotImplementedError"

    folder = os.path.join(root, "DeiTForMaskedImageModeling")
    mim_reference = transformers.TFDeiTForMaskedImageModeling.from_pretrained(folder, from_pt=True)
    mim_ours = dk.TFDeiTForMaskedImageModeling.from_pretrained(folder)
    mim_torch = deit.DeiTForMaskedImageModeling.from_pretrained(folder)
    mask = rng.random((2, 16)) < 0.5
    with torch.no_grad():
        expected = mim_torch(torch.from_numpy(pixels), bool_masked_pos=torch.from_numpy(mask))
    reference_out = mim_reference(tf.constant(pixels), bool_masked_pos=tf.constant(mask))
    ours_out = mim_ours(pixels, bool_masked_pos=mask)
    def masked_l1(reconstruction, mask) -> float:  # the loss of the PyTorch class, over the whole batch's masked pixels
        pixel_mask = np.repeat(np.repeat(mask.reshape(-1, 4, 4), 8, axis=1), 8, axis=2)[:, None].astype(np.float32)
        return float((np.abs(pixels[: len(mask)] - np.asarray(reconstruction)) * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / 3)

    single = mim_reference(tf.constant(pixels[:1]), bool_masked_pos=tf.constant(mask[:1]))
    result["masked_image_modeling"] = {
        # Its loss against the masked L1 of its own reconstruction: batch of 2, then batch of 1.
        "reference_loss_vs_masked_l1_batch2": abs(float(np.ravel(reference_out.loss)[0]) - masked_l1(reference_out.reconstruction, mask)),
        "reference_loss_vs_masked_l1_batch1": abs(float(np.ravel(single.loss)[0]) - masked_l1(single.reconstruction, mask[:1])),
        "reference_reconstruction_vs_pytorch": max_diff(reference_out.reconstruction, expected.reconstruction),
        "ours_reconstruction_vs_pytorch": max_diff(ours_out.reconstruction, expected.reconstruction),
        "ours_loss_vs_pytorch": max_diff(ours_out.loss, expected.loss),
    }
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])))
