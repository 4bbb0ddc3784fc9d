"""A pipeline compiled to plain arrays, and the cost/time of one assignment of stages to offers.

``Problem.evaluate`` is the single cost model every policy (and bench/policy.py's exhaustive
optimum) uses, so a policy is only as good as its search, never judged on a different yardstick:

- Grouping: a cloud stage joins the cluster (group) of a predecessor placed on the same offer;
  otherwise it starts a new cluster. A cluster runs its stages one after another, is launched when
  its first stage's predecessors are done, pays ``startup_seconds`` once and is billed per second
  from launch to its last stage's end plus teardown, with a 60 s minimum.
- Data: an output crosses laptop->cloud at the measured upload bandwidth (once per output),
  cloud->laptop at the download bandwidth plus the offer's transfer price per GB (once), cloud
  cluster->other cluster through S3 (fast, free in one region). A cloud stage uploads its external
  ``input_gb`` once its predecessors are done; a cloud stage nobody needs downloads its outputs.
- Local: stages share the machine's logical cores and GPUs; a stage starts when enough are free.
  Roughly: intervals that ended before a stage's data was ready are forgotten.
- Finish time is the DAG's critical path under these rules; cost is cloud billing, transfer out and
  the local machine's electricity while it runs stages.
- Nodes (issue 14): a stage with ``resources.nodes`` N > 1 gets a cluster of N nodes of its offer,
  billed N times, whose start-up is the slowest node's (lhorch.orchestrator.core.nodes); its run
  time (the estimator's) has the data-parallel speed-up in it. A stage joins a predecessor's
  cluster only when both span the same number of nodes: no cluster is resized mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lhorch.orchestrator.core.graph import topological_order
from lhorch.orchestrator.core.nodes import cluster_startup_seconds
from lhorch.orchestrator.core.plan import Offer
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.policies.base import StageEstimates

MIN_BILLED_SECONDS = 60.0
INF = float("inf")


@dataclass
class Outcome:
    cost: float
    seconds: float
    startup_seconds: float = 0.0  # the clusters' start-ups, summed: what the balanced key weighs as risk
    start: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    group_cost: list[float] = field(default_factory=list)
    group_offer: list[int] = field(default_factory=list)
    stage_cost: list[float] = field(default_factory=list)


class Problem:
    """Stages in topological order (index i), offers (index o) and per-(i, o) run times."""

    def __init__(self, pipeline: Pipeline, offers: list[Offer], est: StageEstimates):
        self.pipeline = pipeline
        self.offers = offers
        self.names = topological_order(pipeline.stages)
        self.n = len(self.names)
        index = {name: i for i, name in enumerate(self.names)}
        self.index = index
        stages = [pipeline.stages[name] for name in self.names]
        self.stages = stages
        self.preds = [[index[p] for p in s.needs] for s in stages]
        self.succs: list[list[int]] = [[] for _ in stages]
        for i, ps in enumerate(self.preds):
            for p in ps:
                self.succs[p].append(i)
        self.is_local = [o.is_local for o in offers]
        self.local = next((k for k, o in enumerate(offers) if o.is_local), None)
        self.price_s = [o.price_per_hour / 3600.0 for o in offers]
        self.startup = [o.startup_seconds for o in offers]
        self.teardown = [o.teardown_seconds for o in offers]
        self.egress = [o.transfer_usd_per_gb for o in offers]
        local_offer = offers[self.local] if self.local is not None else None
        self.cap_cpus = float(local_offer.vcpus) if local_offer else 1.0
        self.cap_gpus = float(local_offer.gpus) if local_offer else 0.0
        self.elec_s = self.price_s[self.local] if self.local is not None else 0.0

        self.out_gb = [est.output_gb(n, s) for n, s in zip(self.names, stages, strict=True)]
        self.in_up = [est.upload_seconds(est.input_gb(n, s)) for n, s in zip(self.names, stages, strict=True)]
        self.up_s = [est.upload_seconds(g) for g in self.out_gb]
        self.down_s = [est.download_seconds(g) for g in self.out_gb]
        self.s3_s = [est.cloud_copy_seconds(g) for g in self.out_gb]
        self.cpus = [min(s.resources.cpus, self.cap_cpus) for s in stages]
        self.gpus = [float(s.resources.gpus) for s in stages]
        self.nodes = [s.resources.nodes for s in stages]

        # Which offers each stage may use, and its run time there.
        self.run: list[dict[int, float]] = []
        self.allowed: list[list[int]] = []
        self.why_not: list[dict[int, str]] = []
        # Stages alike in everything the estimate reads (and with no history of their own) get the
        # same times: with ~250 catalogue offers, computing them once per kind keeps planning fast.
        signature = getattr(est, "signature", None)
        alike: dict[str, tuple[dict[int, float], dict[int, str]]] = {}
        # Whether a stage fits an offer depends on its resources alone (for an estimator that says
        # so through ``signature``): asked once per kind of resources, not once per stage.
        fits: dict[str, list[str | None]] = {}
        for name, stage in zip(self.names, stages, strict=True):
            sig = signature(name, stage) if signature is not None else None
            if sig is not None and sig in alike:
                times, why = dict(alike[sig][0]), dict(alike[sig][1])
                self.allowed.append(sorted(times))
                self.run.append(times)
                self.why_not.append(why)
                continue
            times, why = {}, {}
            fit: list[str | None] | None = None
            if sig is not None:
                res = stage.resources.model_dump_json()
                fit = fits.get(res)
                if fit is None:
                    fit = fits[res] = [est.fit_problem(name, stage, offer) for offer in offers]
            for o, offer in enumerate(offers):
                loc = self.is_local[o]
                if stage.placement == "local" and not loc:
                    continue
                if stage.placement == "cloud" and loc:
                    continue
                problem = fit[o] if fit is not None else est.fit_problem(name, stage, offer)
                if problem:
                    why[o] = problem
                    continue
                t = est.run_seconds(name, stage, offer)
                if t == INF:
                    why[o] = "no device of the kind it needs"
                    continue
                if stage.budget_usd is not None and not offer.is_local:
                    n = stage.resources.nodes
                    billed = max(MIN_BILLED_SECONDS,
                                 t + cluster_startup_seconds(offer.startup_seconds, n) + offer.teardown_seconds)
                    alone = offer.price_per_hour / 3600.0 * billed * n
                    if alone > stage.budget_usd:
                        why[o] = f"would cost ${alone:.2f}, over the stage's budget_usd ${stage.budget_usd:g}"
                        continue
                times[o] = t
            if sig is not None and times:
                alike[sig] = (dict(times), dict(why))
            self.allowed.append(sorted(times))
            if not times:  # cannot run anywhere: keep a finite stand-in so totals stay readable
                o = self.local if self.local is not None else 0
                t = est.run_seconds(name, stage, offers[o]) if offers else 0.0
                times[o] = t if t != INF else 0.0
            self.run.append(times)
            self.why_not.append(why)
        self.unplaceable = [i for i in range(self.n) if not self.allowed[i]]
        self.is_sink = [not s for s in self.succs]

    def startup_of(self, i: int, o: int) -> float:
        """Start-up of the cluster stage i would start on offer o: the slowest of its nodes."""
        return cluster_startup_seconds(self.startup[o], self.nodes[i])

    def standalone(self, i: int, o: int) -> tuple[float, float]:
        """(cost, seconds) of stage i alone on offer o: its own cluster, no neighbours."""
        t = self.run[i][o]
        if self.is_local[o]:
            return self.elec_s * t, t
        startup = self.startup_of(i, o)
        billed = max(MIN_BILLED_SECONDS, t + startup + self.teardown[o])
        return self.price_s[o] * self.nodes[i] * billed, t + startup + self.in_up[i]

    def evaluate(self, a: list[int], detail: bool = False) -> Outcome:
        """Cost and finish time of assignment ``a`` (stage index -> offer index)."""
        n = self.n
        is_local, preds, run = self.is_local, self.preds, self.run
        finish = [0.0] * n
        start = [0.0] * n if detail else finish
        grp = [-1] * n
        g_launch: list[float] = []
        g_avail: list[float] = []
        g_offer: list[int] = []
        g_nodes: list[int] = []
        g_startup: list[float] = []
        nodes = self.nodes
        uploaded: dict[int, float] = {}
        downloaded: dict[int, float] = {}
        running: list[tuple[float, float, float, float]] = []  # local: (start, end, cpus, gpus)
        cost = 0.0
        cap_c, cap_g = self.cap_cpus + 1e-9, self.cap_gpus + 1e-9
        local_busy = 0.0
        makespan = 0.0
        for i in range(n):
            o = a[i]
            loc = is_local[o]
            g = -1
            if not loc:
                for p in preds[i]:
                    if a[p] == o and nodes[p] == nodes[i]:
                        g = grp[p]
                        break
            t_dep = 0.0
            t_data = 0.0
            for p in preds[i]:
                fp = finish[p]
                if fp > t_dep:
                    t_dep = fp
                op = a[p]
                if is_local[op]:
                    if loc:
                        t = fp
                    else:  # uploaded once, however many local stages' outputs a cloud stage reads
                        if p not in uploaded:
                            uploaded[p] = fp + self.up_s[p]
                        t = uploaded[p]
                elif loc:
                    if p not in downloaded:  # downloaded (and its egress paid) once
                        downloaded[p] = fp + self.down_s[p]
                        cost += self.out_gb[p] * self.egress[op]
                    t = downloaded[p]
                elif grp[p] == g:
                    t = fp
                else:
                    t = fp + self.s3_s[p]
                if t > t_data:
                    t_data = t
            d = run[i].get(o, INF)
            if loc:
                c, gu = self.cpus[i], self.gpus[i]
                s = t_data
                if running:
                    running = [r for r in running if r[1] > s]
                    while True:
                        end = s + d
                        uc = c
                        ug = gu
                        nxt = INF
                        for rs, re, rc, rg in running:
                            if rs < end and re > s:
                                uc += rc
                                ug += rg
                                if re < nxt:
                                    nxt = re
                        if (uc <= cap_c and ug <= cap_g) or nxt == INF:
                            break
                        s = nxt
                e = s + d
                running.append((s, e, c, gu))
                local_busy += d
            else:
                ready = t_data
                if self.in_up[i]:
                    ready = max(ready, t_dep + self.in_up[i])
                if g < 0:
                    g = len(g_launch)
                    up = self.startup[o] if nodes[i] == 1 else self.startup_of(i, o)
                    g_launch.append(t_dep)
                    g_avail.append(t_dep + up)
                    g_offer.append(o)
                    g_nodes.append(nodes[i])
                    g_startup.append(up)
                s = ready if ready > g_avail[g] else g_avail[g]
                e = s + d
                g_avail[g] = e
                if self.is_sink[i] and self.out_gb[i]:
                    cost += self.out_gb[i] * self.egress[o]
                    done = e + self.down_s[i]
                    if done > makespan:
                        makespan = done
            grp[i] = g
            if detail:
                start[i] = s
            finish[i] = e
            if e > makespan:
                makespan = e
        g_cost = []
        for g, o in enumerate(g_offer):
            billed = g_avail[g] - g_launch[g] + self.teardown[o]
            billed = billed if billed > MIN_BILLED_SECONDS else MIN_BILLED_SECONDS
            g_cost.append(self.price_s[o] * g_nodes[g] * billed)
        cost += sum(g_cost) + self.elec_s * local_busy
        startups = sum(g_startup)
        if not detail:
            return Outcome(cost, makespan, startups)
        return self._detail(a, Outcome(cost, makespan, startups, start, finish, grp, g_cost, g_offer))

    def _detail(self, a: list[int], out: Outcome) -> Outcome:
        """Attribute cost to stages: run time at the offer's price, a cluster's start-up, idle
        time and minimum billing to its first stage, transfer out to the stage that wrote it."""
        stage_cost = [0.0] * self.n
        first: dict[int, int] = {}
        run_cost: dict[int, float] = {}
        for i in range(self.n):
            o = a[i]
            d = self.run[i].get(o, INF)
            if self.is_local[o]:
                stage_cost[i] = self.elec_s * d
                continue
            stage_cost[i] = self.price_s[o] * self.nodes[i] * d
            g = out.group[i]
            first.setdefault(g, i)
            run_cost[g] = run_cost.get(g, 0.0) + stage_cost[i]
            egress = 0.0
            if self.is_sink[i]:
                egress += self.out_gb[i]
            elif any(self.is_local[a[j]] for j in self.succs[i]):
                egress += self.out_gb[i]
            stage_cost[i] += egress * self.egress[o]
        for g, i in first.items():
            stage_cost[i] += max(0.0, out.group_cost[g] - run_cost[g])
        out.stage_cost = stage_cost
        return out
