"""README.md as a test: every ```python block and every command line of every ```bash block runs,
in order, in one temporary folder, as a new user would run them.

What the README names, the test builds (small, random, offline), and one table says which is
which: ``PLACEHOLDERS`` maps each placeholder path of the README to the file or folder the test
made for it, and ``SHRINK`` appends the smallest settings that still exercise a long command
(a training run of 2 epochs stopped after 2 steps, then resumed). The README text itself is run
unchanged apart from those substitutions. ``deit train ...`` (a literal ``...``) repeats the
arguments of the previous ``deit train`` line.

A block that cannot run here is marked just above it in the README source with
``<!-- not run: REASON -->``; a block that needs an optional extra (TensorFlow) with
``<!-- needs: MODULE -->``, and runs wherever that module is installed (``make test`` installs it); any other block that the test has no way to run fails it (a new
kind of block needs a runner here, or a reason there). Python blocks share one namespace, like a
notebook; Hub names resolve from a Hugging Face cache tree the test writes (``HF_HUB_OFFLINE=1``),
so the Hub examples run too.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

import deit
from deit.bench.photos import photo_sources, photo_variants
from deit.layouts import to_timm_layout

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
HUB_REPO = "facebook/deit-base-distilled-patch16-224"
CLASSES = [str(d) for d in range(10)]  # mnist5k's class names, so one checkpoint serves every data set
SMALL = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=128, image_size=32, patch_size=8)

# README placeholder -> what the test builds for it (relative to the temporary folder).
PLACEHOLDERS = {
    "path/to/deit-base-distilled-patch16-224": "ckpt/deit-small-random",  # HF layout + preprocessor_config.json
    "path/to/checkpoint": "ckpt/deit-small-random",
    "./my-deit": "ckpt/deit-small-random",
    "deit_base_distilled_patch16_224-df68dfff.pth": "ckpt/original.pth",  # the authors' layout: {"model": timm names}
    "cat.jpg": "photos/grace_hopper.jpg",  # a real photograph
    "dog.png": "photos/variant.png",
    "./imagefolder": "data/imagefolder",  # DIR/train/<class>/..., DIR/val/<class>/...
    "./imagenet": "data/imagefolder",
    "hf:./my_ds": "hf:data/my_ds",  # a datasets.save_to_disk folder
    "r50.safetensors": "ckpt/r50.safetensors",  # a random torchvision resnet50 with 10 classes
}
# (command prefix, arguments appended): the smallest run of each long command.
TINY_MODEL = "--image-size 32 --patch-size 8 --hidden-size 32 --depth 1 --heads 2"
RUN_SHRINK = "--epochs 2 --batch-size 8 --num-workers 0 --no-progress"
# The first entry whose prefix starts the line applies.
SHRINK = [
    ("deit train --model runs/", RUN_SHRINK),  # fine-tuning an earlier run's checkpoint: its architecture is fixed
    ("deit train", f"{TINY_MODEL} {RUN_SHRINK}"),
    ("deit pretrain", f"{TINY_MODEL} --mask-patch-size 16 {RUN_SHRINK}"),  # 32 px mask blocks would cover all of a 32 px image
    ("torchrun", f"{TINY_MODEL} --epochs 1 --batch-size 8 --num-workers 0 --no-progress"),
]
# The first run of a resumable pair stops early, so that --resume has something to continue.
STOP_EARLY = "--stop-after-steps 2"


@dataclass
class Block:
    language: str
    source: str
    line: int  # 1-based line of the opening fence
    not_run: str | None  # the reason from a <!-- not run: ... --> marker
    needs: str | None  # an optional package from a <!-- needs: MODULE --> marker (an extra such as deit[tf])


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        before = text[: match.start()].rstrip().splitlines()
        last = before[-1].strip() if before else ""
        marker = re.fullmatch(r"<!--\s*not run:\s*(.+?)\s*-->", last)
        needs = re.fullmatch(r"<!--\s*needs:\s*([\w.]+)\s*-->", last)
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(match.group(1), match.group(2), line, marker.group(1) if marker else None, needs.group(1) if needs else None))
    return blocks


def command_lines(source: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", source)
    lines = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def substitute(text: str) -> str:
    # Longest first, so "./imagefolder" is not caught by a shorter name inside it.
    for placeholder in sorted(PLACEHOLDERS, key=len, reverse=True):
        text = re.sub(rf"(?<![\w/.-]){re.escape(placeholder)}(?![\w/.-])", PLACEHOLDERS[placeholder], text)
    return text


# ------------------------------------------------------------------------- what the README names
def build_checkpoint(folder: Path) -> deit.DeiTForImageClassificationWithTeacher:
    torch.manual_seed(0)
    config = deit.DeiTConfig(**SMALL, id2label=dict(enumerate(CLASSES)))
    model = deit.DeiTForImageClassificationWithTeacher(config).eval()
    model.save_pretrained(folder)
    deit.DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def build_files(root: Path) -> None:
    model = build_checkpoint(root / "ckpt" / "deit-small-random")
    torch.save({"model": to_timm_layout(model)}, root / "ckpt" / "original.pth")

    import torchvision
    from safetensors.torch import save_file

    resnet = torchvision.models.resnet50(weights=None, num_classes=len(CLASSES))
    save_file(resnet.state_dict(), str(root / "ckpt" / "r50.safetensors"))

    (root / "photos").mkdir()
    shutil.copy(photo_sources()[0], root / "photos" / "grace_hopper.jpg")
    variants = photo_variants(2 * len(CLASSES) + 1, seed=0, long_side=(40, 64))
    variants[0].save(root / "photos" / "variant.png")
    for split, offset in (("train", 1), ("val", 1 + len(CLASSES))):
        for k, name in enumerate(CLASSES):
            folder = root / "data" / "imagefolder" / split / name
            folder.mkdir(parents=True)
            for j in range(2):
                variants[(offset + k + j) % len(variants)].save(folder / f"{j}.jpg")

    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    split = {"image": variants[1:1 + len(CLASSES)], "label": list(range(len(CLASSES)))}
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(split, features=features),
        "validation": datasets.Dataset.from_dict(split, features=features),
    }).save_to_disk(str(root / "data" / "my_ds"))


def build_hub_cache(root: Path) -> Path:
    """The folder layout huggingface_hub keeps for a downloaded repository, holding our small checkpoint."""
    repo = root / "hub" / ("models--" + HUB_REPO.replace("/", "--"))
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    shutil.copytree(root / "ckpt" / "deit-small-random", snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root / "hub"


# ----------------------------------------------------------------------------------- the runners
class ReadmeRunner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.namespace: dict = {"__name__": "__readme__"}
        self.last_train_args: str | None = None
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(build_hub_cache(root)), "PYTHONUNBUFFERED": "1",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
        self.commands_run = 0

    def python(self, block: Block) -> None:
        code = compile(substitute(block.source), f"README.md:{block.line}", "exec")
        previous = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
        os.environ.update({k: self.env[k] for k in previous})
        try:
            exec(code, self.namespace)
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def shell(self, block: Block, resumed: set[str]) -> None:
        for line in command_lines(block.source):
            self.command(line, block, resumed)

    def command(self, line: str, block: Block, resumed: set[str]) -> None:
        if re.search(r"(?<!\S)\.\.\.(?!\S)", line):  # "deit train ... --resume": the previous run's arguments
            assert self.last_train_args, f"README.md:{block.line}: '...' with no deit train line before it"
            line = re.sub(r"(?<!\S)\.\.\.(?!\S)", lambda _: self.last_train_args, line)
        elif line.startswith("deit train "):
            self.last_train_args = line[len("deit train "):]
        program = line.split()[0]
        if program not in ("deit", "torchrun"):
            pytest.fail(f"README.md:{block.line}: no runner for {line!r}; run it here or mark its block <!-- not run: REASON -->")
        for prefix, extra in SHRINK:
            if line.startswith(prefix):
                line = f"{line} {extra}"
                # Output folders are fresh per command unless the README resumes them.
                if "--resume" not in line and self._resumed_later(line, resumed):
                    line = f"{line} {STOP_EARLY}"
                break
        if program == "torchrun":
            line = line.replace("--output runs/tiny", "--output runs/tiny-ddp")
        argv = [str(BIN / program)] + shlex.split(substitute(line))[1:]
        result = subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"README.md:{block.line}: {line}\nexit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        self.commands_run += 1

    @staticmethod
    def _resumed_later(line: str, resumed: set[str]) -> bool:
        output = re.search(r"--output (\S+)", line)
        return bool(output) and output.group(1) in resumed


def resumed_outputs(blocks: list[Block]) -> set[str]:
    """Output folders of training runs that a later README line continues with --resume."""
    outputs, last = set(), None
    for block in blocks:
        for line in command_lines(block.source) if block.language == "bash" else []:
            found = re.search(r"--output (\S+)", line)
            if line.startswith(("deit train", "deit pretrain")) and found:
                last = found.group(1)
            if line.startswith(("deit train", "deit pretrain")) and "--resume" in line and last:
                outputs.add(last)
    return outputs


def test_readme_blocks_parse():
    """Guards the parser the test below relies on: markers, languages and line joins."""
    text = "x\n<!-- not run: needs the Hub -->\n```python\nprint(1)\n```\n\n```bash\ndeit a \\\n  --b 1   # c\n```\n<!-- needs: tensorflow -->\n```python\n```\n"
    first, second, third = readme_blocks(text)
    assert (first.language, first.not_run, first.line) == ("python", "needs the Hub", 3)
    assert third.needs == "tensorflow" and third.not_run is None and first.needs is None
    assert second.not_run is None and command_lines(second.source) == ["deit a --b 1"]
    assert substitute("deit eval ./my-deit --data ./imagenet") == "deit eval ckpt/deit-small-random --data data/imagefolder"
    assert substitute("runs/tiny/cat.jpg.bak") == "runs/tiny/cat.jpg.bak"


def test_every_readme_block_runs(tmp_path, record_readme_summary):
    blocks = readme_blocks(README.read_text())
    build_files(tmp_path)
    runner = ReadmeRunner(tmp_path)
    resumed = resumed_outputs(blocks)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the python blocks open relative paths, as a user in that folder would
    try:
        ran, skipped, missing_extra = 0, [], []
        for block in blocks:
            if block.not_run:
                skipped.append(f"README.md:{block.line} ({block.not_run})")
                continue
            if block.needs and importlib.util.find_spec(block.needs) is None:
                missing_extra.append(f"README.md:{block.line} (needs {block.needs}, not installed)")
                continue
            if block.language == "python":
                runner.python(block)
            elif block.language == "bash":
                runner.shell(block, resumed)
            else:
                pytest.fail(f"README.md:{block.line}: a ```{block.language} block the test cannot run; mark it <!-- not run: REASON -->")
            ran += 1
    finally:
        os.chdir(cwd)
    record_readme_summary(f"README.md: ran {ran} blocks ({runner.commands_run} commands), {len(skipped)} marked not run: {'; '.join(skipped) or 'none'}"
                          + (f"; skipped for a missing extra: {'; '.join(missing_extra)}" if missing_extra else ""))
    assert ran >= 7 and runner.commands_run >= 10  # the walk found the README's blocks
    assert len(skipped) <= 2, skipped
