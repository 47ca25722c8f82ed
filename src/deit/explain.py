"""Where the model looks: attention of the [CLS] and [DIST] tokens on the patch grid.

- :func:`token_attention`: one layer's attention from a query token (``"cls"``, ``"dist"`` or a
  patch index) to the patches, averaged over heads or of one head.
- :func:`attention_rollout`: Abnar & Zuidema (2020), "Quantifying Attention Flow in
  Transformers": each layer's attention (heads averaged, or one head) plus the identity for the
  residual connection, rows renormalised, multiplied from the first layer to the last; the
  query token's row, restricted to the patches and renormalised, is the map.
- :func:`token_similarity`: cosine similarity of the [CLS] and [DIST] token states after the
  embeddings and after every layer (the DeiT paper, section 5.2, reports 0.06 for the learned
  tokens at the input rising to 0.93 at the output of a distilled DeiT-B).
- :func:`explain` runs the model once and gives the maps of both tokens with each head's
  prediction; :func:`render` draws them over the image as a PNG, in multiples of uniform
  attention: a map that spreads evenly reads as a flat 1, not as a full range of colours.

Maps are ``(batch, grid_h, grid_w)`` tensors for any input size (pass
``interpolate_pos_encoding=True`` at sizes other than the model's). ViT checkpoints have no
[DIST] token: asking for it is an error, and :func:`explain` gives the [CLS] map alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .modeling import DeiTPreTrainedModel

METHODS = ("rollout", "last-layer")
TOKENS = {"cls": 0, "dist": 1}


def query_index(model: DeiTPreTrainedModel, token: str | int) -> int:
    """Sequence position of ``token``: ``"cls"``, ``"dist"`` (DeiT only) or a patch number (row-major)."""
    if isinstance(token, int):
        return model.num_prefix_tokens + token
    if token not in TOKENS:
        raise ValueError(f"token must be 'cls', 'dist' or a patch index, got {token!r}")
    if TOKENS[token] >= model.num_prefix_tokens:
        raise ValueError(f"{type(model).__name__} has no [{token.upper()}] token (a ViT checkpoint has [CLS] only)")
    return TOKENS[token]


def _heads(attention: torch.Tensor, head: int | None) -> torch.Tensor:
    """``(batch, heads, tokens, tokens)`` -> ``(batch, tokens, tokens)``: the mean of the heads, or one."""
    if head is None:
        return attention.mean(dim=1)
    if not -attention.shape[1] <= head < attention.shape[1]:
        raise ValueError(f"head must be in 0..{attention.shape[1] - 1}, got {head}")
    return attention[:, head]


def _on_grid(row: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    patches = row[:, num_prefix:]
    if patches.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    return patches.reshape(-1, *grid)


def token_attention(attentions: tuple[torch.Tensor, ...], query: int, num_prefix: int, grid: tuple[int, int],
                    layer: int = -1, head: int | None = None) -> torch.Tensor:
    """Attention weights of sequence position ``query`` on each patch in ``layer`` (the model's
    ``output_attentions``), not renormalised: the prefix tokens keep the rest of the row."""
    return _on_grid(_heads(attentions[layer], head)[:, query], num_prefix, grid)


def attention_rollout(attentions: tuple[torch.Tensor, ...], query: int, num_prefix: int, grid: tuple[int, int],
                      head: int | None = None) -> torch.Tensor:
    """Rollout map of sequence position ``query`` on the patches; each map sums to 1."""
    rollout = None
    for attention in attentions:
        mixed = _heads(attention, head).float()
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    patches = _on_grid(rollout[:, query], num_prefix, grid)
    return patches / patches.sum(dim=(1, 2), keepdim=True)


@torch.no_grad()
def token_similarity(model: DeiTPreTrainedModel, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
    """Cosine similarity of the [CLS] and [DIST] states, averaged over the batch: after the
    embeddings, after each layer, and after the final LayerNorm (``num_hidden_layers + 2`` values)."""
    if model.num_prefix_tokens < 2:
        raise ValueError(f"{type(model).__name__} has no [DIST] token to compare the [CLS] token with")
    out = model.backbone(pixel_values, output_hidden_states=True, interpolate_pos_encoding=interpolate_pos_encoding)
    states = [*out.hidden_states, out.last_hidden_state]
    return torch.stack([torch.cosine_similarity(s[:, 0].float(), s[:, 1].float(), dim=-1).mean() for s in states])


@dataclass
class Explanation:
    """Maps of one forward pass. ``maps[token]``: ``(batch, grid_h, grid_w)``; ``predictions[head]``:
    the predicted class id per image of each head (``"cls"``, ``"dist"``, ``"average"``);
    ``uniform_level``: the value every patch of a map would have if the token attended evenly
    (1/patches for a rollout, which sums to 1 over the patches; 1/tokens for one layer's
    attention, whose row sums to 1 over the prefix tokens and the patches)."""

    maps: dict[str, torch.Tensor]
    predictions: dict[str, torch.Tensor]
    method: str
    head: int | None
    uniform_level: float


@torch.no_grad()
def explain(model: DeiTPreTrainedModel, pixel_values: torch.Tensor, *, method: str = "rollout", tokens: tuple[str, ...] = ("cls", "dist"),
            head: int | None = None, interpolate_pos_encoding: bool = False) -> Explanation:
    """Attention maps of ``tokens`` (those the model has) and each head's prediction, in one forward pass."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    # Attention weights come from the eager path; asked for explicitly, it needs no fallback warning.
    implementation = model.config.attn_implementation
    model.config.attn_implementation = "eager"
    try:
        out = model(pixel_values, output_attentions=True, interpolate_pos_encoding=interpolate_pos_encoding)
    finally:
        model.config.attn_implementation = implementation
    patch = model.config.patch_size
    grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
    num_prefix = model.num_prefix_tokens
    maps = {}
    for token in tokens:
        if TOKENS.get(token, 0) >= num_prefix:
            continue  # a ViT: no [DIST]
        query = query_index(model, token)
        if method == "rollout":
            maps[token] = attention_rollout(out.attentions, query, num_prefix, grid, head=head)
        else:
            maps[token] = token_attention(out.attentions, query, num_prefix, grid, head=head)
    if not maps:
        raise ValueError(f"{type(model).__name__} has none of the tokens {tokens}")
    predictions = {"average": out.logits.argmax(-1)}
    for name, field in (("cls", "cls_logits"), ("dist", "distillation_logits")):
        if getattr(out, field, None) is not None:
            predictions[name] = getattr(out, field).argmax(-1)
    num_patches = grid[0] * grid[1]
    uniform_level = 1.0 / (num_patches if method == "rollout" else num_patches + num_prefix)
    return Explanation(maps, predictions, method, head, uniform_level)


