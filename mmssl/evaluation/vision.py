"""Image probes on frozen features, and an optional end-to-end fine-tuning protocol.

Frozen features are scored with the weighted kNN of Wu et al. (arXiv:1805.01978) at k = 20 and
200, as solo-learn and DINO (arXiv:2104.14294) report it, and with a linear probe (L-BFGS on
standardised features, or MAE's protocol: ``mmssl.evaluation.linear``); raw pixels and the
majority class are the floors an encoder must beat. Every column (trained encoder, random encoder,
pixels) goes through the same normalisation: kNN L2-normalises each feature vector, the L-BFGS
probe standardises each dimension with the train mean and std, MAE's probe batch-normalises
without affine parameters; pixels enter as the same normalised view the encoders see.
``finetune`` is the end-to-end protocol of MAE (arXiv:2111.06377, section 4) without its extras
(layer-wise decay, mixup).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmssl.evaluation.audio import majority
from mmssl.evaluation.collapse import rankme
from mmssl.evaluation.knn import KS, TEMPERATURE, check_readout, extract_features, knn_classify, pixels
from mmssl.evaluation.linear import PROTOCOLS, check_protocol, probe
from mmssl.optim import warmup_cosine as lr_at  # warm-up, then cosine decay to 0

PIXEL_SIZE = 32  # raw pixels are averaged down to at most 32 x 32 (3,072 dims: CIFAR's own size)


class RandomSubset:
    """A fixed random subset of a source, in the source's order. Image folders list items class by
    class, so the first max_items would cover only the first classes."""

    def __init__(self, source: Any, max_items: int | None, seed: int = 0):
        self.source, self.name, self.vocab = source, getattr(source, "name", None), getattr(source, "vocab", None)
        n = len(source)
        if max_items is None or max_items >= n:
            self.indices = list(range(n))
        else:
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_items]
            self.indices = pick.sort().values.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.source[self.indices[i]]


class HeldItems:
    """A source whose items are kept once read, while their images fit in ``max_mib``: fine-tuning walks
    its training set once an epoch, for the trained and the random encoder in turn, and without this
    every visit decodes the image again. Items are returned as read (callers must not change them); any
    other attribute is the source's."""

    def __init__(self, source: Any, max_mib: float):
        self.source, self.budget, self.used = source, max_mib * 2**20, 0
        self.items: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        item = self.items.get(i)
        if item is None:
            item = self.source[i]
            size = item["image"].numel() * item["image"].element_size()
            if self.used + size <= self.budget:
                self.items[i], self.used = item, self.used + size
        return item

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)


