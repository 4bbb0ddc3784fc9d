"""Load a pipeline file: YAML → Pipeline, with every error naming the file, line and field path.

PyYAML's composer keeps a start mark on every node; we walk the node tree once to map each field
path to its line, then let pydantic validate the plain data and translate its error locations back
to lines. Checks that span stages (unknown or cyclic `needs`, input references, job parameters)
run after pydantic, with the same line map.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lhorch.jobs.index import find_job, job_names  # parameter models only: no torch (see jobs/index.py)
from lhorch.orchestrator.core.errors import SpecError
from lhorch.orchestrator.core.graph import ancestors, find_cycle
from lhorch.orchestrator.core.spec import Pipeline, Stage
from lhorch.providers.aws.catalogue import is_known_type, type_names  # the bundled JSON: no boto3
from lhorch.providers.aws.preflight import ec2_regions, region_problem  # botocore's endpoint data as JSON: no boto3

Loc = tuple[Any, ...]


# Bounds on the work one file may cause (issue 17): a pipeline file is small and shallow, so these
# refuse only hostile or broken input, with a message that says which limit it hit.
# 1 MiB holds some 12,000 stages and validates in about three seconds; a bigger file is not one someone wrote.
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64  # nesting of mappings and sequences; a pipeline needs about six
MAX_ALIAS_EXPANSION = 100_000  # nodes that aliases may add beyond those written out (an alias bomb adds billions)

# libyaml parses ten times faster than PyYAML's pure-Python parser: a 10 MB file in seconds, not a minute.
_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


class _Composer:
    """YAML events → node tree and line map, without recursion (PyYAML's composer recurses, so 5,000
    nested brackets end in a RecursionError), refusing deep nesting, alias bombs and duplicate keys."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines = _LineMap()
        self.resolver = yaml.resolver.Resolver()
        self.anchors: dict[str, yaml.Node] = {}
        self.sizes: dict[int, int] = {}  # id(node) → nodes in it once aliases are expanded
        self.open: set[int] = set()
        self.expansion = 0
        # One frame per open collection: node, its loc, the pending key node (mappings), keys seen.
        self.stack: list[tuple[yaml.Node, Loc, list[Any], dict[Any, int]]] = []
        self.root: yaml.Node | None = None

    def error(self, message: str, mark: Any, hint: str | None = None) -> SpecError:
        return SpecError(message, file=self.file, line=mark.line + 1 if mark else None, hint=hint)

    def compose(self, text: str) -> yaml.Node | None:
        documents = 0
        for event in yaml.parse(text, Loader=_Parser):
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self.error("holds more than one YAML document", event.start_mark,
                                     hint="A pipeline file is one document: remove the `---` line.")
            elif isinstance(event, yaml.AliasEvent):
                self.alias(event)
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self.resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
                node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
                self.sizes[id(node)] = 1
                self.place(node, event.anchor, event.start_mark)
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                self.start(event)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                node, _, _, _ = self.stack.pop()
                self.open.discard(id(node))
                self.sizes[id(node)] = 1 + sum(self.sizes[id(child)] for child in _children(node))
        return self.root

    def start(self, event: Any) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} levels deep", event.start_mark,
                             hint="A pipeline file is a few levels deep; check for unbalanced brackets.")
        mapping = isinstance(event, yaml.MappingStartEvent)
        kind = yaml.MappingNode if mapping else yaml.SequenceNode
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(kind, None, event.implicit)
        node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
        loc = self.place(node, event.anchor, event.start_mark)
        self.open.add(id(node))
        self.stack.append((node, loc, [], {}))

    def alias(self, event: Any) -> None:
        node = self.anchors.get(event.anchor)
        if node is None:
            raise self.error(f"unknown alias *{event.anchor}", event.start_mark,
                             hint="Define the anchor (&name) first.")
        if id(node) in self.open:
            raise self.error(f"alias *{event.anchor} refers to a node that contains it", event.start_mark)
        self.expansion += self.sizes[id(node)]
        if self.expansion > MAX_ALIAS_EXPANSION:
            raise self.error(f"aliases expand to more than {MAX_ALIAS_EXPANSION:,} nodes", event.start_mark,
                             hint="Write the repeated parts out, or alias fewer and smaller nodes.")
        self.place(node, None, event.start_mark)

    def place(self, node: yaml.Node, anchor: str | None, mark: Any) -> Loc:
        """Attach ``node`` to the open collection (a container as it starts); its loc in the file.
        ``mark`` is where it is written: for an alias, the alias, not the anchor."""
        if anchor is not None:
            self.anchors[anchor] = node
        if not self.stack:
            self.root = node
            loc: Loc = ()
        else:
            parent, parent_loc, pending, seen = self.stack[-1]
            if isinstance(parent, yaml.SequenceNode):
                loc = parent_loc + (len(parent.value),)
                parent.value.append(node)
            elif not pending:  # a mapping's key
                if not isinstance(node, yaml.ScalarNode):
                    raise self.error("a mapping key must be a plain name, not a list or mapping",
                                     node.start_mark, hint="Quote the key or write it as a single word.")
                key, line = node.value, mark.line + 1
                if key in seen:
                    raise SpecError(f"appears twice (first on line {seen[key]})", file=self.file, line=line,
                                    field=_dotted(parent_loc + (key,)),
                                    hint="Each key may appear once in a mapping; stage names must be unique.")
                seen[key] = line
                self.lines.key_lines[parent_loc + (key,)] = line
                pending.append(node)
                return parent_loc + (key,)
            else:
                key_node = pending.pop()
                loc = parent_loc + (key_node.value,)
                parent.value.append((key_node, node))
        self.lines.lines[loc] = mark.line + 1
        return loc


