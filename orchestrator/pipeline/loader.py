"""Load a pipeline file: YAML → Pipeline, with every error naming the file, line and field path.

PyYAML's composer keeps a start mark on every node; we walk the node tree once to map each field
path to its line, then let pydantic validate the plain data and translate its error locations back
to lines. Checks that span stages (unknown or cyclic `needs`, input references, job parameters)
run after pydantic, with the same line map.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lhorch.jobs.index import find_job, job_names  # parameter models only: no torch (see jobs/index.py)
from lhorch.orchestrator.core.errors import SpecError
from lhorch.orchestrator.core.graph import ancestors, find_cycle
from lhorch.orchestrator.core.spec import Pipeline, Stage

Loc = tuple[Any, ...]


class _LineMap:
    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self.key_lines: dict[Loc, int] = {}

    def line(self, loc: Iterable[Any]) -> int | None:
        """Line of the deepest known prefix of ``loc`` (1-based)."""
        loc = tuple(loc)
        for end in range(len(loc), -1, -1):
            prefix = loc[:end]
            if prefix in self.lines:
                return self.lines[prefix]
        return None


def _walk(node: yaml.Node, loc: Loc, out: _LineMap, file: str) -> None:
    out.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(
                    f"appears twice (first on line {seen[key]})", file=file, line=line,
                    field=_dotted(loc + (key,)),
                    hint="Each key may appear once in a mapping; stage names must be unique.",
                )
            seen[key] = line
            out.key_lines[loc + (key,)] = line
            _walk(value_node, loc + (key,), out, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, loc + (i,), out, file)


def _dotted(loc: Iterable[Any]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


def _pydantic_message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    msg = err["msg"].replace("Input should be a valid dictionary", "should be a mapping (name: value)")
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _spec_error_from_validation(exc: ValidationError, lines: _LineMap, file: str, root: Loc = ()) -> SpecError:
    err = exc.errors()[0]
    # pydantic adds the union branch or model name to some locations; drop what is not in the file.
    loc = root + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # The key's line reads best: for a block mapping the value starts on the line after it.
    line = lines.key_lines.get(loc) or lines.line(loc)
    more = len(exc.errors()) - 1
    hint = f"{more} more problem(s) follow once this one is fixed." if more else None
    if err["type"] == "extra_forbidden":
        hint = "Check the spelling; `lhorch schema` lists every field." + (f" {hint}" if hint else "")
    return SpecError(_pydantic_message(err), file=file, line=line, field=_dotted(loc), hint=hint)


def parse_pipeline(text: str, file: str = "<pipeline>", base_dir: Path | None = None) -> Pipeline:
    """Parse and validate pipeline text; raises SpecError naming the line and field."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"YAML syntax error: {exc.problem or exc}", file=file, line=line,
                        hint="Check indentation and quoting around this line.") from None
    if node is None:
        raise SpecError("the file is empty", file=file, hint="A pipeline needs at least `name` and `stages`.")
    if not isinstance(node, yaml.MappingNode):
        raise SpecError("the top level must be a mapping with `name` and `stages`", file=file,
                        line=node.start_mark.line + 1)
    lines = _LineMap()
    _walk(node, (), lines, file)
    data = yaml.safe_load(text)
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise _spec_error_from_validation(exc, lines, file) from None
    _check_graph(pipeline, lines, file)
    _check_inputs(pipeline, lines, file, base_dir)
    _check_jobs(pipeline, lines, file)
    return pipeline


def load_pipeline(path: str | Path) -> Pipeline:
    path = Path(path)
    if not path.exists():
        raise SpecError("no such file", file=str(path), hint="Give the path to a pipeline YAML file.")
    if path.is_dir():
        raise SpecError("is a folder, not a pipeline file", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot be read: {exc}", file=str(path)) from None
    return parse_pipeline(text, file=str(path), base_dir=path.resolve().parent)


def _check_graph(pipeline: Pipeline, lines: _LineMap, file: str) -> None:
    for name, stage in pipeline.stages.items():
        for i, need in enumerate(stage.needs):
            loc = ("stages", name, "needs", i)
            if need == name:
                raise SpecError("a stage cannot need itself", file=file, line=lines.line(loc), field=_dotted(loc))
            if need not in pipeline.stages:
                known = ", ".join(sorted(pipeline.stages))
                raise SpecError(f"unknown stage {need!r}", file=file, line=lines.line(loc), field=_dotted(loc),
                                hint=f"Stages in this file: {known}.")
    cycle = find_cycle(pipeline.stages)
    if cycle:
        loc = ("stages", cycle[0], "needs")
        raise SpecError(f"cycle in needs: {' -> '.join(cycle)}", file=file, line=lines.line(loc), field=_dotted(loc),
                        hint="Stages form a DAG: remove one of these needs.")


def _check_inputs(pipeline: Pipeline, lines: _LineMap, file: str, base_dir: Path | None) -> None:
    for name, stage in pipeline.stages.items():
        upstream = ancestors(pipeline.stages, name)
        for key, ref in stage.inputs.items():
            loc = ("stages", name, "inputs", key)
            error = partial(SpecError, file=file, line=lines.line(loc), field=_dotted(loc))
            producer, _, output = ref.partition(".")
            if producer in pipeline.stages and output:
                if producer not in upstream:
                    raise error(f"refers to stage {producer!r}, which this stage does not need",
                                hint=f"Add {producer!r} to `needs` (directly or through another stage).")
                declared = _declared_outputs(pipeline.stages[producer])
                if declared is not None and output not in declared:
                    raise error(f"stage {producer!r} has no output {output!r}",
                                hint=f"Its outputs: {', '.join(declared) or 'none declared'}.")
            elif (base_dir is not None and not (base_dir / ref).expanduser().exists()
                  and not Path(ref).expanduser().is_absolute()):
                raise error(f"{ref!r} is neither `stage.output` nor an existing path")


def _declared_outputs(stage: Stage) -> list[str] | None:
    if stage.uses:
        job = find_job(stage.uses)
        return None if job is None else list(job.outputs) + list(stage.outputs)
    return list(stage.outputs)


def _check_jobs(pipeline: Pipeline, lines: _LineMap, file: str) -> None:
    for name, stage in pipeline.stages.items():
        if not stage.uses:
            continue
        job = find_job(stage.uses)
        if job is None:
            loc = ("stages", name, "uses")
            raise SpecError(f"unknown job {stage.uses!r}", file=file, line=lines.line(loc), field=_dotted(loc),
                            hint=f"Built-in jobs: {', '.join(job_names())}. For your own code use `run:`.")
        try:
            job.params.model_validate(stage.with_)
        except ValidationError as exc:
            raise _spec_error_from_validation(exc, lines, file, root=("stages", name, "with")) from None
