"""What a search's view shows beside its rows: ``report.html``'s facts, from the files of its run folder.

* ``policy.json`` (written when the search ends, also when it is stopped): base, best and uniform
  accuracy, validation and test.
* ``layers.json`` (every run writes it beside ``policy.json``: :func:`search.outputs.write_layers`): each
  layer's name, base width, and the uniform and best policies' keep ratios and
  widths. Before it exists the view has the best policy's keep ratios so far (the search's ``best``).
* The search's row: elapsed time, and an estimate of the time left from the evaluations done so far.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from search.outputs import LAYERS_FILE
from search.service.db import ACTIVE, SearchRow, as_utc, utcnow
from search.service.schemas import LayerWidth, Summary

log = logging.getLogger(__name__)
def search_summary(row: SearchRow) -> Summary:
    """The view's facts of ``row`` (null where not known yet)."""
    run_dir = Path(row.run_dir)
    metrics = _read_json(run_dir / "policy.json").get("metrics", {})
    widths = _read_json(run_dir / LAYERS_FILE)
    if widths.get("layers"):
        layers = [LayerWidth(**layer) for layer in widths["layers"]]
    else:  # still running: the best policy's keep ratios so far, the layers by position
        keep = (row.best or {}).get("keep") or []
        layers = [LayerWidth(name=f"layer {i}", best_keep=k) for i, k in enumerate(keep)]
    elapsed = remaining = None
    started, finished = as_utc(row.started_at), as_utc(row.finished_at)
    if started is not None:
        elapsed = ((finished if finished is not None and row.state not in ACTIVE else utcnow()) - started) \
            .total_seconds()
        done, total = row.evaluations_done, row.evaluations_total
        if row.state in ACTIVE and 0 < done < total:
            remaining = elapsed / done * (total - done)
        elif row.state in ACTIVE and done >= total:
            remaining = 0.0  # writing its outputs
    best = row.best or {}
    return Summary(
        best_index=best.get("index"), best_val_accuracy=best.get("accuracy"), best_cost_ratio=best.get("cost_ratio"),
        best_test_accuracy=metrics.get("test_accuracy"), base_val_accuracy=metrics.get("base_val_accuracy"),
        base_test_accuracy=metrics.get("base_test_accuracy"), uniform_val_accuracy=metrics.get("uniform_val_accuracy"),
        uniform_test_accuracy=metrics.get("uniform_test_accuracy"),
        uniform_cost_ratio=widths.get("uniform_cost_ratio"), layers=layers, elapsed_s=elapsed, remaining_s=remaining)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): the view leaves its facts out", path, exc)
        return {}
    return data if isinstance(data, dict) else {}