def _children(node: yaml.Node) -> Iterable[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


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
    if len(text) > MAX_FILE_BYTES:
        raise _too_large(file, len(text))
    with _gc_paused():
        return _parse(text, file, base_dir)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # A large file makes millions of small containers that live until validation ends; the cyclic
    # collector would rescan them all again and again (three times the run time on a 10 MB file).
    # They hold no cycles, so collecting after we are done loses nothing.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse(text: str, file: str, base_dir: Path | None) -> Pipeline:
    composer = _Composer(file)
    try:
        node = composer.compose(text)
    except yaml.YAMLError as exc:  # ReaderError (e.g. a NUL byte) is not a MarkedYAMLError
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or exc
        raise SpecError(f"YAML syntax error: {problem}", file=file, line=line,
                        hint="Check indentation and quoting around this line.") from None
    if node is None:
        raise SpecError("the file is empty", file=file, hint="A pipeline needs at least `name` and `stages`.")
    if not isinstance(node, yaml.MappingNode):
        raise SpecError("the top level must be a mapping with `name` and `stages`", file=file,
                        line=node.start_mark.line + 1)
    lines = composer.lines
    data = _construct(node, file)
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise _spec_error_from_validation(exc, lines, file) from None
    _check_graph(pipeline, lines, file)
    _check_inputs(pipeline, lines, file, base_dir)
    _check_jobs(pipeline, lines, file)
    _check_cloud(pipeline, lines, file)
    _check_nodes(pipeline, lines, file)
    return pipeline


def _construct(node: yaml.Node, file: str) -> Any:
    """Plain data from the composed tree (built once: the text is not parsed twice)."""
    try:
        return yaml.constructor.SafeConstructor().construct_document(node)
    # A tagged scalar that its constructor rejects (`!!int x`, `!!timestamp x`, digits past Python's
    # int limit) raises ValueError or worse rather than a YAMLError: each is a bad value in the file.
    except Exception as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or exc
        raise SpecError(f"cannot read a value: {problem}", file=file, line=line,
                        hint="Check the tags (`!!...`) and values around this line.") from None


def _too_large(file: str, size: int) -> SpecError:
    return SpecError(f"is {size / 2**20:.1f} MiB; a pipeline file may be at most {MAX_FILE_BYTES // 2**20} MiB",
                     file=file, hint="Is this the pipeline file? Generate fewer, larger stages.")


def load_pipeline(path: str | Path) -> Pipeline:
    path = Path(path)
    if not path.exists():
        raise SpecError("no such file", file=str(path), hint="Give the path to a pipeline YAML file.")
    if path.is_dir():
        raise SpecError("is a folder, not a pipeline file", file=str(path))
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # never read more than the limit (a device, a huge file)
        if len(raw) > MAX_FILE_BYTES:
            raise _too_large(str(path), path.stat().st_size)
        text = raw.decode("utf-8")
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
        for key, ref in stage.inputs.items():
            loc = ("stages", name, "inputs", key)
            error = partial(SpecError, file=file, line=lines.line(loc), field=_dotted(loc))
            producer, _, output = ref.partition(".")
            if producer in pipeline.stages and output:
                if not _upstream(pipeline, name, producer):
                    raise error(f"refers to stage {producer!r}, which this stage does not need",
                                hint=f"Add {producer!r} to `needs` (directly or through another stage).")
                declared = _declared_outputs(pipeline.stages[producer])
                if declared is not None and output not in declared:
                    raise error(f"stage {producer!r} has no output {output!r}",
                                hint=f"Its outputs: {', '.join(declared) or 'none declared'}.")
            elif (base_dir is not None and not (base_dir / ref).expanduser().exists()
                  and not Path(ref).expanduser().is_absolute()):
                raise error(f"{ref!r} is neither `stage.output` nor an existing path")


def _upstream(pipeline: Pipeline, name: str, producer: str) -> bool:
    """Whether ``name`` needs ``producer``, directly (the common case, checked first so that a long
    chain of stages validates in linear time) or through other stages."""
    if producer in pipeline.stages[name].needs:
        return True
    return producer in ancestors(pipeline.stages, name)


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


def _check_cloud(pipeline: Pipeline, lines: _LineMap, file: str) -> None:
    """AWS settings that would otherwise fail only at run time, after a bucket was made (issue 17)."""
    cloud = pipeline.cloud
    if cloud.provider != "aws":
        return
    if cloud.region is not None:
        problem = region_problem(cloud.region)
        if problem:
            loc = ("cloud", "region")
            close = difflib.get_close_matches(cloud.region, sorted(ec2_regions()), n=3, cutoff=0.6)
            raise SpecError(problem, file=file, line=lines.line(loc), field=_dotted(loc),
                            hint=f"Did you mean {' or '.join(close)}?" if close else
                            "Use an EC2 region name such as us-east-1 or eu-west-1, or leave cloud.region unset "
                            "to use the AWS profile's.")
    for i, name in enumerate(cloud.instance_types):
        if not is_known_type(name):
            loc = ("cloud", "instance_types", i)
            close = difflib.get_close_matches(name, sorted(type_names()), n=3, cutoff=0.6)
            raise SpecError(f"unknown instance type {name!r}", file=file, line=lines.line(loc), field=_dotted(loc),
                            hint=(f"Did you mean {' or '.join(close)}? " if close else "")
                            + "`cloud.instance_types` names types of lhorch's catalogue (docs/cloud.md).")



def _check_nodes(pipeline: Pipeline, lines: _LineMap, file: str) -> None:
    """A stage that spans several machines (issue 14) needs a cloud that may start that many, and a job
    that can use them."""
    cloud = pipeline.cloud
    for name, stage in pipeline.stages.items():
        r = stage.resources
        if r.nodes == 1:
            continue
        loc: Loc = ("stages", name, "resources", "nodes")
        error = partial(SpecError, file=file, line=lines.line(loc), field=_dotted(loc))
        if stage.placement == "local":
            raise error(f"spans {r.nodes} nodes, but the stage is pinned to this machine (placement: local), "
                        "which is one node", hint="Use placement auto or cloud, or resources.nodes: 1.")
        if cloud.provider == "none":
            raise error(f"spans {r.nodes} nodes, but no cloud is configured and this machine is one node",
                        hint="Set cloud.provider (aws, or ray for an existing cluster), or resources.nodes: 1.")
        if cloud.provider == "aws" and r.nodes > cloud.max_instances:
            raise error(f"{r.nodes} nodes is more than cloud.max_instances ({cloud.max_instances})",
                        hint=f"Raise cloud.max_instances to {r.nodes} or lower resources.nodes.")
        job = find_job(stage.uses) if stage.uses else None
        found = job.nodes_problem(stage.with_, r.nodes, r.cpus, r.gpus) if job is not None else None
        if found is not None:
            where: Loc = ("stages", name, *found[0].split("."))
            raise SpecError(found[1], file=file, line=lines.line(where), field=_dotted(where),
                            hint="num_workers counts workers over all nodes; resources are per node.")
