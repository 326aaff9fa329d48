"""Exemplar CNN / instance discrimination: both losses against plain references, the memory bank's
update against a loop, bad settings, the bank in the state dict, and the indices the task hands over."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny_encoders import TinyEncoder

from mmssl.config import ConfigError
from mmssl.objectives.exemplar import Exemplar, ExemplarSettings
from mmssl.run import resolve_config, run_training
from mmssl.tasks.exemplar_image import ExemplarImage


def bank_objective(num_images=10, **kw):
    torch.manual_seed(0)
    return Exemplar(TinyEncoder(dim=6), num_images=num_images, dim=5, **kw)


def batch_of(index, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(len(index), 3, 4, 4, generator=g), "index": torch.tensor(index)}


def reference_bank_loss(objective, batch, negatives):
    """Wu et al.'s softmax over the positive and the sampled negatives, one sample at a time."""
    enc, losses = objective.encoder, []
    for x, i in zip(batch["input"], batch["index"].tolist()):
        h = enc.pool(enc.forward_features(x[None]))[0]
        v = objective.projector(h)
        v = v / v.norm()
        logits = [torch.dot(v, objective.bank[i])] + [torch.dot(v, objective.bank[n]) for n in negatives.tolist()]
        logits = torch.stack(logits) / objective.temperature
        losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


def test_the_paper_defaults():
    assert dataclasses.asdict(ExemplarSettings()) == {"memory": "bank", "dim": 128, "num_negatives": 4096,
                                                      "temperature": 0.07, "bank_momentum": 0.5}


def test_bank_loss_matches_a_per_sample_loop():
    objective = bank_objective(num_negatives=7, temperature=0.1)
    negatives = torch.tensor([3, 3, 0, 9, 5, 1, 2])  # with replacement: a repeat, and index 1 of the batch
    objective.draw_negatives = lambda device: negatives
    batch = batch_of([1, 4, 7, 8])
    out = objective(batch)
    ref = reference_bank_loss(objective, batch, negatives)
    torch.testing.assert_close(out["loss"], ref)
    grad, = torch.autograd.grad(out["loss"], objective.projector.weight)
    ref_grad, = torch.autograd.grad(ref, objective.projector.weight)
    torch.testing.assert_close(grad, ref_grad)
    assert set(out) == {"loss", "acc", "std"} and 0 <= out["acc"] <= 1


def test_no_negatives_drawn_gives_the_exact_softmax_over_every_entry():
    objective = bank_objective(num_images=6, num_negatives=0, temperature=0.1)

    def no_draws(device):
        raise AssertionError("the whole bank is read, nothing is drawn")

    objective.draw_negatives = no_draws
    batch = batch_of([1, 4, 5])
    out = objective(batch)
    enc, losses, hits = objective.encoder, [], []
    for x, i in zip(batch["input"], batch["index"].tolist()):  # Wu et al.'s P(i | v) over all N entries
        v = objective.projector(enc.pool(enc.forward_features(x[None]))[0])
        v = v / v.norm()
        logits = torch.stack([torch.dot(v, objective.bank[j]) for j in range(6)]) / objective.temperature
        losses.append(-torch.log_softmax(logits, dim=0)[i])
        hits.append(float(logits.argmax() == i))
    ref = torch.stack(losses).mean()
    torch.testing.assert_close(out["loss"], ref)
    grad, = torch.autograd.grad(out["loss"], objective.projector.weight)
    torch.testing.assert_close(grad, torch.autograd.grad(ref, objective.projector.weight)[0])
    assert out["acc"].item() == pytest.approx(sum(hits) / 3)
    assert not bank_objective(num_images=6, num_negatives=6).whole_bank  # draws, even as many as N: sampled


def test_negatives_are_uniform_draws_from_the_whole_bank():
    objective = bank_objective(num_images=6, num_negatives=6000)
    counts = torch.bincount(objective.draw_negatives(torch.device("cpu")), minlength=6)
    assert counts.sum() == 6000 and (counts - 1000).abs().max() < 150


def test_parametric_loss_is_cross_entropy_of_a_linear_layer_over_the_images():
    torch.manual_seed(0)
    objective = Exemplar(TinyEncoder(dim=6), num_images=10, memory="parametric")
    assert not hasattr(objective, "bank")
    batch = batch_of([0, 9, 3, 3])
    out = objective(batch)
    enc, head = objective.encoder, objective.classifier
    logits = F.linear(enc.pool(enc.forward_features(batch["input"])), head.weight, head.bias)  # (B, 10)
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, batch["index"]))
    torch.testing.assert_close(out["acc"], (logits.argmax(1) == batch["index"]).float().mean())


