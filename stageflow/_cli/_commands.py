"""The commands that do not run a pipeline: validate, schema, graph, stages, test."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from stageflow._cli._common import (
    CommandError,
    ExitCode,
    Streams,
    add_logging_options,
    dump_json,
    exit_codes_epilog,
    optional_module,
)
from stageflow._cli._graph import FORMATS, build_invalid_graph, render
from stageflow._cli._registry import (
    STAGES_HINT,
    UNREGISTERED,
    add_stage_options,
    read_document,
    read_pipeline,
    resolve_registry,
)
from stageflow._errors import PipelineValidationError, printable_text
from stageflow._json import thaw
from stageflow._schema_export import pipeline_schema
from stageflow._specs import EventSpec, InputSpec, StageSpec
from stageflow._stage_modules import StagesModuleError, registry_of
from stageflow._stages import StageEntry, StageRegistry

__all__ = ["add_parsers"]

_GRAPH_HELP = """\
Print the graph of PIPELINE. Each node shows its id and a second line (stage
name, number of conditions, ...).

shapes in Mermaid (the default format):
  start        a small circle
  stage        a rectangle
  condition    a diamond
  parallel     a box with double side bars (second line: its policy)
  subpipeline  a box with double side bars (second line: the subpipeline)
  map          a parallelogram
  terminal     a rounded stadium with a thick border
shapes in DOT: stage rounded box, condition diamond, parallel hexagon,
  subpipeline component, map 3-D box, terminal double-bordered box.

