"""Lottery tickets: rewinding, fixed masks, the sparsity schedule, the random re-init control and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from amc.data.datasets import DataSplits
from amc.errors import ConfigError, ModelError
from amc.analysis.lottery import (
    LotteryConfig,
    LotteryExperiment,
    apply_masks,
    current_masks,
    effective_weight,
    output_layer_name,
    prunable_modules,
    prune_masks,
    sparsity,
    train_span,
)
from amc.models import build_model
from amc.evaluation.metrics import accuracy
from amc.train import TrainConfig, train
from search.bench.lottery import markdown_body, read_rows, summary
from search.bench.markdown import update_section
from search.cli import lottery as cli

# Its module fixtures are costly: one xdist worker runs the whole module (make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("lottery")

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "lottery.py"
TINY = TrainConfig(epochs=2)


def _weights(model: nn.Module) -> dict[str, Tensor]:
    """Effective weights and masks of every prunable layer, copied."""
    return {name: effective_weight(m).clone() for name, m in prunable_modules(model).items()}


class RecordingExperiment(LotteryExperiment):
    """Keeps what each round's models look like right after rewinding / re-initialising, before training."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.before: dict[int, dict] = {}

    def rewound(self) -> nn.Module:
        model = super().rewound()
        self.before.setdefault(len(self.rounds), {}).update(
            ticket=_weights(model), ticket_state={k: v.clone() for k, v in model.state_dict().items()},
            ticket_masks=current_masks(model))
        return model

    def random_reinit(self, round_: int) -> nn.Module:
        model = super().random_reinit(round_)
        self.before[round_].update(control=_weights(model), control_masks=current_masks(model))
        return model


@pytest.fixture(scope="module")
def experiment(digits: DataSplits) -> tuple[RecordingExperiment, dict[int, dict]]:
    """2 rounds of 50% on the cnn, 2 epochs each; keeps each round's trained ticket and control too."""
    exp = RecordingExperiment("cnn", digits, LotteryConfig(rounds=2, prune_per_round=0.5, train=TINY, seed=0))
    trained: dict[int, dict] = {}
    exp.train_dense()
    for _ in range(2):
        result = exp.next_round()
        trained[result.round] = {"ticket": exp.ticket, "control": exp.control, "masks": dict(exp.masks),
                                 "result": result}
    return exp, trained


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"rounds": 0}, "0"), ({"rounds": 2.5}, "2.5"),
    ({"prune_per_round": 0.0}, "0.0"), ({"prune_per_round": 1.0}, "1.0"), ({"prune_per_round": -0.2}, "-0.2"),
    ({"prune_per_round": float("nan")}, "nan"),
    ({"rewind_epoch": -1}, "-1"), ({"rewind_epoch": 2, "train": TINY}, "2"),
    ({"output_layer_rate": 1.5}, "1.5"), ({"global_pruning": "yes"}, "'yes'"), ({"seed": None}, "None"),
])
def test_bad_config_raises_config_error_naming_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        LotteryConfig(**kwargs)
    field = next(iter(kwargs))
    assert field in str(info.value) and named in str(info.value)


def test_unknown_model_is_a_model_error(digits: DataSplits) -> None:
    with pytest.raises(ModelError, match="nosuchmodel"):
        LotteryExperiment("nosuchmodel", digits, LotteryConfig(train=TINY)).build(0)


# ---------------------------------------------------------------- training


def test_train_span_is_amc_train(digits: DataSplits) -> None:
    """From epoch 0 the experiment trains exactly like amc.train.train (same weights, bit for bit)."""
    config = TrainConfig(epochs=1)
    models = []
    for trainer in (train, train_span):
        torch.manual_seed(3)
        model = build_model("cnn", in_channels=1, num_classes=10)
        torch.manual_seed(4)  # dropout
        trainer(model, digits.train, config, seed=5, **({"progress": False} if trainer is train else {}))
        models.append(model.state_dict())
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_late_rewinding_restores_the_epoch_weights(digits: DataSplits) -> None:
    """rewind_epoch=1: the rewind point is the dense run after 1 epoch, and the ticket starts from it."""
    exp = RecordingExperiment("cnn", digits, LotteryConfig(rounds=1, prune_per_round=0.5, rewind_epoch=1,
                                                           train=TINY, seed=1))
    exp.train_dense()
    dense_final = exp.ticket.state_dict()
    # The same dense run, stopped after epoch 1, independently.
    check = exp.build(1)
    check.load_state_dict(exp.init_state)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        snapshot = train_span(check, digits.train, TINY, seed=1, snapshot_epoch=1)
    assert all(torch.equal(snapshot[k], exp.rewind_state[k]) for k in snapshot)
    name = next(iter(prunable_modules(check))) + ".weight"
    assert not torch.equal(exp.rewind_state[name], exp.init_state[name])
    assert not torch.equal(exp.rewind_state[name], dense_final[name])
    exp.next_round()
    before = exp.before[1]
    for layer, weight in before["ticket"].items():
        mask = before["ticket_masks"][layer]
        assert torch.equal(weight[mask], exp.rewind_state[f"{layer}.weight"][mask])
        assert bool((weight[~mask] == 0).all())