def test_bank_update_mixes_each_indexed_row_with_momentum_then_renormalises():
    objective = bank_objective(bank_momentum=0.5)
    before = objective.bank.clone()
    first, second = batch_of([2, 5, 0], seed=1), batch_of([5, 7], seed=2)  # two micro-batches; 5 in both
    features = []
    for batch in (first, second):
        objective(batch)
        features.append(objective._pending[-1][1])
    assert torch.equal(objective.bank, before)  # forward never writes the bank
    objective.after_step(1, 10)
    expected = before.clone()
    for batch, v in zip((first, second), features):  # in the order of the micro-batches
        for i, f in zip(batch["index"].tolist(), v):
            mixed = 0.5 * expected[i] + 0.5 * f
            expected[i] = mixed / mixed.norm()
    torch.testing.assert_close(objective.bank, expected)
    untouched = [i for i in range(10) if i not in (0, 2, 5, 7)]
    assert torch.equal(objective.bank[untouched], before[untouched])
    assert not objective._pending
    objective.eval()
    objective(first)
    assert not objective._pending  # evaluation leaves the bank alone


def test_an_index_outside_the_bank_stops_with_one_clear_error():
    with pytest.raises(RuntimeError, match=r"outside \[0, 10\)"):
        bank_objective()(batch_of([3, 10]))
    with pytest.raises(RuntimeError, match=r"outside \[0, 10\)"):
        Exemplar(TinyEncoder(dim=6), num_images=10, memory="parametric")(batch_of([-1, 2]))


@pytest.mark.parametrize("settings, message", [
    ({"memory": "queue"}, "memory must be one of parametric, bank"),
    ({"num_negatives": -1}, "num_negatives >= 0"),
    ({"bank_momentum": 1.0}, r"bank_momentum in \[0, 1\)"),
    ({"bank_momentum": -0.1}, r"bank_momentum in \[0, 1\)"),
    ({"temperature": 0.0}, "temperature > 0"),
])
def test_bad_settings_raise_one_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        bank_objective(**settings)
    key, value = next(iter(settings.items()))
    task, cfg = resolve_config("exemplar_image", None, {}, [f"objective.{key}={value}"])
    with pytest.raises(ConfigError, match=message):
        task.build_objective(cfg)


def test_the_bank_round_trips_through_the_state_dict():
    objective = bank_objective()
    objective(batch_of([1, 2, 3]))
    objective.after_step(1, 10)
    state = objective.state_dict()
    assert state["bank"].shape == (10, 5)
    torch.manual_seed(123)  # a fresh objective starts from another random bank
    fresh = Exemplar(TinyEncoder(dim=6), num_images=10, dim=5)
    assert not torch.equal(fresh.bank, objective.bank)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.bank, objective.bank)


def test_the_task_sizes_the_bank_to_its_training_set_and_hands_over_each_crops_index():
    task, cfg = resolve_config("exemplar_image", None, {}, ["batch_size=8", "num_workers=0", "image_size=16",
                                                             "encoder.convnet.widths=8,8"])
    objective = task.build_objective(cfg)
    source = task.source(cfg, cfg.split)
    assert objective.num_images == len(source) and objective.bank.shape == (len(source), 128)
    loader = task.train_loader(cfg, 0, 1, 0)
    first = task.on_device(cfg, next(iter(loader)))
    assert first["input"].shape == (8, 3, 16, 16) and first["index"].dtype == torch.int64
    # the indices are the ones the sampler drew for the first global batch
    assert first["index"].tolist() == [i for i, _ in loader.batch_sampler.batch(0)]


class _Crash(Exception):
    pass


class _CrashingExemplar(ExemplarImage):
    """Dies while making the views of its third batch (after the checkpoint of step 2)."""

    def on_device(self, cfg, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise _Crash
        return super().on_device(cfg, batch)


def test_a_killed_run_resumes_to_the_same_weights_and_bank(tmp_path):
    from safetensors.torch import load_file

    def run(name, task=None):
        t, cfg = resolve_config("exemplar_image", None, {"output_dir": str(tmp_path / name), "max_steps": 4},
                                ["batch_size=4", "num_workers=0", "image_size=16", "encoder.convnet.widths=8,8",
                                 "objective.dim=8", "objective.num_negatives=16", "save_every=2", "log_every=1",
                                 "monitor_every=0", "evaluate=false"])
        run_training(task or t, cfg)
        last = sorted((tmp_path / name / "checkpoints").glob("*4/model.safetensors"))
        assert len(last) == 1, list((tmp_path / name / "checkpoints").iterdir())
        return load_file(str(last[0]))

    straight = run("straight")
    with pytest.raises(_Crash):
        run("resumed", _CrashingExemplar())
    resumed = run("resumed")
    assert "bank" in straight and not torch.equal(straight["bank"][:8], torch.zeros(8, 8))
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=1e-6, msg=k)