def image_probes(
    encoders: dict[str, nn.Module],
    train: Any,
    test: Any,
    transform: Callable[[torch.Tensor], torch.Tensor],
    ks: Sequence[int] = KS,
    linear: bool = True,
    max_train: int | None = None,
    max_test: int | None = None,
    readouts: dict[str, str] | None = None,
    linear_protocol: str = "lbfgs",
    seed: int = 0,
    random_init_seed: int | None = None,
) -> dict[str, Any]:
    """kNN and linear probes of each encoder's frozen features, beside raw pixels.

    Args:
        encoders: name -> encoder (``forward_features`` / ``pool``); run frozen, in eval mode.
            One encoder may appear under several names, each with its own readout.
        train, test: labelled image sources; items labelled -1 are left out of both.
        transform: deterministic view, uint8 (3, H, W) -> float (3, S, S).
        max_train, max_test: a fixed random subset of at most this many items of each split.
        readouts: name -> ``pooled`` (the default for a name left out) or ``tokens``, see
            ``mmssl.evaluation.knn.read_out``.
        linear_protocol: ``lbfgs``, ``lbfgs_fixed`` or ``mae`` (see ``mmssl.evaluation.linear``).
        seed: draws the subsets, the part of train held out to choose the L-BFGS probe's L2, and the
            MAE probe's batches and initial weight.
        random_init_seed: the seed the caller initialised its random encoder with, for the table.
    Returns:
        {"train": name, "test": name, "num_train": n, "num_test": m, "seed": seed,
         "knn": {column: {k: accuracy}}, "linear": {column: accuracy} (when linear=True),
         "linear_protocol": str, "linear_l2": {column: the L-BFGS probe's L2} (lbfgs protocols), "majority": accuracy, "rankme": {column: effective rank of the
         test features} (label-free, ``mmssl.evaluation.collapse.rankme``), "table": str}; columns are
         the encoder names and "pixels".
    """
    check_protocol(linear_protocol)
    train_src, test_src = RandomSubset(train, max_train, seed), RandomSubset(test, max_test, seed)
    report: dict[str, Any] = {"train": getattr(train, "name", None) or "train", "test": getattr(test, "name", None) or "test",
                              "seed": seed, "random_init_seed": random_init_seed, "linear_protocol": linear_protocol}
    readouts = readouts or {}
    for how in readouts.values():
        check_readout(how)
    unknown = sorted(set(readouts) - set(encoders))
    if unknown:
        raise ValueError(f"readouts name {unknown}, which are not among the encoders {sorted(encoders)}")
    featurizers: dict[str, Callable[[Any], tuple[torch.Tensor, torch.Tensor]]] = {
        name: functools.partial(extract_features, enc, transform=transform, readout=readouts.get(name, "pooled"))
        for name, enc in encoders.items()
    }
    featurizers["pixels"] = lambda src: pixels(src, transform, size=PIXEL_SIZE)
    vocab = getattr(train, "vocab", None)
    for name, featurize in featurizers.items():
        train_x, train_y = featurize(train_src)
        test_x, test_y = featurize(test_src)
        train_x, train_y = train_x[train_y >= 0], train_y[train_y >= 0]
        test_x, test_y = test_x[test_y >= 0], test_y[test_y >= 0]
        report["num_train"], report["num_test"] = len(train_y), len(test_y)
        if not len(train_y) or not len(test_y):
            break  # labels are a property of the data, so no other column can be scored either
        num_classes = len(vocab) if vocab else int(max(train_y.max(), test_y.max())) + 1
        report.setdefault("knn", {})[name] = knn_classify(train_x, train_y, test_x, test_y, ks, num_classes=num_classes)
        report.setdefault("rankme", {})[name] = rankme(test_x)
        if linear:
            res = probe(linear_protocol, train_x, train_y, test_x, test_y, num_classes=num_classes, seed=seed)
            report.setdefault("linear", {})[name] = res["accuracy"]
            if "l2" in res:
                report.setdefault("linear_l2", {})[name] = res["l2"]
        report["majority"] = majority(test_y)
    report["table"] = format_table(report, list(featurizers), ks)
    return report


