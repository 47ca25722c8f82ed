"""One journey per ``deit`` command, as a new user runs it: the installed console script in a
subprocess, on image files and checkpoints written to disk (tests/journey_fixtures.py).

Each journey checks what the user would look at: the labels printed, the accuracies, the files
written, the exit code. The checkpoints and image folders are built once for the module.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from journey_fixtures import (
    CLASSES, IMAGE_SIZE, console_script, deit_command, deit_env, run_deit, save_hf_checkpoint, save_original_pth,
    save_timm_safetensors, tiny_deit, tiny_timm, write_image_folder, write_photo, write_predict_inputs,
)
from PIL import Image
from safetensors.torch import load_file

import deit
from deit.bench.photos import photo_variants
from deit.probes import fast_kernels_available
from deit.train import checkpointing

# Images per split of the ImageFolder (write_image_folder's defaults, three classes).
TRAIN_IMAGES, VAL_IMAGES = 4 * len(CLASSES), 2 * len(CLASSES)
# One epoch of one-image steps (so a run is long enough to be killed in the middle), with no
# loader processes and no progress bar: a second or so. The student's Linear layers on oneDNN
# where this PyTorch has the kernels (--fast-kernels on; the SIGKILL journey resumes with them).
FAST_KERNELS = "on" if fast_kernels_available() else "off"
QUICK_TRAIN = ("--epochs", "1", "--batch-size", "1", "--num-workers", "0", "--no-progress", "--device", "cpu",
               "--checkpoint-every-steps", "1", "--deterministic", "--fast-kernels", FAST_KERNELS)

# A preset is 224 px: a tiny width, depth, head count and patch size, and a small input.
PRESET_STUDENT = ("--model", "deit-tiny-distilled-patch16-224", "--hidden-size", "32", "--depth", "1", "--heads", "2",
                  "--patch-size", "8", "--image-size", str(IMAGE_SIZE))

needs_script = pytest.mark.skipif(console_script() is None, reason="no deit console script next to this Python; pip install -e . installs it")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("journeys")


@pytest.fixture(scope="module")
def hf_checkpoint(workspace) -> Path:
    return save_hf_checkpoint(workspace / "tiny-deit")


@pytest.fixture(scope="module")
def image_folder(workspace) -> Path:
    return write_image_folder(workspace / "imagefolder")


@pytest.fixture(scope="module")
def predict_inputs(workspace) -> dict[str, Path]:
    return write_predict_inputs(workspace / "photos")


def pixels_for(folder: Path, image: Path) -> torch.Tensor:
    """The model input a checkpoint folder's own image processor makes of ``image``."""
    processor = deit.DeiTImageProcessor.from_pretrained(folder)
    return processor(Image.open(image), return_tensors="pt")["pixel_values"]


# ------------------------------------------------------------------ the two fixes of issue 12
def test_auto_classes_are_attributes_of_the_package(hf_checkpoint):
    """The README's ``deit.AutoModelForImageClassification.from_pretrained(...)`` (issue 12, item 1.1)."""
    assert {"AutoModel", "AutoModelForImageClassification", "AutoModelForMaskedImageModeling"} <= set(deit.__all__)
    classifier = deit.AutoModelForImageClassification.from_pretrained(hf_checkpoint)
    assert type(classifier) is deit.DeiTForImageClassificationWithTeacher
    assert type(deit.AutoModel.from_pretrained(hf_checkpoint)) is deit.DeiTModel
    assert type(deit.AutoModelForMaskedImageModeling.from_pretrained(hf_checkpoint)) is deit.DeiTForMaskedImageModeling
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(classifier(x).logits, tiny_deit()(x).logits)


