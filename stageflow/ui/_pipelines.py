"""Pipeline files for the pipeline pages: loaded, checked, and matched with coverage."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

import stageflow
from stageflow._cli._graph import Graph, build_graph, build_invalid_graph
from stageflow._cli._registry import read_document, structural_registry
from stageflow.ui._drawing import drawn_kind
from stageflow.ui._errors import InspectorError

__all__ = [
    "CoverageMarks",
    "PipelineFile",
    "coverage_marks",
    "list_pipeline_files",
    "load_coverage",
    "read_pipeline_file",
]

_SUFFIXES = (".json", ".yaml", ".yml")


@attrs.frozen
class CoverageMarks:
    """A pipeline's coverage from the tester's report (``stageflow test --json``).

    Attributes:
        runs: how many runs it counts.
        nodes: node id -> times started.
        missed: the edges never taken, as (source, drawn kind, target).
        edges: how many edges the pipeline has.
    """

    runs: int
    nodes: Mapping[str, int]
    missed: frozenset[tuple[str, str, str]]
    edges: int


@attrs.frozen
class PipelineFile:
    """A pipeline file as its page shows it.

    Attributes:
        file: the file name (the page's address).
        name: the pipeline's name (``metadata.name``), or the file's stem.
        graph: the drawing model (with problems marked for an invalid pipeline).
        problems: ``location: message`` of each problem; empty when valid.
        nodes: node id -> the node's JSON as written.
        pipeline: the loaded pipeline, when valid.
    """

    file: str
    name: str
    graph: Graph | None
    problems: tuple[str, ...]
    nodes: Mapping[str, Mapping[str, Any]]
    pipeline: stageflow.Pipeline | None


def list_pipeline_files(directory: Path | None) -> list[str]:
    """The pipeline file names of ``directory`` (JSON and YAML), sorted."""
    if directory is None or not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.suffix in _SUFFIXES and p.is_file())


def read_pipeline_file(
    directory: Path, file: str, registry: stageflow.StageRegistry | None
) -> PipelineFile:
    """Load ``directory/file`` for its page; an invalid pipeline is drawn with its problems.

    Stage names are checked against ``registry`` when given (``--stages``),
    else only the structure is.

    Raises:
        InspectorError: (404) no such pipeline file in the directory.
    """
    if file not in list_pipeline_files(directory):
        raise InspectorError(
            f"no pipeline file {file!r} in {str(directory)!r}; pick one from the pipelines page",
            status_code=404,
        )
    path = str(directory / file)
    try:
        document = read_document(path)
    except stageflow.PipelineValidationError as exc:
        problems = tuple(f"{p.location}: {p.message}" for p in exc.problems)
        return PipelineFile(file, Path(file).stem, None, problems, {}, None)
    raw = document.get("nodes") if isinstance(document, Mapping) else None
    nodes = {
        str(n["id"]): n
        for n in (raw if isinstance(raw, list) else ())
        if isinstance(n, Mapping) and isinstance(n.get("id"), str)
    }
    try:
        pipeline = stageflow.Pipeline.from_dict(
            document, registry=registry or structural_registry(document), source=path
        )
    except stageflow.PipelineValidationError as exc:
        graph = build_invalid_graph(document, exc.problems)
        problems = tuple(f"{p.location}: {p.message}" for p in exc.problems)
        name = graph.name if graph is not None else Path(file).stem
        return PipelineFile(file, name, graph, problems, nodes, None)
    return PipelineFile(file, pipeline.name, build_graph(pipeline), (), nodes, pipeline)


def load_coverage(path: Path | None) -> Mapping[str, Sequence[Mapping[str, Any]]]:
    """The coverage entries of a ``stageflow test --json`` report, by pipeline name.

    Raises:
        InspectorError: the report cannot be read or is not such a report.
    """
    if path is None:
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InspectorError(
            f"--coverage {str(path)!r}: cannot read the report: {exc}; write it with "
            "stageflow test CASES --json > report.json"
        ) from exc
    entries = report.get("coverage") if isinstance(report, Mapping) else None
    if not isinstance(entries, list):
        raise InspectorError(
            f"--coverage {str(path)!r}: not a tester's report (no 'coverage' list); write it "
            "with stageflow test CASES --json > report.json"
        )
    out: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        if isinstance(entry, Mapping) and isinstance(entry.get("pipeline"), str):
            out.setdefault(entry["pipeline"], []).append(entry)
    return out


def coverage_marks(entries: Sequence[Mapping[str, Any]], file: str) -> CoverageMarks | None:
    """The coverage of ``file``: the entry whose source is that file, else the first."""
    if not entries:
        return None
    chosen = next((e for e in entries if Path(str(e.get("source", ""))).name == file), entries[0])
    nodes = chosen.get("nodes")
    missed = chosen.get("missed_edges")
    return CoverageMarks(
        runs=int(chosen.get("runs", 0)),
        nodes={str(k): int(v) for k, v in nodes.items()} if isinstance(nodes, Mapping) else {},
        missed=frozenset(
            (str(e.get("source")), drawn_kind(str(e.get("kind"))), str(e.get("target")))
            for e in (missed if isinstance(missed, list) else ())
            if isinstance(e, Mapping)
        ),
        edges=len(chosen.get("edges") or ()),
    )