def format_table(report: dict[str, Any], names: list[str], ks: Sequence[int]) -> str:
    """Rows: kNN per k, then linear; columns: ``names`` then majority. Accuracies in %."""
    if "knn" not in report:
        return (f"no labelled images in train {report['train']} ({report['num_train']}) or test "
                f"{report['test']} ({report['num_test']}): nothing to probe (pass --label-column)")
    width = max(10, *(len(n) + 2 for n in names))
    protocol = report.get("linear_protocol", "lbfgs")
    seeds = f"seed {report.get('seed', 0)} (subsets" + {"mae": ", MAE probe)", "lbfgs": ", L2's held-out part)"}.get(protocol, ")")
    if report.get("random_init_seed") is not None:
        seeds += f", random encoder initialised with seed {report['random_init_seed']}"
    lines = [(f"frozen features, accuracy % (train {report['train']}: {report['num_train']} images -> "
              f"test {report['test']}: {report['num_test']} images; {seeds})"),
             f"knn: cosine similarity of L2-normalised features, top-k votes weighted exp(sim / {TEMPERATURE})"]
    if "linear" in report:
        lines.append(f"linear: {PROTOCOLS[protocol]}")
    lines.append("every column alike; pixels are the encoders' normalised input view, at most "
                 f"{PIXEL_SIZE} x {PIXEL_SIZE}")
    if "rankme" in report:
        lines.append("RankMe: effective rank of each column's test features (arXiv:2210.02885; 1 when they lie "
                     "on a line, at most min(images, dimensions))")
    lines.append(f"{'probe':<18}" + "".join(f"{n:>{width}}" for n in names) + f"{'majority':>{width}}")
    rows = []
    for k in ks:
        # Say so when k covers the whole train set: the vote is then over every training image.
        label = f"knn k={k}" + (f" (={report['num_train']})" if k > report["num_train"] else "")
        rows.append((label, {n: report["knn"][n][k] for n in names}))
    if "linear" in report:
        mae = report.get("linear_protocol") == "mae"
        rows.append(("linear (MAE)" if mae else "linear", report["linear"]))
    for label, accs in rows:
        cells = "".join(f"{100 * accs[n]:>{width}.1f}" for n in names)
        lines.append(f"{label:<18}{cells}{100 * report['majority']:>{width}.1f}")
    if "linear_l2" in report and protocol == "lbfgs":  # the penalty each column's probe was fitted with
        lines.append(f"{'linear L2 chosen':<18}" + "".join(f"{report['linear_l2'][n]:>{width}g}" for n in names))
    if "rankme" in report:  # not an accuracy: the effective rank of the test features, no labels used
        lines.append(f"{'RankMe (no labels)':<18}" + "".join(f"{report['rankme'][n]:>{width}.1f}" for n in names))
    return "\n".join(lines)