# ------------------------------------------------------------------ predict
@needs_script
def test_predict_a_folder_labels_the_images_and_names_the_bad_file(hf_checkpoint, predict_inputs):
    folder = predict_inputs["jpeg"].parent
    good = [predict_inputs[k] for k in ("jpeg", "gray", "png")]  # the folder's sorted order
    text = run_deit("predict", folder, "--model", hf_checkpoint, "--top-k", "2")
    as_json = run_deit("predict", folder, "--model", hf_checkpoint, "--top-k", "2", "--json")

    for proc in (text, as_json):
        assert proc.returncode == 1, proc.stderr
        assert f"{predict_inputs['not_image']}: not an image file" in proc.stderr
        assert "1 of 4 file(s) could not be classified" in proc.stderr
        assert "Traceback" not in proc.stderr

    # Text: per good image its path, then two "score label" lines, best first.
    lines = text.stdout.splitlines()
    assert [lines[i] for i in range(0, 9, 3)] == [str(p) for p in good] and len(lines) == 9
    printed = {}
    for i, path in enumerate(good):
        rows = [line.split() for line in lines[3 * i + 1: 3 * i + 3]]
        scores, labels = [float(s) for s, _ in rows], [name for _, name in rows]
        assert set(labels) <= set(CLASSES) and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
        printed[str(path)] = labels[0]

    results = {r["image"]: r for r in json.loads(as_json.stdout)}
    assert set(results) == {str(p) for p in predict_inputs.values()}
    assert "error" in results[str(predict_inputs["not_image"])]
    model = tiny_deit()
    for path in good:
        predictions = results[str(path)]["predictions"]
        assert [p["label"] for p in predictions] == [CLASSES[p["id"]] for p in predictions]
        assert predictions[0]["label"] == printed[str(path)]
        with torch.no_grad():
            expected = CLASSES[int(model(pixels_for(hf_checkpoint, path)).logits.argmax())]
        assert predictions[0]["label"] == expected, path


@needs_script
def test_same_named_files_from_two_folders_keep_their_own_outputs(workspace, hf_checkpoint):
    """Issue 24, item 6: two inputs named IMG_0001.jpg in different folders both keep their
    attention picture (named by the path under the inputs' common folder), and predict --json
    names them by the same rule; a file reached twice (its folder and itself) is done once."""
    inputs = workspace / "same-names"
    phone = write_photo(inputs / "phone" / "IMG_0001.jpg")
    camera = inputs / "camera" / "IMG_0001.jpg"
    camera.parent.mkdir(parents=True)
    Image.open(phone).convert("L").resize((80, 96)).save(camera)
    out = workspace / "same-names-maps"

    drawn = run_deit("attention", phone, camera, "--model", hf_checkpoint, "--out", out)
    assert drawn.returncode == 0, drawn.stderr
    expected = {"phone/IMG_0001.jpg.attention.png", "camera/IMG_0001.jpg.attention.png"}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == expected
    assert all(f"-> {out / name}" in drawn.stdout for name in expected)

    predicted = run_deit("predict", inputs, phone, "--model", hf_checkpoint, "--top-k", "1", "--json")
    assert predicted.returncode == 0, predicted.stderr
    results = json.loads(predicted.stdout)
    assert [(r["image"], r["name"]) for r in results] == [(str(camera), "camera/IMG_0001.jpg"), (str(phone), "phone/IMG_0001.jpg")]
    model = tiny_deit()
    for result in results:
        with torch.no_grad():
            expected_label = CLASSES[int(model(pixels_for(hf_checkpoint, Path(result["image"]))).logits.argmax())]
        assert result["predictions"][0]["label"] == expected_label


def near_uniform_attention_checkpoint(folder: Path) -> Path:
    """The tiny DeiT with its queries and keys scaled down: every token attends almost evenly
    (a rollout within 0.1 % of 1/16 per patch), as an untrained or flat-looking model does."""
    model = tiny_deit()
    with torch.no_grad():
        for layer in model.deit.encoder.layer:
            layer.attention.attention.query.weight.mul_(0.02)
            layer.attention.attention.key.weight.mul_(0.02)
    return save_hf_checkpoint(folder, model)


