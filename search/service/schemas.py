"""Request and response bodies (they are the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

from search.service.db import STATES, SearchRow, as_utc
from search.service.validation import LIMITS, MAX_TEXT, json_kind, option_actions

State = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled", "interrupted"]
assert set(State.__args__) == set(STATES)


def settings_model(*, max_evaluations: int) -> type[BaseModel]:
    """The body of ``POST /v1/searches``: ``scripts/search.py``'s long options, each optional.

    Only the JSON kind of each value is checked here; the values themselves go through the CLI's own
    parser and configs (:func:`search.service.validation.validate_settings`).
    """
    fields: dict[str, Any] = {}
    limits = {**LIMITS, "evaluations": max_evaluations}
    for name, action in option_actions().items():
        kind = json_kind(action)
        extra: dict[str, Any] = {}
        if action.choices:
            extra["enum"] = list(action.choices)
        if name in limits:
            extra["maximum"] = limits[name]
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


class Best(BaseModel):
    index: int = Field(description="evaluation number (the index column of history.csv)")
    accuracy: float
    cost_ratio: float
    reward: float
    keep: list[float] = Field(description="per-layer keep ratios")
    rung: int = Field(0, description="the ladder rung of this score (0: the search's own score)")
    score: str = Field("", description="the candidate score that measured the accuracy")


class Search(BaseModel):
    id: str
    state: State
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
        progress = 1.0 if row.state == "succeeded" else min(1.0, done / total) if total else 0.0
        return cls(id=row.id, state=row.state, settings=row.settings, options=row.options, evaluations_done=done,
                   evaluations_total=total, progress=progress, best=row.best, attempt=row.attempt,
                   error=row.error, created_at=as_utc(row.created_at), started_at=as_utc(row.started_at),
                   finished_at=as_utc(row.finished_at))


class SearchList(BaseModel):
    searches: list[Search]


class Evaluation(BaseModel):
    index: int
    strategy: str
    step: int
    accuracy: float
    loss: float
    cost: float
    cost_ratio: float
    reward: float
    cached: bool
    seconds: float
    wall_time: float
    keep: list[float]
    rung: int = Field(0, description="0: the search's own score; r >= 1: the ladder's r-th score of this candidate")
    score: str = Field("", description="the candidate score of this row (bn, reconstruct, finetune:K[+kd])")


class EvaluationPage(BaseModel):
    evaluations: list[Evaluation]
    next: int = Field(description="pass as ?after= to get the rows that follow")


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