# ---------------------------------------------------------------- rewinding and masks


def test_rewound_ticket_equals_the_initial_weights_under_the_mask(experiment) -> None:
    exp, _ = experiment
    for round_ in (1, 2):
        before = exp.before[round_]
        for layer, weight in before["ticket"].items():
            mask = before["ticket_masks"][layer]
            assert 0 < int(mask.sum()) < mask.numel() or layer == output_layer_name(exp.ticket)
            assert torch.equal(weight[mask], exp.init_state[f"{layer}.weight"][mask]), layer
            assert bool((weight[~mask] == 0).all()), layer
        # biases, BatchNorm weights and running statistics are rewound too
        state = before["ticket_state"]
        others = [k for k in exp.init_state if k.removesuffix(".weight") not in before["ticket"]]
        assert any("running_mean" in k for k in others) and any(k.endswith(".bias") for k in others)
        for key in others:
            assert torch.equal(state[key], exp.init_state[key]), key


def test_masks_stay_fixed_through_retraining(experiment, digits: DataSplits) -> None:
    exp, trained = experiment
    for round_ in (1, 2):
        masks = trained[round_]["masks"]
        for kind in ("ticket", "control"):
            model = trained[round_][kind]
            assert current_masks(model).keys() == masks.keys()
            assert all(torch.equal(current_masks(model)[k], masks[k]) for k in masks)
            accuracy(model, digits.val)  # a forward pass refreshes module.weight from weight_orig * mask
            for layer, module in prunable_modules(model).items():
                assert bool((module.weight[~masks[layer]] == 0).all()), (round_, kind, layer)
                assert torch.equal(module.weight, effective_weight(module))
        # training moved the surviving weights
        name = next(iter(masks))
        before = exp.before[round_]["ticket"][name]
        after = effective_weight(prunable_modules(trained[round_]["ticket"])[name])
        assert not torch.equal(before[masks[name]], after[masks[name]])


def test_masks_accumulate(experiment) -> None:
    _, trained = experiment
    first, second = trained[1]["masks"], trained[2]["masks"]
    for layer in first:
        assert not bool((second[layer] & ~first[layer]).any()), f"{layer}: a pruned weight came back"


def test_reported_sparsity_counts_the_zeros(experiment) -> None:
    exp, trained = experiment
    for round_ in (1, 2):
        weights = _weights(trained[round_]["ticket"])
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        total = sum(w.numel() for w in weights.values())
        assert trained[round_]["result"].sparsity == pytest.approx(zeros / total, abs=1e-9)
        # 50% per round of the hidden layers, the classifier (1.3k of 172k weights) at half that rate
        assert trained[round_]["result"].sparsity == pytest.approx(1 - 0.5 ** round_, abs=0.01)
    assert exp.rounds[0].sparsity == 0.0 and [r.round for r in exp.rounds] == [0, 1, 2]


# ---------------------------------------------------------------- sparsity schedule


@pytest.mark.parametrize("global_pruning", [True, False])
def test_sparsity_after_k_rounds_is_one_minus_keep_to_the_k(global_pruning: bool) -> None:
    """Counting zeros: hidden layers at 1 - (1 - p)^k, the classifier at 1 - (1 - p/2)^k; rate 1: all alike."""
    torch.manual_seed(0)
    p, k = 0.36, 3
    for rate in (0.5, 1.0):
        model = build_model("cnn", in_channels=1, num_classes=10)
        config = LotteryConfig(prune_per_round=p, global_pruning=global_pruning, output_layer_rate=rate, train=TINY)
        for _ in range(k):
            apply_masks(model, prune_masks(model, config))  # ranks the survivors of the previous round
        masks = current_masks(model)
        weights = _weights(model)
        output = output_layer_name(model)
        hidden = {n: w for n, w in weights.items() if n != output}
        zeros = sum(int((w == 0).sum()) for w in hidden.values())
        total = sum(w.numel() for w in hidden.values())
        assert zeros / total == pytest.approx(1 - (1 - p) ** k, abs=k / total + 1e-12)
        if not global_pruning:
            for w in hidden.values():
                assert int((w == 0).sum()) / w.numel() == pytest.approx(1 - (1 - p) ** k, abs=k / w.numel())
        out = weights[output]
        assert int((out == 0).sum()) / out.numel() == pytest.approx(1 - (1 - p * rate) ** k, abs=k / out.numel())
        if rate == 1.0:
            assert sparsity(masks) == pytest.approx(1 - (1 - p) ** k, abs=2 * k / (total + out.numel()))


