"""``bench.py headline`` and ``bench.py vit``: the default row's options reach its settings; a bad one is one line."""

from __future__ import annotations

import pytest

from search.cli import bench


def test_the_default_row_options_reach_the_settings(monkeypatch):
    seen = {}
    monkeypatch.setattr("search.bench.headline.headline_report", lambda root, settings, **kw: seen.update(h=settings))
    monkeypatch.setattr("search.bench.vit.vit_report", lambda root, settings, **kw: seen.update(v=settings))
    assert bench.main(["headline", "--rows", "uniform,tp-global,default", "--finetune-every-seed", "--select",
                       "finetune:2", "--select-top-k", "3", "--select-samples", "500", "--select-lr", "0.02",
                       "--default-evaluations", "50", "--warm-start", "a", "b", "--no-baselines"]) == 0
    h = seen["h"]
    assert h.rows == ("uniform", "tp-global", "default") and h.finetune_every_seed
    assert (h.select, h.select_top_k, h.select_samples, h.select_lr) == ("finetune:2", 3, 500, 0.02)
    assert (h.default_evaluations, h.warm_start, h.baselines) == (50, ("a", "b"), False)
    assert bench.main(["vit", "--finetune-once"]) == 0
    v = seen["v"]
    assert not v.finetune_every_seed  # every other default-row setting: the product's default
    assert (v.select, v.select_top_k, v.default_evaluations, v.warm_start, v.baselines) == (None,) * 5


@pytest.mark.parametrize("bench_name", ["headline", "vit"])
def test_a_bad_select_recipe_is_refused_in_one_line(bench_name, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main([bench_name, "--select", "finetune:x"])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "argument --select: must be finetune:EPOCHS" in lines[0], lines
