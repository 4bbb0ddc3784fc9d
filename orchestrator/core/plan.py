"""Plain data that flows between the planner, the policies and the runner."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Why an infeasible plan is refused: a stage fits nowhere, the budget cap, or the deadline.
ProblemKind = Literal["fit", "budget", "deadline"]


class _Data(BaseModel):
    # Built on first use, not at import: `lhorch validate` imports these (through the catalogue's Offer)
    # without making one, and building them costs ~10 ms of its start-up (issue 18).
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Offer(_Data):
    """Somewhere a stage can run: the local node or one cloud instance type in one market."""

    provider: str = Field(..., description="local | aws | ray")
    instance_type: str = Field("local", description="e.g. g5.xlarge; 'local' for the local node")
    market: Literal["local", "on-demand", "spot", "fixed"] = "local"
    region: str | None = None
    arch: str = Field("x86_64", description="CPU architecture: x86_64 | arm64 (Graviton)")
    vcpus: float
    cores: float | None = Field(None, description="Physical cores; None: as many as vcpus.")
    memory_gb: float
    gpus: int = 0
    gpu_model: str | None = None
    gpu_memory_gb: float = 0.0
    price_per_hour: float = 0.0
    startup_seconds: float = 0.0
    teardown_seconds: float = 0.0
    gflops_fp32: float | None = Field(None, description="Sustained matmul throughput per node, CPU.")
    gpu_gflops: float | None = Field(None, description="Sustained matmul throughput per GPU, best precision.")
    upload_mbps: float | None = Field(None, description="Bandwidth from the laptop to this offer.")
    download_mbps: float | None = None
    transfer_usd_per_gb: float = Field(0.0, description="Data transfer out price (cloud → laptop).")
    interruption_rate_per_hour: float = Field(0.0, description="For spot: chance per hour of an interruption.")
    price_source: str = Field("catalogue", description="catalogue | live:<date> | fixed")

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.instance_type}:{self.market}"

    @property
    def is_local(self) -> bool:
        return self.provider == "local"


class Alternative(_Data):
    """Another place a stage could have run, priced as a whole plan with only that stage moved."""

    target: str = Field(..., description="'local' or 'INSTANCE_TYPE MARKET'")
    est_seconds: float | None = Field(None, description="The stage's run time there; None when it does not fit.")
    plan_cost_usd: float | None = Field(None, description="Whole-plan cost with the stage moved there.")
    plan_seconds: float | None = Field(None, description="Whole-plan time (critical path) with the stage moved there.")
    lost_because: str = Field(..., description="The deciding factor, in the numbers of the table.")


class Placement(_Data):
    stage: str
    target: Literal["local", "cloud"]
    provider: str = "local"
    instance_type: str = "local"
    market: str = "local"
    group: str | None = Field(None, description="Cloud stages with the same group share one cluster.")
    nodes: int = Field(1, description="Nodes of the instance type the stage spans (resources.nodes); est_cost_usd "
                                      "pays for all of them.")
    est_seconds: float = 0.0
    est_cost_usd: float = 0.0
    reason: str = ""
    deciding_factor: str = Field("", description="cost | time | fit | budget | deadline | pinned | local-first | "
                                                      "tie | no-cloud")
    offer: Offer | None = None
    alternatives: list[Alternative] = Field(default_factory=list,
                                            description="What else was considered and why each lost, best first.")


class Plan(_Data):
    pipeline: str
    policy: str
    placements: dict[str, Placement]
    est_total_seconds: float = Field(0.0, description="Critical-path time, start-ups included.")
    est_total_cost_usd: float = 0.0
    feasible: bool = True
    problems: list[str] = Field(default_factory=list, description="Why stages cannot be placed, if any.")
    problem_kind: ProblemKind | None = Field(
        None, description="Why an infeasible plan is refused: a stage fits nowhere, the cap, or the deadline.",
    )
    budget_usd: float | None = Field(None, description="The cap the plan was made under (budget.max_usd).")
    deadline_seconds: float | None = Field(None, description="The deadline the plan was made under.")

    def cloud_groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for p in self.placements.values():
            if p.target == "cloud":
                groups.setdefault(p.group or p.stage, []).append(p.stage)
        return groups
