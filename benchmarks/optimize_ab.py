"""deit.optimize against an earlier implementation of it, and against the peers, in one interleaved run.

The earlier implementation is another checkout's ``src`` folder (e.g. a ``git worktree`` of an
older commit), imported under the name ``deit_old`` beside this checkout's ``deit``. Both
optimize the same weights; every candidate of a cell is timed in the same interleaved rounds
(:func:`deit.bench.timing.interleaved`), so the ratios compare like with like on a machine
whose speed drifts. Also timed, to decide which parts earn their lines: this checkout's
inference model with the patch embedding as one GEMM over the flattened patches instead of the
convolution, and the old implementation without its batch streams (``streams=1``).

    git worktree add --detach ../deit-old OLD_COMMIT
    .venv/bin/python benchmarks/optimize_ab.py --old ../deit-old/src --markdown ab.md
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

try:
    import deit  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

from deit.bench.inference import PEERS, TURN_SECONDS, _caller, _peer_model, _peer_settings, preset_config
from deit.bench.timing import interleaved, machine_summary, set_threads
from deit.dtypes import DTYPES
from deit.atomic import atomic_write_text
from deit.modeling import DeiTForImageClassificationWithTeacher
from deit.optimize import InferenceModel, optimize


def import_old(src: str) -> ModuleType:
    """The ``deit`` package under ``src``, imported as ``deit_old`` (its imports are relative)."""
    package = Path(src).resolve() / "deit"
    spec = importlib.util.spec_from_file_location("deit_old", package / "__init__.py", submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["deit_old"] = module
    spec.loader.exec_module(module)
    return module


class PatchGemmInferenceModel(InferenceModel):
    """The inference model with the stride-p, kernel-p convolution computed as one matmul over the
    flattened patches (a reshape copy, then the packed GEMM), for the ablation."""

    def _embed(self, pixel_values: torch.Tensor, interpolate: bool) -> torch.Tensor:
        from deit import kernels

        if not hasattr(self, "_patch_packed"):
            weight = self.patch_weight.reshape(self.patch_weight.shape[0], -1).to(self.arithmetic)
            self._patch_packed = kernels.pack_weight(weight, 196)
            self._patch_bias = self.patch_bias.to(self.arithmetic)
        p = self.patch_size
        batch, channels, height, width = pixel_values.shape
        rows, cols = height // p, width // p
        patches = pixel_values[:, :, : rows * p, : cols * p].reshape(batch, channels, rows, p, cols, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * p * p).to(self.arithmetic)
        x = kernels.linear(patches, self._patch_packed, self._patch_bias).to(self.dtype)
        x = torch.cat((self.prefix_tokens.expand(batch, -1, -1), x), dim=1)
        return x + self.position_embeddings  # (native size only: the benchmark's input)


def cell_candidates(size: str, batch_size: int, dtype_name: str, old: ModuleType, peers: tuple[str, ...]) -> tuple[dict, dict]:
    config = preset_config(size)
    torch.manual_seed(0)
    reference = DeiTForImageClassificationWithTeacher(config).eval()
    x = torch.randn(batch_size, 3, config.image_size, config.image_size)
    dtype = DTYPES[dtype_name]
    old_model = old.DeiTForImageClassificationWithTeacher(old.DeiTConfig.from_preset(f"deit-{size}-distilled-patch16-224")).eval()
    old_model.load_state_dict(reference.state_dict())
    cast = x.to(dtype)
    candidates = {
        "new": _caller(optimize(reference, dtype=dtype), cast, autocast=False),
        "new, patch GEMM": _caller(PatchGemmInferenceModel(reference, dtype), cast, autocast=False),
        "old": _caller(old.optimize(copy.deepcopy(old_model), dtype=dtype), cast, autocast=False),
        "old, no streams": _caller(old.optimize(copy.deepcopy(old_model), dtype=dtype, streams=1), cast, autocast=False),
    }
    for peer in peers:
        model = _peer_model(peer, config, reference)
        if model is not None:
            for setting, call, _ in _peer_settings(model, x, dtype_name, compile_peers=False):
                candidates[f"{peer} ({setting})"] = call
    # Both optimized models compute the same function: check before timing.
    with torch.inference_mode():
        new_logits, old_logits = candidates["new"](), candidates["old"]()
    difference = float((new_logits.float() - old_logits.float()).abs().max())
    return candidates, {"new_vs_old_max_abs": difference}


def cell_row(size: str, batch_size: int, dtype_name: str, timings: dict, check: dict, rounds: int) -> str:
    """One cell's table row: images/s of the best rounds, the ratios (best round, median in
    brackets), the best peer, the outputs' difference and the fewest quiet rounds of any candidate."""
    best = {name: batch_size / t.best for name, t in timings.items()}
    median = {name: batch_size / t.median for name, t in timings.items()}

    def ratio(a: str, b: str) -> str:
        return f"{best[a] / best[b]:.3f} ({median[a] / median[b]:.3f})"

    top = max((name for name in best if name.split(" ")[0] in PEERS), key=best.get, default=None)
    peer_text = f"{top}: {best[top]:.1f}" if top else ""
    vs_peer = f"{best['new'] / best[top]:.2f}x ({median['new'] / median[top]:.2f}x)" if top else ""
    old_vs_peer = f"{best['old'] / best[top]:.2f}x" if top else ""
    quiet = min(t.quiet_rounds for t in timings.values())
    return (f"| DeiT-{size[0].upper()} | {batch_size} | {dtype_name} | {best['new']:.1f} | {best['old']:.1f} | {ratio('new', 'old')} "
            f"| {ratio('new, patch GEMM', 'new')} | {ratio('old, no streams', 'old')} | {peer_text} | {vs_peer} | {old_vs_peer} "
            f"| {check['new_vs_old_max_abs']:.1e} | {quiet}/{rounds} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the src folder of the earlier checkout")
    parser.add_argument("--sizes", default="tiny,small,base")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--markdown", help="also write the report to this file")
    args = parser.parse_args()
    set_threads(args.threads)
    old = import_old(args.old)
    peers = tuple(p for p in args.peers.split(",") if p)
    lines = ["| model | batch | dtype | new | old | new / old (median) | new, patch GEMM / new | old, no streams / old "
             "| best peer | new / best peer (median) | old / best peer | max abs new - old | quiet rounds |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for size in args.sizes.split(","):
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            for dtype_name in args.dtypes.split(","):
                candidates, check = cell_candidates(size, batch_size, dtype_name, old, peers)
                print(f"[ab] {size} batch {batch_size} {dtype_name}: {len(candidates)} candidates x {args.rounds} rounds", file=sys.stderr, flush=True)
                timings = interleaved(candidates, rounds=args.rounds, device=torch.device("cpu"), min_seconds=TURN_SECONDS)
                lines.append(cell_row(size, batch_size, dtype_name, timings, check, args.rounds))
                print(lines[-1], flush=True)
    command = "python benchmarks/optimize_ab.py " + " ".join(sys.argv[1:])
    report = (f"Command: `{command}`\n\nMachine: {machine_summary(torch.device('cpu'))}; {args.rounds} interleaved rounds, "
              f"images/s of the best round (median rounds in brackets); quiet rounds: the fewest of any candidate in the cell.\n\n" + "\n".join(lines) + "\n")
    print("\n" + report)
    if args.markdown:
        atomic_write_text(Path(args.markdown), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
