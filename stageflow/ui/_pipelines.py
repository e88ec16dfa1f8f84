"""Pipeline files for the pipeline pages: loaded, checked, and matched with coverage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

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


# The files of a --pipelines directory that are pipelines, by suffix in any
# case (as stageflow reads them: stageflow._guard.is_document_path, which the
# inspector does not import: it reads through public APIs only).
_SUFFIXES: Final = (".json", ".yaml", ".yml")


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
        nodes: each node as written (any JSON), in order, with its label on the
            graph: its id, or ``#index`` when it has none (two nodes with one id
            are both here).
        pipeline: the loaded pipeline, when valid.
    """

    file: str
    name: str
    graph: Graph | None
    problems: tuple[str, ...]
    nodes: tuple[tuple[str, Any], ...]
    pipeline: stageflow.Pipeline | None


def list_pipeline_files(directory: Path | None) -> list[str]:
    """The pipeline file names of ``directory`` (JSON and YAML), sorted."""
    if directory is None or not directory.is_dir():
        return []
    return sorted(
        p.name for p in directory.iterdir() if p.suffix.lower() in _SUFFIXES and p.is_file()
    )


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
        return PipelineFile(file, Path(file).stem, None, problems, (), None)
    raw = document.get("nodes") if isinstance(document, Mapping) else None
    # Labelled as build_invalid_graph draws them: a node without an id, or with
    # the id of another, is one whose JSON its page must show.
    nodes = tuple(
        (n["id"] if isinstance(n, Mapping) and isinstance(n.get("id"), str) else f"#{i}", n)
        for i, n in enumerate(raw if isinstance(raw, list) else ())
    )
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


_REPORT_HINT = "write the report with stageflow test CASES --json > report.json"


# A report is json.loads output: exact types. (The inspector imports no
# private stageflow module, so not stageflow._json.a_json_type.)
_KINDS: Final = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def _a_json_type(value: Any) -> str:
    return _KINDS.get(type(value), "a value JSON has no type for")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(entry: Any) -> str | None:
    """What is wrong in one coverage entry (``where: what``), or ``None``."""
    if not isinstance(entry, Mapping):
        return f": is {_a_json_type(entry)}, not an object"
    if not isinstance(entry.get("pipeline"), str):
        return f".pipeline: is {_a_json_type(entry.get('pipeline'))}, not a pipeline name"
    if not isinstance(entry.get("source", ""), str):
        return f".source: is {_a_json_type(entry['source'])}, not a file name"
    if not _count(entry.get("runs", 0)):
        return f".runs: {entry['runs']!r} is not a whole number of runs (0 or more)"
    nodes = entry.get("nodes", {})
    if not isinstance(nodes, Mapping):
        return f".nodes: is {_a_json_type(nodes)}, not an object of node id -> times started"
    for node_id, hits in nodes.items():
        if not _count(hits):
            return f".nodes.{node_id}: {hits!r} is not a whole number of starts (0 or more)"
    for key in ("edges", "missed_edges"):
        edges = entry.get(key, [])
        if not isinstance(edges, list):
            return f".{key}: is {_a_json_type(edges)}, not a list of edges"
        for index, edge in enumerate(edges):
            if not isinstance(edge, Mapping):
                return f".{key}[{index}]: is {_a_json_type(edge)}, not an edge object"
            for field in ("source", "kind", "target"):
                if not isinstance(edge.get(field), str):
                    return (
                        f".{key}[{index}].{field}: is {_a_json_type(edge.get(field))}, not a string"
                    )
    return None


def load_coverage(path: Path | None) -> Mapping[str, Sequence[Mapping[str, Any]]]:
    """The coverage entries of a ``stageflow test --json`` report, by pipeline name.

    Every entry is checked here, where the report is read (start-up), so that
    the pages never meet a field of the wrong type.

    Raises:
        InspectorError: the report cannot be read, is not such a report, or a
            field of an entry has the wrong type (the message names it,
            ``$.coverage[0].runs``).
    """
    if path is None:
        return {}
    try:
        # As the CLI reads a document: within the budgets (a huge or endless file,
        # /dev/zero, was read whole), each failure said in words.
        report = read_document(str(path))
    except stageflow.PipelineValidationError as exc:
        why = "; ".join(problem.message for problem in exc.problems)
        raise InspectorError(f"--coverage {str(path)!r}: {why}") from exc
    entries = report.get("coverage") if isinstance(report, Mapping) else None
    if not isinstance(entries, list):
        raise InspectorError(
            f"--coverage {str(path)!r}: not a tester's report (no 'coverage' list); {_REPORT_HINT}"
        )
    out: dict[str, list[Mapping[str, Any]]] = {}
    for index, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem is not None:
            raise InspectorError(
                f"--coverage {str(path)!r}: $.coverage[{index}]{problem}; not a report "
                f"stageflow test wrote: {_REPORT_HINT}"
            )
        out.setdefault(entry["pipeline"], []).append(entry)
    return out


def coverage_marks(entries: Sequence[Mapping[str, Any]], file: str) -> CoverageMarks | None:
    """The coverage of ``file``: the entry whose source is that file, else the first."""
    if not entries:
        return None
    chosen = next((e for e in entries if Path(str(e.get("source", ""))).name == file), entries[0])
    nodes = chosen.get("nodes")
    missed = chosen.get("missed_edges")
    # The entry was checked by load_coverage.
    return CoverageMarks(
        runs=chosen.get("runs", 0),
        nodes={str(k): v for k, v in (nodes or {}).items()},
        missed=frozenset((e["source"], drawn_kind(e["kind"]), e["target"]) for e in missed or ()),
        edges=len(chosen.get("edges", ())),
    )
