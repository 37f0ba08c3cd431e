"""Deployable models: ONNX and torch.export files, fine-tuning, and the base/pruned comparison."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from amc.apply import apply_policy
from amc.evaluation.compare import model_stats
from amc.context import ContextConfig, build_context
from amc.errors import ConfigError
from amc.pruning.export import export_onnx, export_pt2, fold_batchnorm
from amc.pruning.policy import Policy

KEEP = [0.3, 0.3, 0.4, 0.4, 0.5, 0.5]  # an aggressive policy for the 6 decisions of the default cnn


@pytest.fixture(scope="module")
def ctx(amc_cache):
    return build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)


@pytest.fixture(scope="module")
def policy_path(ctx, tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    policy = Policy.from_ratios(ctx.graph, KEEP, budget=0.5,
                                meta={"context": {"model": "cnn", "dataset": "digits", "seed": 0,
                                                  "cache_dir": ctx.config.cache_dir}})
    policy.save(path)
    return path


def test_onnx_matches_pytorch(ctx, tmp_path) -> None:
    import onnxruntime as ort

    pruned = ctx.evaluator.prune(KEEP)
    path = export_onnx(pruned, ctx.data.val.tensors[0][:2], tmp_path / "m.onnx")
    batch = ctx.data.test.tensors[0][:37]  # another batch size than the export example
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": batch.numpy()})[0]
    with torch.no_grad():
        want = pruned(batch).numpy()
    assert got.shape == want.shape == (37, 10)
    assert np.abs(got - want).max() < 1e-4


def test_pt2_loads_in_a_process_that_does_not_import_the_project(ctx, tmp_path) -> None:
    pruned = ctx.evaluator.prune(KEEP)
    path = export_pt2(pruned, ctx.data.val.tensors[0][:2], tmp_path / "pruned.pt2")
    batch = ctx.data.test.tensors[0][:5]
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        torch.save(pruned(batch), tmp_path / "want.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.export.load({str(path)!r}).module()\n"
        f"x = torch.load({str(tmp_path / 'batch.pt')!r}); want = torch.load({str(tmp_path / 'want.pt')!r})\n"
        "assert torch.allclose(m(x), want, atol=1e-5)\n"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('amc', 'envs', 'search')], 'project imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _aten_ops(program: torch.nn.Module) -> set[str]:
    return {str(node.target) for node in program.graph.nodes if node.op == "call_function"}


def test_pt2_folds_batch_norm_into_the_convs_with_the_same_outputs(ctx, tmp_path) -> None:
    pruned = ctx.evaluator.prune(KEEP)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in pruned.modules())
    assert norms > 0
    example, batch = ctx.data.val.tensors[0][:2], ctx.data.test.tensors[0][:33]
    folded = torch.export.load(export_pt2(pruned, example, tmp_path / "folded.pt2")).module()
    plain = torch.export.load(export_pt2(pruned, example, tmp_path / "plain.pt2", fold=False)).module()
    assert not any("batch_norm" in op for op in _aten_ops(folded))
    assert sum("batch_norm" in str(n.target) for n in plain.graph.nodes) == norms
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in pruned.modules()) == norms  # the model is untouched
    with torch.no_grad():
        want = pruned(batch)
        assert torch.allclose(folded(batch), want, atol=1e-5) and torch.allclose(plain(batch), want, atol=1e-5)
        assert (folded(batch).argmax(1) == want.argmax(1)).all()


def test_resnet_shortcuts_fold_too() -> None:
    from amc.models import build_model

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    for module in model.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)


def test_a_model_fx_cannot_trace_is_exported_unfolded(caplog, tmp_path) -> None:
    class Shapey(torch.nn.Module):  # control flow on a shape: torch.export resolves it, torch.fx cannot
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if x.shape[-1] > 4 else -y

    model = Shapey().eval()
    with caplog.at_level("WARNING", logger="amc.pruning.export"):
        program = torch.export.load(export_pt2(model, torch.randn(2, 1, 8, 8), tmp_path / "s.pt2")).module()
    assert "batch norm not folded" in caplog.text and "Shapey" in caplog.text
    assert any("batch_norm" in op for op in _aten_ops(program))  # deployed as it is
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), atol=1e-6)


def test_folding_leaves_the_caller_s_model_alone(ctx) -> None:
    model = ctx.evaluator.prune(KEEP).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert model.training and not folded.training  # the copy is in eval mode, the model is not
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_finetuning_recovers_accuracy_and_exports_both_formats(policy_path, tmp_path) -> None:
    plain = apply_policy(policy_path, out=tmp_path / "a", export=False, progress=False)
    tuned = apply_policy(policy_path, out=tmp_path / "b", export=("pt2", "onnx"), progress=False,
                         finetune_epochs=3, distill=True)
    assert tuned.val_accuracy == plain.val_accuracy  # the search's measurement, before fine-tuning
    assert tuned.finetuned_test_accuracy > plain.test_accuracy + 0.02
    assert set(tuned.exported) == {"pt2", "onnx"} and all(p.exists() for p in tuned.exported.values())


def test_apply_refuses_bad_export_and_epochs(policy_path) -> None:
    with pytest.raises(ConfigError, match="tflite"):
        apply_policy(policy_path, export=("tflite",), progress=False)
    with pytest.raises(ConfigError, match="-1"):
        apply_policy(policy_path, finetune_epochs=-1, progress=False)


def test_comparison_shows_a_smaller_model(ctx) -> None:
    pruned = ctx.evaluator.prune(KEEP)
    base, small = (model_stats(n, m, ctx.data.test, min_run_time=0.05) for n, m in (("base", ctx.model),
                                                                                   ("pruned", pruned)))
    assert small.params < base.params and small.flops < base.flops and small.size_bytes < base.size_bytes
    assert set(base.latency_ms) == {1, 64} and all(v > 0 for v in base.latency_ms.values())
    assert 0.0 <= small.test_accuracy <= 1.0


def test_finetuning_keeps_unstructured_zeros(ctx, tmp_path) -> None:
    path = tmp_path / "weight.json"
    Policy.from_ratios(ctx.graph, KEEP, granularity="weight", budget=0.5,
                       meta={"context": {"cache_dir": ctx.config.cache_dir}}).save(path)
    before = apply_policy(path, export=False, progress=False)
    after = apply_policy(path, export=False, progress=False, finetune_epochs=1)
    zeros = [int((m.weight == 0).sum()) for m in before.model.modules() if isinstance(m, (torch.nn.Conv2d,))]
    kept = [int((m.weight == 0).sum()) for m in after.model.modules() if isinstance(m, (torch.nn.Conv2d,))]
    assert sum(zeros) > 0 and kept == zeros  # no pruned weight regrew
    assert not any(n.endswith("weight_orig") for n, _ in after.model.named_parameters())


# ---------------------------------------------------------------- iterative pruning (issue 8)

def test_schedules_end_at_the_policy_and_agp_prunes_early() -> None:
    from amc.apply import schedule_keeps

    linear = schedule_keeps([0.4, 1.0], 3, "linear")
    agp = schedule_keeps([0.4, 1.0], 3, "agp")
    assert linear[-1] == agp[-1] == [0.4, 1.0]
    assert linear[0] == pytest.approx([0.8, 1.0]) and linear[1] == pytest.approx([0.6, 1.0])
    assert agp[0][0] == pytest.approx(1 - 0.6 * (1 - (2 / 3) ** 3))  # 0.578: most of the cut in round 1
    assert agp[0][0] < linear[0][0]
    assert all(a[0] >= b[0] for a, b in zip(agp, agp[1:]))  # keep ratios only go down


@pytest.mark.parametrize("ramp", ["linear", "agp"])
def test_iterative_reaches_the_policy_channels(policy_path, ctx, ramp) -> None:
    done = apply_policy(policy_path, export=False, progress=False, schedule="iterative", steps=3,
                        finetune_epochs=3, ramp=ramp)
    from amc.graph.discover import discover

    graph = discover(done.model, ctx.data.val.tensors[0][:1])
    assert graph.channels([1.0] * len(graph)) == ctx.graph.channels(KEEP)
    assert done.finetuned_test_accuracy > done.test_accuracy  # fine-tuned beats the one-shot, un-tuned prune


def test_iterative_unstructured_masks_only_grow(ctx, tmp_path) -> None:
    from amc.graph.widths import weights_kept

    path = tmp_path / "weight.json"
    Policy.from_ratios(ctx.graph, KEEP, granularity="weight", budget=0.5,
                       meta={"context": {"cache_dir": ctx.config.cache_dir}}).save(path)
    done = apply_policy(path, export=False, progress=False, schedule="iterative", steps=2, finetune_epochs=2)
    for spec, keep in zip(ctx.graph, KEEP):
        module = done.model.get_submodule(spec.name)
        assert int((module.weight != 0).sum()) == weights_kept(keep, module.weight.numel())
    assert not any(n.endswith("weight_orig") for n, _ in done.model.named_parameters())


def test_iterative_refuses_bad_settings(policy_path) -> None:
    with pytest.raises(ConfigError, match="finetune-epochs >= --steps"):
        apply_policy(policy_path, export=False, progress=False, schedule="iterative", steps=4, finetune_epochs=2)
    with pytest.raises(ConfigError, match="ramp"):
        apply_policy(policy_path, export=False, progress=False, schedule="iterative", steps=2, finetune_epochs=2,
                     ramp="cosine")
    with pytest.raises(ConfigError, match="schedule"):
        apply_policy(policy_path, export=False, progress=False, schedule="gradual")
