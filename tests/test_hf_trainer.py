"""The reference's ``transformers.Trainer`` (and ``peft``'s LoRA, when installed) trains our
models: a few optimizer steps on a tiny in-memory image set, on the CPU, nothing saved or
reported. Checked: the logged loss is finite and the weights that should move moved."""

from __future__ import annotations

import math

import pytest
import torch

import deit

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer's own dependency

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=32, patch_size=8, num_labels=3)
STEPS = 3


class TinyImages(torch.utils.data.Dataset):
    """12 random 32x32 images with labels, as the dicts of model inputs a Trainer collates."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(12, 3, 32, 32, generator=g)
        self.labels = torch.randint(0, TINY["num_labels"], (12,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def train(model: torch.nn.Module, tmp_path, **args) -> tuple[transformers.Trainer, float]:
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-2,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False, seed=0, **args,
    )
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=TinyImages())
    result = trainer.train()
    return trainer, result.training_loss


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize(
    "cls,checkpointing",
    [(deit.DeiTForImageClassification, False), (deit.DeiTForImageClassification, True), (deit.DeiTForImageClassificationWithTeacher, False)],
    ids=["classifier", "classifier-checkpointing", "with-teacher"],
)
def test_trainer_trains_our_models(tmp_path, cls, checkpointing):
    torch.manual_seed(0)
    model = cls(deit.DeiTConfig(**TINY))
    before = snapshot(model)
    trainer, loss = train(model, tmp_path, gradient_checkpointing=checkpointing)
    assert math.isfinite(loss) and loss > 0
    assert len([entry for entry in trainer.state.log_history if "loss" in entry]) == STEPS
    assert model.is_gradient_checkpointing is checkpointing
    after = snapshot(model)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged


def test_peft_lora_on_query_and_value(tmp_path):
    """The usual memory-saving recipe: frozen model, LoRA adapters, reentrant gradient
    checkpointing, which needs the input embeddings' output to require grad (PEFT asks the model
    for that through enable_input_require_grads)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = deit.DeiTForImageClassification(deit.DeiTConfig(**TINY))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    wrapped = peft.get_peft_model(model, lora)
    trainable = {k for k, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k or "classifier" in k for k in trainable)
    assert sum("lora_A" in k for k in trainable) == 2 * TINY["num_hidden_layers"]  # query and value of each layer
    before = snapshot(wrapped)
    _, loss = train(wrapped, tmp_path, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    assert math.isfinite(loss)
    after = snapshot(wrapped)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    lora_b = {k for k in trainable if "lora_B" in k}  # B starts at zero, so every B that moved got a gradient
    assert lora_b and lora_b <= moved
    assert moved <= trainable  # the frozen weights stayed put
