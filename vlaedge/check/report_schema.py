"""The parts of report.json (schema vlaedge.report/1) and profile.json (vlaedge.profile/1) that `gate`
judges, as pydantic models: a report read back from disk is validated against them before any budget
is checked, so a hand-edited or truncated report is one line naming the field, never a traceback or a
silent pass. Every number must be finite. Fields the gate does not read are allowed and kept as they are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlaedge.errors import VlaedgeError


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Policy(_Part):
    name: str | None = None
    sha256: str | None = None


class Candidate(_Part):
    sha256: str | None = None
    file_bytes: int | None = Field(None, ge=0)


class DimDrift(_Part):
    name: str
    mean_pct: float
    p99_pct: float
    token_agreement: float | None = None
    gripper_flip_rate: float | None = None


class Drift(_Part):
    mean_pct: float
    p99_pct: float
    per_dim: list[DimDrift] = Field(min_length=1)
    cosine_mean: float | None = None
    cosine_min: float | None = None
    token_agreement: float | None = None
    gripper_flip_rate: float | None = None


class Rate(_Part):
    successes: int = Field(ge=0)
    episodes: int = Field(ge=0)
    rate: float = Field(ge=0, le=1)
    interval: tuple[float, float]


class ClosedLoop(_Part):
    reference: Rate
    candidate: Rate
    status: str
    min_episodes: int = Field(ge=0)


class Latency(_Part):
    median_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)


class Throughput(_Part):
    inferences_per_s: float = Field(ge=0)
    actions_per_s: float = Field(ge=0)


class Memory(_Part):
    peak_rss_delta_mb: float
    method: str


class ModelProfile(_Part):
    runtime: str
    latency: Latency
    rate: Throughput
    memory: Memory
    file_bytes: int | None = Field(None, ge=0)


class Load(_Part):
    """The machine's load while timing (`vlaedge.check.host.LoadProbe`): it decides whether an absolute
    timing budget is judged or not measurable."""

    loadavg_1m_before: float | None = Field(None, ge=0)
    cores: int = Field(1, ge=1)
    busy_others_share: float | None = Field(None, ge=0, le=1)
    steal_share: float | None = Field(None, ge=0, le=1)


class Profile(_Part):
    models: list[ModelProfile] = Field(min_length=1)
    load: Load | None = None


class GateCheck(_Part):
    name: str
    status: Literal["pass", "fail", "inconclusive", "skipped", "not_measurable"]
    measured: float | None = None
    allowed: float | None = None


class Gate(_Part):
    passed: bool
    checks: list[GateCheck]
    not_measurable: list[str] = []  # absent from reports written before the state existed


class Report(_Part):
    schema_: str = Field(alias="schema")
    target: str | None = None
    policy: Policy
    candidate: Candidate
    drift: Drift | None
    closed_loop: ClosedLoop | None
    profile: Profile | None
    gate: Gate | None


def validate(document: dict, model: type[BaseModel], where: str) -> dict:
    """Checks `document` against `model` (Report or Profile) and returns it unchanged.

    Raises:
        VlaedgeError: the first invalid field, as `report: PATH: drift.per_dim.0.mean_pct: ...`.
    """
    try:
        model.model_validate(document)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise VlaedgeError(f"{where}: {field}: {err['msg']}",
                           "re-run the command that wrote it; do not edit reports by hand") from None
    return document