def colour_spread_across_first_map(picture: Path) -> int:
    """Largest difference of any colour channel along a row through the middle of the first
    map panel (the second of the picture's three; the input panel is a flat grey image)."""
    pixels = np.asarray(Image.open(picture).convert("RGB")).astype(int)
    height, width, _ = pixels.shape
    row = pixels[height // 2 + 20]
    white = (row == 255).all(axis=1)
    start = next(x for x in range(width // 3, width) if not white[x])
    end = next(x for x in range(start, width) if white[x])
    assert end - start > 100, (start, end)  # the map itself, not a sliver
    segment = row[start:end]
    return int((segment.max(axis=0) - segment.min(axis=0)).max())


@needs_script
def test_attention_of_a_near_uniform_map_is_drawn_flat(workspace):
    """Issue 24, item 11: a rollout within 0.1 % of uniform was stretched over the whole jet
    colour map (red to blue across the panel), so a flat map looked focused; drawn in multiples
    of uniform from 0 to at least 2, it is one colour."""
    checkpoint = near_uniform_attention_checkpoint(workspace / "near-uniform")
    grey = workspace / "grey" / "grey.png"
    grey.parent.mkdir()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(grey)
    out = workspace / "grey-maps"
    proc = run_deit("attention", grey, "--model", checkpoint, "--out", out)
    assert proc.returncode == 0, proc.stderr
    # Measured: 63 levels with the old jet scale, 1 now; 8 leaves room for antialiasing.
    assert colour_spread_across_first_map(out / "grey.png.attention.png") <= 8


# ------------------------------------------------------------------ eval
@needs_script
def test_eval_reports_every_head_on_an_image_folder(hf_checkpoint, image_folder):
    proc = run_deit("eval", hf_checkpoint, "--data", image_folder, "--num-workers", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["num_samples"] == VAL_IMAGES and report["corrupt_images"] == 0
    accuracies = {k: v for k, v in report.items() if k.startswith("acc")}
    assert set(accuracies) == {f"acc{k}{head}" for k in (1, 5) for head in ("", "_cls", "_dist")}
    for name, value in accuracies.items():
        # A share of the six validation images, in percent.
        assert 0 <= value <= 100 and math.isclose(value * VAL_IMAGES / 100, round(value * VAL_IMAGES / 100), abs_tol=1e-6), name
    assert report["acc5"] == 100.0  # three classes: the top five hold every label


# ------------------------------------------------------------------ train
@pytest.fixture(scope="module")
def train_sources(workspace, hf_checkpoint) -> dict[str, tuple[list[str], dict]]:
    """What ``--model`` names, with the architecture the trained model must have."""
    timm_file = save_timm_safetensors(workspace / "timm-deit.safetensors", tiny_timm(distilled=True))
    pth_file = save_original_pth(workspace / "original-vit.pth", tiny_timm(distilled=False))
    timm_body = {"hidden_size": 192, "num_hidden_layers": 1, "model_type": "deit"}
    return {
        "preset": (list(PRESET_STUDENT), {"hidden_size": 32, "num_hidden_layers": 1, "model_type": "deit"}),
        # The checkpoints are trained at their own resolution: no --image-size (issue 12, item 1.2).
        "hf-folder": (["--model", str(hf_checkpoint)], {"hidden_size": 32, "num_hidden_layers": 2, "model_type": "deit"}),
        "timm-safetensors": (["--model", str(timm_file)], timm_body),
        "original-pth": (["--model", str(pth_file)], {**timm_body, "model_type": "vit"}),
    }


def train_command(source_args: list[str], image_folder: Path, output: Path) -> list[str]:
    """``deit train`` for one epoch, checkpointing after every step (the SIGKILL journey needs the
    checkpoints, and its uninterrupted reference is the hf-folder run of test_train_one_epoch)."""
    return ["train", *source_args, "--data", str(image_folder), "--output", str(output), *QUICK_TRAIN]


@pytest.fixture(scope="module")
def train_runs(workspace, image_folder, train_sources):
    """``train_runs(source)``: the finished ``deit train`` process and its output folder, run once."""
    runs: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}

    def run(source: str) -> tuple[subprocess.CompletedProcess, Path]:
        if source not in runs:
            output = workspace / f"train-{source}"
            runs[source] = run_deit(*train_command(train_sources[source][0], image_folder, output)), output
        return runs[source]

    return run


@needs_script
@pytest.mark.parametrize("source", ["preset", "hf-folder", "timm-safetensors", "original-pth"])
def test_train_one_epoch(train_runs, train_sources, source):
    proc, output = train_runs(source)
    assert proc.returncode == 0, proc.stderr

    history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["epoch"] == 0 and history[0]["global_step"] == TRAIN_IMAGES
    metrics = history[0]
    accuracies = [v for k, v in metrics.items() if k.startswith(("val_acc", "ema_acc"))]
    assert accuracies and all(0 <= v <= 100 for v in accuracies)
    assert math.isfinite(metrics["train_loss"])
    assert f"finished 1 epoch: top-1 {metrics['val_acc1']:.2f}" in proc.stdout
    assert f"fast kernels: {FAST_KERNELS} (" in proc.stdout
    assert (output / "curves.png").stat().st_size > 0 and (output / checkpointing.CHECKPOINT_NAME).is_file()
    if source == "preset":  # Issue 24, item 1: a bare preset says loudly that it starts from random weights.
        assert ("model: deit-tiny-distilled-patch16-224 is an architecture preset: RANDOM initial weights, training from scratch "
                "(to fine-tune released weights: --model facebook/deit-tiny-distilled-patch16-224 or a local checkpoint)") in proc.stdout

    trained = deit.AutoModelForImageClassification.from_pretrained(output / "last")
    config = trained.config
    architecture = train_sources[source][1]
    assert {k: getattr(config, k) for k in architecture} == architecture
    assert config.image_size == IMAGE_SIZE and [config.id2label[i] for i in range(config.num_labels)] == list(CLASSES)
    assert ("val_acc1_cls" in metrics) == (config.model_type == "deit")
    # The only epoch is the best one: best/ holds the same weights as last/.
    best, last = (load_file(output / name / "model.safetensors") for name in ("best", "last"))
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)


@needs_script
def test_train_resumed_after_sigkill_ends_with_the_uninterrupted_weights(workspace, image_folder, train_sources, train_runs):
    """Killed (SIGKILL, no chance to clean up) in the middle of the epoch and resumed with
    ``--resume``, a run ends with the same weights, bit for bit, as one that was never stopped:
    the engine makes data order, augmentation and random state functions of the position alone,
    and on the CPU with --deterministic the arithmetic is the same."""
    output = workspace / "train-killed"
    args = train_command(train_sources["hf-folder"][0], image_folder, output)
    killed = subprocess.Popen(deit_command(*args), env=deit_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        checkpoint = output / checkpointing.CHECKPOINT_NAME
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and killed.poll() is None:
            if checkpoint.exists() and checkpointing.load_checkpoint(checkpoint)["global_step"] >= 2:
                break
            time.sleep(0.01)
        assert killed.poll() is None, f"the run ended before it could be killed: {killed.stderr.read()}"
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
    finally:
        killed.kill()
        killed.stderr.close()
    state = checkpointing.load_checkpoint(checkpoint)
    assert state["epoch"] == 0 and 0 < state["batches_done"] < TRAIN_IMAGES, "killed in the middle of the epoch"
    assert not (output / "last").exists()

    resumed = run_deit(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    whole, whole_output = train_runs("hf-folder")
    assert whole.returncode == 0, whole.stderr
    final_whole = load_file(whole_output / "last" / "model.safetensors")
    final_resumed = load_file(output / "last" / "model.safetensors")
    assert final_whole.keys() == final_resumed.keys()
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)
    metrics = [[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] for out in (whole_output, output)]
    assert [m["val_acc1"] for m in metrics[0]] == [m["val_acc1"] for m in metrics[1]]


@pytest.fixture(scope="module")
def unlabelled_folder(workspace) -> Path:
    """Photo variants without labels, in nested folders (searched recursively)."""
    folder = workspace / "unlabelled"
    for index, image in enumerate(photo_variants(5, seed=99, long_side=(40, 64))):
        path = folder / f"batch{index % 2}" / "inner" / f"photo{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
    return folder


@needs_script
def test_train_with_few_labels_and_unlabelled_images(workspace, image_folder, hf_checkpoint, unlabelled_folder):
    """``--labels-per-class 2`` keeps 2 labels per class and moves the other training images into
    the unlabelled pool, ``--unlabeled`` adds a folder of images; all of them train the student,
    the ones without labels through the teacher (here a checkpoint of our own), with soft
    distillation, whose KL is then averaged per image unless ``--distillation-kl-reduction`` says."""
    output = workspace / "train-unlabelled"
    proc = run_deit("train", *PRESET_STUDENT, "--data", image_folder, "--output", output, *QUICK_TRAIN,
                    "--teacher", hf_checkpoint, "--labels-per-class", "2", "--unlabeled", unlabelled_folder,
                    "--distillation-type", "soft", "--distillation-kl-reduction", "mean")
    assert proc.returncode == 0, proc.stderr
    labelled = 2 * len(CLASSES)
    assert f"training images: {labelled} with labels, {TRAIN_IMAGES - labelled + 5} without (learned from the teacher)" in proc.stdout
    assert "soft distillation: the KL averaged over images x classes (--distillation-kl-reduction mean)" in proc.stdout
    history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["global_step"] == TRAIN_IMAGES + 5 and math.isfinite(history[0]["train_loss"])
    assert checkpointing.load_checkpoint(output)["config"]["unlabeled"] == str(unlabelled_folder)
    trained = deit.AutoModelForImageClassification.from_pretrained(output / "last")
    assert [trained.config.id2label[i] for i in range(trained.config.num_labels)] == list(CLASSES)


@needs_script
@pytest.mark.parametrize("case", ["no teacher", "empty folder"])  # the other errors: tests/train/test_partial_labels.py
def test_train_with_unlabelled_images_refuses_bad_settings(workspace, image_folder, hf_checkpoint, unlabelled_folder, case):
    empty = workspace / "empty-unlabelled"
    (empty / "sub").mkdir(parents=True, exist_ok=True)
    teacher = ["--teacher", str(hf_checkpoint)]
    args, message = {
        "no teacher": (["--unlabeled", str(unlabelled_folder)], f"--unlabeled {unlabelled_folder} needs a teacher (--teacher)"),
        "empty folder": ([*teacher, "--unlabeled", str(empty)], f"{empty}: no images"),
    }[case]
    output = workspace / f"train-refused-{case.replace(' ', '-')}"
    proc = run_deit("train", *PRESET_STUDENT, "--data", image_folder, "--output", output, *QUICK_TRAIN, *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (output / checkpointing.CHECKPOINT_NAME).exists()


# ------------------------------------------------------------------ convert
@needs_script
def test_convert_original_to_folder_to_timm_and_back_then_predict(workspace, predict_inputs):
    """An original DeiT ``.pth`` -> a Hugging Face folder -> a timm file -> a folder again; the
    last folder predicts what the original timm model does."""
    original = tiny_timm(distilled=True, seed=3)
    work = workspace / "convert"
    work.mkdir()
    pth = save_original_pth(work / "deit-original.pth", original)
    folder, timm_file, back = work / "from-pth", work / "deit.safetensors", work / "back"

    to_folder = run_deit("convert", pth, folder)
    assert to_folder.returncode == 0, to_folder.stderr
    assert f"wrote DeiTForImageClassificationWithTeacher to {folder}/" in to_folder.stdout
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}

    to_timm = run_deit("convert", folder, timm_file, "--to", "timm")
    assert to_timm.returncode == 0, to_timm.stderr
    assert f"wrote DeiTForImageClassificationWithTeacher in timm layout to {timm_file}" in to_timm.stdout
    # The conversions rename and split/join tensors only: the timm file is the original state
    # dict bit for bit (so timm's own class loads it, strictly).
    written, expected = load_file(timm_file), original.state_dict()
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)

    to_hf = run_deit("convert", timm_file, back)
    assert to_hf.returncode == 0, to_hf.stderr
    proc = run_deit("predict", predict_inputs["jpeg"], "--model", back, "--top-k", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    predicted = json.loads(proc.stdout)[0]["predictions"][0]
    with torch.no_grad():
        probabilities = original(pixels_for(back, predict_inputs["jpeg"])).softmax(-1)[0]
    # timm files carry no label names, so the labels are LABEL_<id>.
    assert predicted["label"] == f"LABEL_{int(probabilities.argmax())}"
    # LayerNorm eps: timm's 1e-6 travels in the converted config, so only float rounding differs.
    assert predicted["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)


@needs_script
def test_a_1000_class_timm_file_gets_the_imagenet_class_names(workspace, predict_inputs):
    """Issue 24, item 10: a timm file carries no names; with 1000 classes it is an ImageNet-1k
    classifier, so deit convert writes, and deit predict shows, the ImageNet-1k names
    (torchvision's list) instead of LABEL_0 ... LABEL_999."""
    from torchvision.models import ResNet18_Weights

    imagenet = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert imagenet[0] == "tench" and len(imagenet) == 1000
    original = tiny_timm(distilled=True, seed=5, num_classes=1000)
    timm_file = save_timm_safetensors(workspace / "imagenet-deit.safetensors", original)
    folder = workspace / "imagenet-deit"

    converted = run_deit("convert", timm_file, folder)
    assert converted.returncode == 0, converted.stderr
    assert "ImageNet-1k class names" in converted.stdout
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(imagenet)}

    with torch.no_grad():
        top = int(original(pixels_for(folder, predict_inputs["jpeg"])).argmax())
    for model in (folder, timm_file):  # converted, and the timm file loaded as it is
        proc = run_deit("predict", predict_inputs["jpeg"], "--model", model, "--top-k", "1", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["predictions"][0]["label"] == imagenet[top], model


# ------------------------------------------------------------------ export
@needs_script
def test_export_onnx_runs_in_onnxruntime(workspace, hf_checkpoint):
    """Every head, a batch axis named "batch", and the labels and preprocessing in the file's
    metadata, read back by onnxruntime (issue 24, item 10)."""
    ort = pytest.importorskip("onnxruntime")
    onnx_file = workspace / "tiny-deit.onnx"
    # --no-check: the command's own onnxruntime comparison is what this test does, independently.
    proc = run_deit("export", hf_checkpoint, "--onnx", onnx_file, "--no-check")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote ONNX graph of DeiTForImageClassificationWithTeacher to {onnx_file}" in proc.stdout

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    heads = ["logits", "cls_logits", "distillation_logits"]
    assert [i.name for i in session.get_inputs()] == ["pixel_values"] and [o.name for o in session.get_outputs()] == heads
    assert session.get_inputs()[0].shape == ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
    assert all(o.shape == ["batch", len(CLASSES)] for o in session.get_outputs())
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    produced = session.run(None, {"pixel_values": pixels.numpy()})
    with torch.no_grad():
        expected = tiny_deit()(pixels)
    # float32 through another runtime's kernels: measured under 1e-6 on logits of order one; 1e-4
    # is the bound deit export's own check applies (its --atol default).
    for name, values in zip(heads, produced):
        np.testing.assert_allclose(values, getattr(expected, name).numpy(), atol=1e-4, rtol=0, err_msg=name)

    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["id2label"]) == {str(i): name for i, name in enumerate(CLASSES)}
    processor = deit.DeiTImageProcessor.from_pretrained(hf_checkpoint)
    assert json.loads(metadata["image_mean"]) == list(processor.image_mean) and json.loads(metadata["image_std"]) == list(processor.image_std)
    assert metadata["image_size"] == str(IMAGE_SIZE)
    assert metadata["resize"].startswith(f"resize 36x36 (bicubic), then centre crop {IMAGE_SIZE}x{IMAGE_SIZE}")
    assert json.loads(metadata["preprocessor_config"]) == json.loads(json.dumps(processor.to_dict()))


# ------------------------------------------------------------------ bench
@needs_script
def test_bench_inference_prints_a_table(workspace):
    """Both dtypes: the bf16 cell must also run on CPUs without bf16 kernels (AVX2), where oneDNN
    refuses bf16 weights. Ours is each engine, the plain model, and int8 where ONNX Runtime is;
    the peers are timm and, where installed, ONNX Runtime in float32 and int8."""
    pytest.importorskip("timm")
    from deit.onnx_engine import onnxruntime_available

    report, raw = workspace / "bench.md", workspace / "bench.json"
    peers = "timm,onnxruntime,onnxruntime-int8" if onnxruntime_available() else "timm"
    proc = run_deit("bench", "inference", "--sizes", "tiny", "--batch-sizes", "1", "--dtypes", "fp32,bf16", "--rounds", "1",
                    "--peers", peers, "--threads", "1", "--output", report, "--json", raw)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = [line for line in out.splitlines() if line.startswith("|")]
    header, rule, *cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert header[:5] == ["model", "batch", "dtype", "implementation (best setting)", "images/s"]
    assert len(rule) == len(header) and all(set(c) <= set("-:") for c in rule)
    assert all(len(row) == len(header) for row in cells) and all(float(row[4]) > 0 for row in cells)
    assert {tuple(row[:3]) for row in cells} == {("DeiT-T", "1", "fp32"), ("DeiT-T", "1", "bf16")}
    assert report.read_text().count("| DeiT-T |") == len(cells)
    # Per dtype: ours (deit.optimize first, then each engine of ours, the plain model), the peers,
    # and the two Linear-only bounds last.
    fp32 = [row[3] for row in cells if row[2] == "fp32"]
    assert fp32[0].startswith("ours (fp32, deit.optimize: ") and [name.split(" (")[0] for name in fp32[-2:]] == ["Linear-only bound"] * 2
    assert "ours, PyTorch engine (fp32, backend='torch'" in " ".join(fp32) and "ours, plain model (fp32, the eager model)" in fp32
    assert "timm (fp32)" in fp32
    assert "| 1.00x (1.00x) |" in out  # the best peer against itself, best and median rounds
    assert "| DeiT-T | 1 | bf16 | ours (bf16, deit.optimize: PyTorch engine) |" in out and "| DeiT-T | 1 | bf16 | timm (bf16" in out
    names = {row["implementation"] for row in json.loads(raw.read_text())["results"]}
    assert {"ours", "ours, PyTorch engine", "ours, plain model", "timm"} <= names
    if onnxruntime_available():
        assert {"ours, ONNX Runtime engine", "ours int8", "onnxruntime", "onnxruntime-int8"} <= names
        int8_row = next(line for line in out.splitlines() if line.startswith("| DeiT-T | 1 | fp32 | ours int8"))
        int8_peer = next(line for line in out.splitlines() if line.startswith("| DeiT-T | 1 | fp32 | onnxruntime-int8"))
        assert "| 1.00x (1.00x) |" in int8_peer  # int8 rows are compared with the int8 peer
        assert int8_row.count("x (") == 2  # vs the int8 peer, vs ours plain


# ------------------------------------------------------------------ demo
@needs_script
def test_demo_quick(workspace):
    out = workspace / "demo"
    proc = run_deit("demo", "--quick", "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # 30 training images per class, 3 of them labelled: the teacher and the labels-only student see 30 labels.
    assert "| teacher (SmallConvNet, 30 labelled images) |" in proc.stdout
    assert "| student, no distillation, 30 labelled images |" in proc.stdout
    assert "| student, hard distillation, 30 labelled + 270 unlabelled images |" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["teacher_acc1"] <= 100 and (results["train_images"], results["labelled_images"]) == (300, 30)
    assert set(results["students"]) == {"no distillation, 30 labelled images", "hard distillation, 30 labelled + 270 unlabelled images"}
    for heads in results["students"].values():
        assert set(heads) == {"cls", "dist", "avg"} and all(0 <= v <= 100 for v in heads.values())
    assert (out / "curves.png").stat().st_size > 0
    student = deit.AutoModelForImageClassification.from_pretrained(out / "student")
    assert type(student) is deit.DeiTForImageClassificationWithTeacher and student.config.num_labels == 10
    assert (out / "student" / "model.safetensors").is_file()
    # The distilled student's attention maps of the held-out digits (deit attention), one PNG each.
    pictures = sorted((out / "attention").glob("*.attention.png"))
    assert len(pictures) == len(list((out / "samples").glob("*.png"))) > 0
    with Image.open(pictures[0]) as picture:
        assert picture.format == "PNG" and picture.size == (1020, 360)
