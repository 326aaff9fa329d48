"""docs/extending.md's worked example runs as written: its code blocks, executed in order, add an
objective and a task that train through the real entry points."""
import json
import re
from pathlib import Path

import pytest
import torch

from mmssl.registry import OBJECTIVES, TASKS

DOC = Path(__file__).parents[2] / "docs" / "extending.md"


@pytest.fixture
def example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 3, "the worked example lost its code blocks"
    namespace = {"__name__": "docs_extending"}
    try:
        exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)  # noqa: S102  the page's own code
        yield namespace
    finally:  # the registries are process-wide: leave them as the library ships them
        OBJECTIVES._items.pop("example_align_uniform", None)
        TASKS._items.pop("example_align_uniform_image", None)


def test_the_worked_example_trains_through_the_real_entry_points(example, tmp_path):
    from mmssl.run import resolve_config, run_training

    assert "example_align_uniform" in OBJECTIVES and "example_align_uniform_image" in TASKS
    objective = example["objective"]
    h = objective.encoder.embed_dim
    loss = objective({"views": [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]})["loss"]
    assert torch.isfinite(loss) and objective.projector[0].in_features == h
    # the page's uniformity is the paper's: log of the mean exp(-t ||z_i - z_j||^2) over pairs i != j
    z = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    pairs = [torch.exp(-2 * (z[i] - z[j]).pow(2).sum()) for i in range(6) for j in range(6) if i != j]
    torch.testing.assert_close(example["uniformity"](z, 2.0), torch.log(sum(pairs) / len(pairs)))
    task, cfg = resolve_config("example_align_uniform_image", None, {"output_dir": str(tmp_path / "run")},
                               ["max_steps=3", "batch_size=8", "num_workers=0", "log_every=1", "evaluate=false",
                                "objective.proj_hidden=32", "objective.proj_dim=32", "encoder.convnet.widths=8,16"])
    run_training(task, cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and "std" in r for r in rows if "loss" in r)
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()
