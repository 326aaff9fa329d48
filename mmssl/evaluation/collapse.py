"""What the end-of-run evaluation can say about an encoder without labels: whether its pooled
features collapsed (the std of L2-normalised embeddings, arXiv:2011.10566 Sec. 4.1), beside a
randomly initialised encoder of the same architecture, and which probes it skipped."""
from __future__ import annotations

from typing import Any

import torch

from mmssl.objectives.heads import embedding_std


def collapse_report(pooled: dict[str, torch.Tensor], unit: str, hint: str) -> dict[str, Any]:
    """pooled: {name: (N, D) pooled features}. Returns {"collapse": {name: std}, "skipped": hint, "table"}.

    The std is near 1/sqrt(D) for features spread over the sphere and near 0 for a collapsed encoder.
    """
    stds = {name: float(embedding_std(z)) for name, z in pooled.items()}
    n, d = next(iter(pooled.values())).shape
    title = (f"collapse monitor: std of L2-normalised pooled features over {n} {unit} "
             f"(1/sqrt(D) = {d ** -0.5:.3f} when spread out, 0 when collapsed)")
    lines = [title]
    lines += [f"{name:<16}{s:>8.3f}" for name, s in stds.items()]
    lines.append(hint)
    return {"collapse": stds, "skipped": hint, "table": "\n".join(lines)}
