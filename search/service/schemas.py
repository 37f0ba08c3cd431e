"""Request and response bodies (they are the OpenAPI document).

The evaluation rows (:class:`Evaluation`) and the best so far (:class:`Best`) are built from the fields of
:class:`search.history.Record`, so a new field of ``history.csv`` reaches the API and its document by itself.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal, Union, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

from search.history import Record
from search.service.db import SearchRow, SearchState, as_utc
from search.service.progress import BEST_FIELDS
from search.service.validation import MAX_TEXT, bounds, settable_options

# What the document says about some of the Record fields (the others go by their names).
EVALUATION_DOCS = {
    "rung": "0: the search's own score; r >= 1: the ladder's r-th score of this candidate",
    "score": "the candidate score of this row (bn, reconstruct, finetune:K[+kd])",
    "pid": "the process that measured a ladder or deploy-rung re-score (a Ray worker's with --workers N); "
           "0 on the search's own rows",
}
BEST_DOCS = {
    "index": "evaluation number (the index column of history.csv)",
    "step": "the strategy's own number of it: Optuna's trial number (what optuna-dashboard shows), an RL "
            "episode, a sample",
    "keep": "per-layer keep ratios",
    "rung": "the ladder rung of this score (0: the search's own score)",
    "score": "the candidate score that measured the accuracy",
}


def settings_model(*, max_evaluations: int) -> type[BaseModel]:
    """The body of ``POST /v1/searches``: ``scripts/search.py``'s long options, each optional.

    Only the JSON kind of each value is checked here; the values themselves go through the CLI's own
    parser and configs (:func:`search.service.validation.validate_settings`).
    """
    fields: dict[str, Any] = {}
    limits = bounds(max_evaluations)
    for name, action in settable_options().items():
        kind = action.kind
        extra: dict[str, Any] = {}
        if action.choices:
            extra["enum"] = list(action.choices)
        if name in limits:
            extra["minimum"], extra["maximum"] = limits[name]
        python_type = {"boolean": StrictBool, "integer": StrictInt, "number": Union[StrictFloat, StrictInt],
                       "string": StrictStr, "list": Union[StrictStr, list[StrictStr]]}[kind]
        text_limit = {"max_length": MAX_TEXT} if kind == "string" else {}
        # Not nullable: a setting left out takes search.py's default (null is refused, and not shown as one).
        fields[name] = (python_type, Field(None, description=action.help, json_schema_extra=_schema_extra(extra),
                                           **text_limit))
    return create_model("SearchSettings", __config__=ConfigDict(extra="allow"), **fields)


def _schema_extra(extra: dict[str, Any]):
    def edit(schema: dict[str, Any]) -> None:
        schema.pop("default", None)
        schema.update(extra)
    return edit


def record_model(name: str, *, fields: tuple[str, ...] | None = None,
                 descriptions: dict[str, str] | None = None) -> type[BaseModel]:
    """A response model with the fields of :class:`search.history.Record` (its types and defaults).

    Args:
        name: The model's name (its OpenAPI schema's).
        fields: The Record fields it has, in Record's order (None: all).
        descriptions: Field name -> its description in the document.
    """
    hints = get_type_hints(Record)
    known = [field.name for field in dataclasses.fields(Record)]
    unknown = set(fields or ()) - set(known)
    if unknown:
        raise ValueError(f"{name}: {sorted(unknown)} are not fields of search.history.Record ({', '.join(known)})")
    descriptions = descriptions or {}
    chosen: dict[str, Any] = {}
    for field in dataclasses.fields(Record):
        if fields is not None and field.name not in fields:
            continue
        default = ... if field.default is dataclasses.MISSING else field.default
        chosen[field.name] = (hints[field.name], Field(default, description=descriptions.get(field.name)))
    return create_model(name, **chosen)


Best = record_model("Best", fields=BEST_FIELDS, descriptions=BEST_DOCS)
Evaluation = record_model("Evaluation", descriptions=EVALUATION_DOCS)


class Search(BaseModel):
    id: str
    state: SearchState
    settings: dict[str, Any] = Field(description="the settings as submitted")
    options: dict[str, Any] = Field(description="every option's value, defaults filled in")
    evaluations_done: int
    evaluations_total: int
    progress: float = Field(description="evaluations_done / evaluations_total, 1.0 once succeeded")
    best: Best | None = Field(description="the best evaluated policy so far")
    attempt: int = Field(description="launches so far (1 + resumes)")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: SearchRow) -> Search:
        done, total = row.evaluations_done, row.evaluations_total
        progress = 1.0 if row.state == SearchState.SUCCEEDED else min(1.0, done / total) if total else 0.0
        return cls(id=row.id, state=row.state, settings=row.settings, options=row.options, evaluations_done=done,
                   evaluations_total=total, progress=progress, best=row.best, attempt=row.attempt,
                   error=row.error, created_at=as_utc(row.created_at), started_at=as_utc(row.started_at),
                   finished_at=as_utc(row.finished_at))


class SearchList(BaseModel):
    searches: list[Search]


class EvaluationPage(BaseModel):
    evaluations: list[Evaluation]
    next: int = Field(description="pass as ?offset= to get the rows that follow")


class Artifact(BaseModel):
    name: str = Field(description="GET /v1/searches/{id}/artifacts/{name} fetches it")
    media_type: str
    bytes: int


class ArtifactList(BaseModel):
    artifacts: list[Artifact] = Field(description="the files written so far (a TPE search has no pareto.json, "
                                                  "a no_export one no pruned.pt2)")


class LayerWidth(BaseModel):
    name: str
    base: int | None = Field(None, description="the base model's width (output channels)")
    best: int | None = Field(None, description="the best policy's width")
    best_keep: float | None = Field(None, description="the best policy's keep ratio")
    uniform: int | None = Field(None, description="the uniform policy's width")
    uniform_keep: float | None = Field(None, description="the uniform policy's keep ratio")


class Summary(BaseModel):
    """``report.html``'s facts; null until known (base and uniform are measured when the search ends)."""

    best_index: int | None = Field(description="the best evaluation (highest reward; a tie goes to the cheaper, "
                                               "then the earlier policy)")
    best_val_accuracy: float | None
    best_test_accuracy: float | None
    best_cost_ratio: float | None
    base_val_accuracy: float | None
    base_test_accuracy: float | None
    uniform_val_accuracy: float | None
    uniform_test_accuracy: float | None
    uniform_cost_ratio: float | None
    layers: list[LayerWidth] = Field(description="per layer: base width and the best and uniform policies' widths "
                                                 "(while running: the best keep ratios so far, by position)")
    elapsed_s: float | None = Field(description="since the search first started (to its end once finished)")
    remaining_s: float | None = Field(description="an estimate of the time left while it runs: elapsed time per "
                                                  "evaluation so far times the evaluations left")


class Problem(BaseModel):
    detail: str


class InvalidSetting(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "detail": "budget: must be a number in (0, 1], got '0'", "field": "budget",
        "reason": "must be a number in (0, 1], got '0'"}})
    detail: str
    field: str = Field(description="the setting (or parameter) at fault")
    reason: str


class Health(BaseModel):
    status: Literal["ok"]