# ---------------------------------------------------------------- random re-initialisation control


def test_random_control_has_the_same_mask_and_other_weights(experiment) -> None:
    exp, trained = experiment
    for round_ in (1, 2):
        before = exp.before[round_]
        for layer, mask in before["ticket_masks"].items():
            assert torch.equal(before["control_masks"][layer], mask), layer
            control, ticket = before["control"][layer], before["ticket"][layer]
            assert bool((control[~mask] == 0).all())
            alive = mask & (ticket != 0)
            if int(alive.sum()) > 10:
                assert float((control[alive] == ticket[alive]).float().mean()) < 0.01, layer
    assert exp.control_seed(1) != exp.control_seed(2) != exp.config.seed
    for round_ in (1, 2):
        result = trained[round_]["result"]
        assert result.random_test is not None and 0.0 <= result.random_test <= 1.0


# ---------------------------------------------------------------- CLI


BAD_CLI = {
    "rounds-zero": (["--rounds", "0"], "0"),
    "prune-one": (["--prune-per-round", "1"], "'1'"),
    "prune-negative": (["--prune-per-round=-0.2"], "-0.2"),
    "model": (["--model", "nosuchmodel"], "nosuchmodel"),
    "rewind-past-training": (["--rewind-epoch", "3", "--epochs", "3"], "3"),
    "seeds": (["--seeds", "0,x"], "0,x"),
}


def test_cli_rejects_bad_input_with_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(case: str) -> subprocess.CompletedProcess:
        args = [*BAD_CLI[case][0], "--out", str(tmp_path / case), "--quiet"]
        return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # argparse errors: cheaper than the fork server's start

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(BAD_CLI, pool.map(run, BAD_CLI)))
    for case, proc in results.items():
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (case, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("lottery.py: error:"), (case, proc.stderr)
        assert BAD_CLI[case][1] in lines[0], (case, lines[0])
        assert not (tmp_path / case / "lottery.csv").exists()


def test_cli_writes_rows_resumes_and_refuses_other_settings(tmp_path: Path, capsys) -> None:
    args = ["--rounds", "1", "--prune-per-round", "0.5", "--epochs", "1", "--seeds", "0,1", "--out", str(tmp_path),
            "--quiet"]
    assert cli.main(args) == 0
    rows = read_rows(tmp_path / "lottery.csv")
    assert [(r["seed"], r["round"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(0 <= r["ticket_test"] <= 1 and 0 <= r["random_test"] <= 1 for r in rows)
    assert [r["sparsity"] for r in rows if r["round"] == 1] == pytest.approx([0.5, 0.5], abs=0.01)
    printed = capsys.readouterr().out
    assert "±" in printed and "random re-init" in printed
    text = (tmp_path / "lottery.csv").read_text()
    assert cli.main(args) == 0  # resumed: both seeds are skipped, nothing is retrained
    assert printed.count("skipped") == 0 and capsys.readouterr().out.count("skipped") == 2
    assert (tmp_path / "lottery.csv").read_text() == text
    assert cli.main([*args[:-3], "--out", str(tmp_path), "--epochs", "2"]) == 2  # other settings, same folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epochs 1 there, 2 now" in err[0]


def test_cli_markdown_section(tmp_path: Path) -> None:
    parser = cli.build_parser()
    args = cli.settings_of(parser.parse_args(["--rounds", "2", "--prune-per-round", "0.36", "--epochs", "15",
                                              "--seeds", "0,1,2"]))
    rows = [{"seed": s, "round": r, "sparsity": 1 - 0.64 ** r, "ticket_test": 0.9 + 0.01 * s,
             "random_test": 0.8, "ticket_val": 0.9, "random_val": 0.8, "seconds": 1.0}
            for s in (0, 1, 2) for r in range(3)]
    lines = summary(rows, args.seeds)
    assert lines[2][:4] == ("2", "59.0%", "91.00 ± 1.00", "80.00 ± 0.00")
    path = tmp_path / "BENCH.md"
    update_section(path, "lottery", markdown_body(args, lines, 60.0), title="Lottery tickets: cnn / digits")
    text = path.read_text()
    assert "python scripts/lottery.py --model cnn --dataset digits --rounds 2 --prune-per-round 0.36" in text
    assert "--seeds 0,1,2" in text and "| 2 | 59.0% | 91.00 ± 1.00 |" in text