# MAE's fine-tuning base rate scaled to the batch by its rule: 5e-4 x 64 / 256.
FINETUNE_BATCH = 64
FINETUNE_LR = 5e-4 * FINETUNE_BATCH / 256


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe:
    """End-to-end fine-tuning as MAE runs it (arXiv:2111.06377, appendix A.2, Table 9): AdamW with
    weight decay 0.05 on weights (none on biases, norms, positions and the class token), layer-wise
    rate decay 0.75, drop path 0.1, mixup 0.8 and cutmix 1.0 (one of the two per batch, evenly),
    label smoothing 0.1; a 10% warm-up, then a cosine. Not done: RandAugment and random erasing (the
    view is MAE's pre-training crop and flip). Layer decay and drop path apply to a ViT (its blocks
    are the layers); another encoder is fine-tuned with one rate and no drop path. 0 turns an
    item off (1 for ``layer_decay``)."""

    steps: int = 1000
    lr: float = FINETUNE_LR
    batch_size: int = FINETUNE_BATCH
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong with it) for each bad setting; empty when every one is usable."""
        bad = [(f, "must be 1 or more") for f in ("steps", "batch_size") if getattr(self, f) < 1]
        bad += [(f, "must be a positive rate") for f in ("lr",) if not self.lr > 0]
        bad += [(f, "must be 0 or more") for f in ("weight_decay", "mixup", "cutmix") if not getattr(self, f) >= 0]
        bad += [(f, "must be in (0, 1]") for f in ("layer_decay",) if not 0 < self.layer_decay <= 1]
        bad += [(f, "must be in [0, 1)") for f in ("drop_path", "label_smoothing") if not 0 <= getattr(self, f) < 1]
        return bad

    def describe(self, layered: bool = True) -> str:
        """The recipe in words, as the report prints it; ``layered``: the encoder takes layer decay
        and drop path."""
        parts = [f"{self.steps} steps of {self.batch_size}", f"AdamW lr {self.lr:g} with warm-up and cosine",
                 f"weight decay {self.weight_decay:g}"]
        if layered:
            parts += [f"layer decay {self.layer_decay:g}", f"drop path {self.drop_path:g}"]
        mixing = [f"{name} {alpha:g}" for name, alpha in (("mixup", self.mixup), ("cutmix", self.cutmix)) if alpha > 0]
        parts += [" / ".join(mixing) if mixing else "no mixup or cutmix", f"label smoothing {self.label_smoothing:g}",
                  "crop and flip"]
        return ", ".join(parts)


def vit_blocks(model: nn.Module) -> nn.ModuleList | None:
    """A ViT's blocks, the layers of layer-wise rate decay and drop path (``patch_embed``, then
    ``blocks`` that take ``drop_path``); None for any other encoder, which fine-tuning trains at one
    rate without drop path."""
    blocks = getattr(model, "blocks", None)
    if not hasattr(model, "patch_embed") or not isinstance(blocks, nn.ModuleList) or not all(
            hasattr(b, "drop_path") for b in blocks):
        return None
    return blocks


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int] | None:
    """({parameter name: layer}, number of layers) for layer-wise rate decay, as MAE counts them: the
    patch embedding, positions and class token are layer 0, block i is layer i + 1, the final norm
    (and the head) the last layer; None for an encoder that is not a ViT (``vit_blocks``)."""
    blocks = vit_blocks(model)
    if blocks is None:
        return None
    last = len(blocks) + 1
    ids = {}
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            ids[name] = int(name.split(".")[1]) + 1
        elif name.startswith(("patch_embed", "pos_embed", "cls_token")):
            ids[name] = 0
        else:
            ids[name] = last
    return ids, last


def param_groups(model: nn.Module, head: nn.Module, recipe: FinetuneRecipe) -> list[dict]:
    """AdamW groups: each parameter's rate scale (``layer_decay`` ** (layers - its layer) on a ViT, else
    1) and weight decay (none on one-dimensional parameters, positions and the class token)."""
    layered = layer_ids(model)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    named = [*model.named_parameters(), *((None, p) for p in head.parameters())]  # the head: name None
    for name, p in named:
        if not p.requires_grad:
            continue
        if layered is None:
            scale = 1.0
        else:
            ids, last = layered
            scale = recipe.layer_decay ** (last - (ids[name] if name is not None else last))
        plain = p.ndim == 1 or (name or "").startswith(("pos_embed", "cls_token"))
        groups.setdefault((scale, 0.0 if plain else recipe.weight_decay), []).append(p)
    return [{"params": ps, "lr_scale": scale, "weight_decay": wd} for (scale, wd), ps in groups.items()]


def set_drop_path(model: nn.Module, rate: float) -> bool:
    """Stochastic depth rising linearly from 0 at the first block to ``rate`` at the last (timm's and
    MAE's rule) on a ViT (``vit_blocks``); False (nothing set) for any other model."""
    blocks = vit_blocks(model)
    if blocks is None:
        return False
    for i, block in enumerate(blocks):
        block.drop_path = rate * i / max(len(blocks) - 1, 1)
    return True


def mix_batch(x: torch.Tensor, targets: torch.Tensor, recipe: FinetuneRecipe,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix of a batch with itself reversed (one of the two per batch, evenly when both are
    on; one weight lambda ~ Beta(alpha, alpha) per batch, as MAE's fine-tuning runs timm's ``Mixup``):
    (x (B, C, H, W), soft targets (B, K)) -> the mixed pair. Cutmix pastes a box of area
    (1 - lambda) H W (clipped at the border) and weighs the targets by the area it really took."""
    kinds = [k for k, alpha in (("mixup", recipe.mixup), ("cutmix", recipe.cutmix)) if alpha > 0]
    if not kinds or len(x) < 2:
        return x, targets
    kind = kinds[int(rng.integers(len(kinds)))]
    lam = float(rng.beta(getattr(recipe, kind), getattr(recipe, kind)))
    other = x.flip(0)
    if kind == "mixup":
        x = lam * x + (1 - lam) * other
    else:
        H, W = x.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        x = x.clone()
        x[..., top:bottom, left:right] = other[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (H * W)
    return x, lam * targets + (1 - lam) * targets.flip(0)


def train_views(transform: Callable, images: list[torch.Tensor], gen: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """One training view per image, (N, 3, S, S) on ``device``: ``transform.batch`` where the transform
    has it (views made on the device from the whole batch), else ``transform(img, gen)`` image by image."""
    if hasattr(transform, "batch"):
        return transform.batch(images, gen, device)
    return torch.stack([transform(img, gen) for img in images]).to(device)


def finetune(
    encoder: nn.Module,
    train: Any,
    test: Any,
    transform_train: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    transform_eval: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    recipe: FinetuneRecipe = FinetuneRecipe(),
    seed: int = 0,
    max_test: int | None = None,
) -> dict[str, float]:
    """Fine-tune a copy of ``encoder`` with a linear head on pooled features (``recipe``), score on ``test``.

    The batches walk seeded permutations of ``train`` and each view is transform_train(img, gen)
    with one seeded generator (a transform with a ``batch(images, gen, device)`` method, such as
    ``ItemViews``, makes a batch's views at once on the device, the same views); mixing, drop path
    and the rest draw from streams of their own seeded from ``seed``, so a run is repeatable and the
    views do not depend on the other settings. Unlabelled items (-1) are left out of each batch. The
    caller's encoder is left untouched. Returns {"accuracy": test accuracy, "train_loss": loss of the
    last step}.
    """
    if num_classes < 2:
        raise ValueError(f"need num_classes >= 2, got {num_classes}")
    problems = recipe.problems()
    if problems:
        raise ValueError("fine-tuning recipe: " + "; ".join(f"{f} {why}" for f, why in problems))
    model = copy.deepcopy(encoder).train()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=None if device.type == "cuda" else []):
        torch.manual_seed(seed)  # drop path's draws; the caller's stream is left where it was
        head, loss = _finetune_steps(model, train, transform_train, num_classes, recipe, seed, device)
    feats, labels = extract_features(model, RandomSubset(test, max_test), transform_eval)
    keep = labels >= 0
    if not keep.any():
        raise ValueError("the test set has no labelled items to score")
    with torch.no_grad():
        pred = head(feats[keep].to(device)).argmax(1).cpu()
    return {"accuracy": (pred == labels[keep]).float().mean().item(), "train_loss": loss.item()}


def _finetune_steps(model: nn.Module, train: Any, transform_train: Callable, num_classes: int,
                    recipe: FinetuneRecipe, seed: int, device: torch.device) -> tuple[nn.Linear, torch.Tensor]:
    """``finetune``'s training loop on ``model`` (changed in place) -> (the head, the last step's loss)."""
    set_drop_path(model, recipe.drop_path)
    head = nn.Linear(model.embed_dim, num_classes).to(device)
    # A zero head starts at uniform predictions, so the first steps do not push random
    # gradients into the pre-trained encoder.
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(param_groups(model, head, recipe), lr=recipe.lr)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng([seed, 1])
    order, pos, loss = torch.randperm(len(train), generator=gen), 0, torch.tensor(float("nan"))
    smooth = recipe.label_smoothing
    for step in range(recipe.steps):
        if pos + recipe.batch_size > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        items = [train[int(i)] for i in order[pos : pos + recipe.batch_size]]
        pos += recipe.batch_size
        x = train_views(transform_train, [it["image"] for it in items], gen, device)  # (b, 3, S, S)
        y = torch.tensor([int(it["label"]) for it in items], device=device)
        if not (y >= 0).any():
            continue  # no labelled items to learn from
        x, y = x[y >= 0], y[y >= 0]
        targets = F.one_hot(y, num_classes).float() * (1 - smooth) + smooth / num_classes
        x, targets = mix_batch(x, targets, recipe, rng)
        rate = lr_at(step, recipe.steps, recipe.lr, max(1, recipe.steps // 10))
        for group in opt.param_groups:
            group["lr"] = rate * group["lr_scale"]
        logits = head(model.pool(model.forward_features(x)))
        loss = -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head, loss