# The colour scale of a map, in multiples of uniform attention, reaches at least this far: a map
# within a few percent of uniform then shows one flat colour, as it should, instead of being
# stretched over the whole colour map (which made a flat map look focused).
MIN_SCALE_TOP = 2.0


def render(image: torch.Tensor, explanation: Explanation, index: int, id2label: dict[int, str], path: str | os.PathLike,
           title: str | None = None) -> None:
    """One PNG: the image, then each token's map over it as a heat map with a colour bar; each
    panel's title names the prediction of that token's head. ``image``: ``(3, H, W)`` in [0, 1].

    Maps are drawn divided by :attr:`Explanation.uniform_level` (1 = the share of a patch under
    even attention, marked on the colour bar) on a perceptually uniform sequential colour map from
    0 to the larger of the map's peak and :data:`MIN_SCALE_TOP`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    from .atomic import atomic_path

    picture = image.permute(1, 2, 0).clamp(0, 1).float().numpy()
    height, width = picture.shape[:2]
    label = lambda head: id2label.get(int(explanation.predictions[head][index]), str(int(explanation.predictions[head][index])))  # noqa: E731
    what = "rollout" if explanation.method == "rollout" else "last-layer attention"
    heads = "mean of heads" if explanation.head is None else f"head {explanation.head}"
    figure, axes = plt.subplots(1, 1 + len(explanation.maps), figsize=(3.4 * (1 + len(explanation.maps)), 3.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(picture, cmap="gray" if picture.shape[2] == 1 else None)
    axes[0].set_title(f"input; averaged heads: {label('average')}", fontsize=9)
    for ax, (token, maps) in zip(axes[1:], explanation.maps.items()):
        relative = maps[index].float() / explanation.uniform_level
        heat = F.interpolate(relative[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        ax.imshow(picture)
        top = max(MIN_SCALE_TOP, float(relative.max()))
        shown = ax.imshow(heat.numpy(), cmap="inferno", vmin=0.0, vmax=top, alpha=0.6)
        bar = figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        bar.solids.set_alpha(1.0)  # the scale itself opaque, so its colours are read without the photograph
        bar.ax.axhline(1.0, color="cyan", linewidth=1.5)
        bar.set_label(f"× uniform (1 = 1/{round(1 / explanation.uniform_level)} per patch)", fontsize=8)
        head_label = label(token) if token in explanation.predictions else label("average")
        ax.set_title(f"[{token.upper()}] {what} ({heads})\n{token.upper()} head predicts: {head_label}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