edges: next (plain), condition ('if #1', 'else'), parallel branches (dashed,
'branch 1'), the join (bold), branch ends (dotted), map body (dashed, 'each
item'), error edges (red, 'on <errors>', 'fallback').

An invalid pipeline is drawn too, as far as its nodes can be read: nodes with
problems get a red border and a '! N problems' line, unreadable nodes are
drawn as 'invalid', ids that no node has as 'missing'; the problems go to
standard error and the exit code is 2. Stage names are checked only with
--stages or --plugin.
"""

# The exit codes each command can return (its --help lists them).
_CHECKS = (
    ExitCode.OK,
    ExitCode.USAGE,
    ExitCode.OUTPUT_FAILED,
    ExitCode.INTERRUPTED,
    ExitCode.BROKEN_PIPE,
)
_TESTS = (
    ExitCode.OK,
    ExitCode.FAILED,
    ExitCode.USAGE,
    ExitCode.UNAVAILABLE,
    ExitCode.OUTPUT_FAILED,
    ExitCode.INTERRUPTED,
    ExitCode.BROKEN_PIPE,
)


def _registry(args: argparse.Namespace) -> StageRegistry:
    return resolve_registry(
        args.stages_modules, plugins=args.plugins, load_plugins=not args.no_plugins
    )


# --------------------------------------------------------------------- validate


def validate_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow validate``: every problem of every file, with its location.

    Raises:
        CommandError: ``--stages`` or ``--plugin`` with ``--structure-only``
            (no stage would be checked, as if they were not given).
    """
    if args.structure_only and (args.stages_modules or args.plugins):
        given = "--stages" if args.stages_modules else "--plugin"
        raise CommandError(
            f"{given} chooses the stages to check, and --structure-only checks none; "
            f"leave --structure-only out to check them, or leave {given} out"
        )
    registry = None if args.structure_only else _registry(args)
    reports: list[dict[str, Any]] = []
    for path in args.pipelines:
        try:
            pipeline = read_pipeline(path, registry)
        except PipelineValidationError as exc:
            problems = [{"location": p.location, "message": p.message} for p in exc.problems]
            reports.append({"file": path, "valid": False, "problems": problems})
        else:
            reports.append(
                {"file": path, "valid": True, "nodes": len(pipeline.nodes), "problems": []}
            )
    invalid = [r for r in reports if not r["valid"]]
    if args.json:
        io.print(dump_json(reports))
    else:
        for report in reports:
            if report["valid"]:
                count = report["nodes"]
                io.print(f"{report['file']}: valid ({count} node{'s' if count != 1 else ''})")
            for problem in report["problems"]:
                io.print(f"{report['file']}: {problem['location']}: {problem['message']}")
        unknown_stages = any(UNREGISTERED in p["message"] for r in invalid for p in r["problems"])
        if unknown_stages and not args.stages_modules:
            io.warn(f"{STAGES_HINT}, or --structure-only to skip them")
        total = sum(len(r["problems"]) for r in invalid)
        if invalid:
            io.print(
                f"{len(invalid)} of {len(reports)} file{'s' if len(reports) != 1 else ''} "
                f"not valid, {total} problem{'s' if total != 1 else ''}"
            )
    return ExitCode.USAGE if invalid else ExitCode.OK


# ----------------------------------------------------------------------- schema


def schema_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow schema``: the pipeline JSON Schema, optionally with the stage names.

    Raises:
        CommandError: ``--stages`` or ``--plugin`` without ``--with-stages``
            (the schema would name no stage, as if they were not given).
    """
    if not args.with_stages and (args.stages_modules or args.plugins):
        given = "--stages" if args.stages_modules else "--plugin"
        raise CommandError(
            f"{given} chooses the stage names of --with-stages, and without it the schema "
            f"names no stage; add --with-stages, or leave {given} out"
        )
    names = _registry(args).names() if args.with_stages else None
    io.print(dump_json(pipeline_schema(names)))
    return ExitCode.OK


# ------------------------------------------------------------------------ graph


def graph_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow graph``: draw the pipeline; stages are checked only if given.

    An invalid pipeline is drawn too, as far as its nodes can be read, with
    its problems marked; they are also printed to standard error and the
    exit code is 2, as for ``validate``.
    """
    check_stages = bool(args.stages_modules or args.plugins)
    try:
        pipeline = read_pipeline(args.pipeline, _registry(args) if check_stages else None)
    except PipelineValidationError as exc:
        try:
            document = read_document(args.pipeline)
        except PipelineValidationError:
            raise exc from None
        graph = build_invalid_graph(document, exc.problems)
        if graph is None:
            raise
        io.write(_encodable(FORMATS[args.format](graph)))
        for problem in exc.problems:
            io.warn(f"{args.pipeline}: {problem.location}: {problem.message}")
        count = len(exc.problems)
        io.warn(f"the pipeline is not valid ({count} problem{'s' if count != 1 else ''}, marked)")
        return ExitCode.USAGE
    io.write(render(pipeline, args.format))
    return ExitCode.OK


def _encodable(text: str) -> str:
    r"""``text`` with each lone surrogate written as its ``\u`` escape, which UTF-8 can carry.

    An invalid document may hold one in a name or an id (JSON's ``"\ud800"``);
    the escape is also what JSON reads back as the same string.
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


# ----------------------------------------------------------------------- stages


def _names(schema: Mapping[str, Any] | None) -> str:
    if schema is None:
        return "any"
    properties = schema.get("properties")
    if schema.get("additionalProperties") is False and not properties:
        return "none"
    if not isinstance(properties, Mapping) or not properties:
        return "(see schema)"
    required = set(schema.get("required", ()))
    return ", ".join(f"{n} (required)" if n in required else n for n in properties)


def _io_specs(specs: Sequence[InputSpec | EventSpec]) -> list[dict[str, Any]]:
    return [{"type": s.type, "description": s.description, "schema": thaw(s.schema)} for s in specs]


def spec_to_dict(spec: StageSpec) -> dict[str, Any]:
    """A stage spec as JSON (schemas as plain JSON Schema objects)."""
    return {
        "description": spec.description,
        "arguments": thaw(spec.arguments),
        "config": thaw(spec.config),
        "outputs": thaw(spec.outputs),
        "allowed_inputs": _io_specs(spec.allowed_inputs),
        "allowed_events": _io_specs(spec.allowed_events),
    }


def _describe(entry: StageEntry) -> list[str]:
    spec = entry.spec
    lines = [f"{entry.name}  ({entry.source})"]
    # A description of several lines (a docstring) stays under its stage, indented.
    lines.extend(f"    {line.strip()}" for line in spec.description.splitlines() if line.strip())
    lines.append(f"    arguments: {_names(spec.arguments)}")
    lines.append(f"    config:    {_names(spec.config)}")
    lines.append(f"    outputs:   {_names(spec.outputs)}")
    if spec.allowed_inputs:
        lines.append(f"    inputs:    {', '.join(s.type for s in spec.allowed_inputs)}")
    if spec.allowed_events:
        lines.append(f"    events:    {', '.join(s.type for s in spec.allowed_events)}")
    return lines


def stages_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow stages``: the stage catalogue."""
    catalogue = _registry(args).catalogue()
    if args.json:
        io.print(
            dump_json(
                [
                    {"name": e.name, "source": e.source, "spec": spec_to_dict(e.spec)}
                    for e in catalogue
                ]
            )
        )
        return ExitCode.OK
    if not catalogue:
        io.print("no stages registered; pass --stages MODULE (a module name or a .py file)")
    for entry in catalogue:
        for line in _describe(entry):
            # Escaped: a stage pack's description or source may hold escape sequences.
            io.print(printable_text(line))
    return ExitCode.OK


# ------------------------------------------------------------------------- test


def test_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow test``: run case files with ``stageflow.testing.run_case_files``.

    The report has ``ok`` (every case ran and passed), ``render(coverage=...)``
    (text for people) and ``to_dict()``.
    """
    testing = optional_module("stageflow.testing", "stageflow test")
    run_case_files = getattr(testing, "run_case_files", None)
    if run_case_files is None:
        raise CommandError(
            "stageflow test needs stageflow.testing.run_case_files, which this stageflow "
            "does not have yet; upgrade stageflow",
            exit_code=ExitCode.UNAVAILABLE,
        )
    # A path that names no file (or a directory) is a slip on the command line, as
    # for every other command (exit 2); a file that exists but cannot be read or run
    # is reported with the others, which still run.
    others = " (the other case files were not run)"
    missing = [path for path in args.cases if not os.path.exists(path)]
    if missing:
        raise CommandError(
            f"{', '.join(missing)}: no such file; check the path"
            + (others if len(missing) < len(args.cases) else "")
        )
    folders = [path for path in args.cases if os.path.isdir(path)]
    if folders:
        raise CommandError(
            f"{', '.join(folders)}: a directory, not a case file; pass the case files in it "
            f"(e.g. {os.path.join(folders[0], '*.stageflow.json')})"
            + (others if len(folders) < len(args.cases) else "")
        )
    # A --stages module that cannot be imported is a slip on the command line too (exit
    # 2, as for run): every case would be an error, blamed on its case file's stages.
    # Imported as the tester imports it (a file under a name made from its path), so
    # that its cases find it imported once.
    for ref in args.stages_modules:
        try:
            registry_of(ref, unique_name=True)
        except StagesModuleError as exc:
            raise CommandError(f"--stages {exc}", detail=exc.detail) from exc
    # The report says how each case ran. Without a log option, the sessions' own
    # lines stay out of it: a case that expects a failure printed ERROR lines.
    # --traceback is one: the tracebacks it asks for are written on those lines.
    quiet = not (
        getattr(args, "log_level", None)
        or getattr(args, "log_format", None)
        or getattr(args, "traceback", False)
    )
    session_log = logging.getLogger("stageflow.session")
    level = session_log.level
    if quiet:
        session_log.setLevel(logging.CRITICAL + 1)
    try:
        report = run_case_files(list(args.cases), stages_modules=list(args.stages_modules))
    finally:
        session_log.setLevel(level)
    if args.json:
        data = report.to_dict()
        if args.no_coverage:
            data.pop("coverage", None)
        io.print(dump_json(data))
    else:
        io.print(report.render(coverage=not args.no_coverage).rstrip("\n"))
    return ExitCode.OK if report.ok else ExitCode.FAILED


# ---------------------------------------------------------------------- parsers


def add_parsers(subparsers: Any) -> None:
    """Add validate, schema, graph, stages and test to ``subparsers``."""
    p = subparsers.add_parser(
        "validate",
        help="check pipeline files and print every problem",
        description=(
            "Load each PIPELINE (JSON schema, structure, graph and stage checks) and print "
            "every problem as FILE: LOCATION: MESSAGE."
        ),
        epilog=exit_codes_epilog(_CHECKS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipelines", nargs="+", metavar="PIPELINE", help="pipeline files")
    p.set_defaults(intermixed="pipelines")
    p.add_argument(
        "--structure-only",
        action="store_true",
        help="do not check stage names and specs (no --stages needed)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report per file")
    add_stage_options(p)
    p.set_defaults(handler=validate_command)

    p = subparsers.add_parser(
        "schema",
        help="print the pipeline JSON Schema",
        description=(
            "Print the JSON Schema (draft 2020-12) of pipeline documents, for editors, "
            "validators and programs that write pipelines."
        ),
        epilog=exit_codes_epilog(_CHECKS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--with-stages",
        action="store_true",
        help="restrict the 'stage' field of stage nodes to the registered names (an enum)",
    )
    add_stage_options(p)
    p.set_defaults(handler=schema_command)

    p = subparsers.add_parser(
        "graph",
        help="draw a pipeline as Mermaid or DOT",
        description=_GRAPH_HELP,
        epilog=exit_codes_epilog(_CHECKS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", metavar="PIPELINE", help="pipeline file")
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="mermaid",
        help="output format (default mermaid)",
    )
    add_stage_options(p)
    p.set_defaults(handler=graph_command)

    p = subparsers.add_parser(
        "stages",
        help="print the stage catalogue",
        description="List the registered stages: name, source, description and spec.",
        epilog=exit_codes_epilog(_CHECKS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the full specs as JSON")
    add_stage_options(p)
    p.set_defaults(handler=stages_command)

    p = subparsers.add_parser(
        "test",
        help="run pipeline test case files",
        description="Run the test case files with the pipeline tester (stageflow.testing).",
        epilog=exit_codes_epilog(_TESTS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "cases",
        nargs="+",
        metavar="CASES",
        help="case files (.json; .yaml or .yml, in any case, is YAML)",
    )
    p.set_defaults(intermixed="cases")
    p.add_argument(
        "--stages",
        dest="stages_modules",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module name or .py file that registers stages (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--no-coverage", action="store_true", help="leave the node and edge coverage out"
    )
    add_logging_options(p)
    p.set_defaults(handler=test_command)
