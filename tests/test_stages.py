"""Stages and the registry: registration, specs, immutability, a fresh instance per run."""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
import uuid
from collections.abc import Mapping
from typing import Any

import anyio
import attrs
import pytest
from fakes import doc, stage, terminal

import stageflow
import stageflow._engine
import stageflow._stages

pytestmark = pytest.mark.anyio


async def noop(ctx: stageflow.StageContext) -> None:
    return None


# --------------------------------------------------------------- registering


def test_class_stage_registers_under_its_name_by_default() -> None:
    registry = stageflow.StageRegistry()

    @registry.register()
    class Greet(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            return {}

    entry = registry.get("Greet")
    assert entry.target is Greet
    assert entry.name == "Greet"
    assert isinstance(entry.factory(), Greet)
    assert entry.source.endswith("Greet")


def test_function_stage_registers_under_its_name_by_default() -> None:
    registry = stageflow.StageRegistry()
    returned = registry.register()(noop)
    assert returned is noop  # the decorator gives the function back unchanged
    entry = registry.get("noop")
    assert entry.target is noop
    assert entry.spec == stageflow.StageSpec()
    assert isinstance(entry.factory(), stageflow.BaseStage)


def test_explicit_name_spec_and_source() -> None:
    registry = stageflow.StageRegistry()
    spec = stageflow.StageSpec(description="does nothing")
    registry.register("Nothing", spec=spec, source="my-pack")(noop)
    entry = registry.get("Nothing")
    assert (entry.name, entry.spec, entry.source) == ("Nothing", spec, "my-pack")
    assert "noop" not in registry


def test_class_spec_is_used_unless_one_is_given() -> None:
    registry = stageflow.StageRegistry()

    class Declared(stageflow.BaseStage):
        spec = stageflow.StageSpec(description="declared")

        async def run(self, ctx: stageflow.StageContext) -> None:
            return None

    override = stageflow.StageSpec(description="override")
    registry.register("a")(Declared)
    registry.register("b", spec=override)(Declared)
    assert registry.get("a").spec.description == "declared"
    assert registry.get("b").spec is override


def test_catalogue_names_len_contains_and_iter_are_sorted_and_consistent() -> None:
    registry = stageflow.StageRegistry()
    for name in ("b", "c", "a"):
        registry.register(name)(noop)
    # Every registry also has the core stages.
    everything = ("SleepStage", "WaitStage", "a", "b", "c")
    assert registry.names() == everything
    assert registry.names(core=False) == ("a", "b", "c")
    assert [e.name for e in registry.catalogue()] == list(everything)
    assert [e.name for e in registry.catalogue(core=False)] == ["a", "b", "c"]
    assert list(registry) == list(everything)
    assert len(registry) == 5
    assert "a" in registry
    assert "WaitStage" in registry
    assert "z" not in registry
    assert repr(registry) == "<StageRegistry with 5 stages>"


def test_conflict_names_both_sources() -> None:
    registry = stageflow.StageRegistry()
    registry.register("Dup", source="pack-one")(noop)

    async def other(ctx: stageflow.StageContext) -> None:
        return None

    with pytest.raises(stageflow.StageConflictError) as info:
        registry.register("Dup")(other)
    error = info.value
    assert (error.name, error.first) == ("Dup", "pack-one")
    assert error.second.endswith("other")
    assert "pack-one" in str(error)
    assert error.second in str(error)
    assert "rename one" in str(error)
    # Nothing was overridden.
    assert registry.get("Dup").target is noop


def test_same_name_in_separate_registries_is_fine() -> None:
    first, second = stageflow.StageRegistry(), stageflow.StageRegistry()
    first.register("Same")(noop)
    second.register("Same")(noop)
    assert first.get("Same").target is second.get("Same").target


def sync_function(ctx: stageflow.StageContext) -> None:
    return None


async def async_generator(ctx: stageflow.StageContext) -> Any:
    yield None


class NotAStage:
    async def run(self, ctx: stageflow.StageContext) -> None:
        return None


@pytest.mark.parametrize(
    "target",
    [sync_function, async_generator, NotAStage, NotAStage(), noop(None)],  # type: ignore[arg-type]
    ids=["sync function", "async generator", "class without base", "instance", "coroutine"],
)
def test_things_that_are_not_stages_are_rejected_clearly(target: object) -> None:
    registry = stageflow.StageRegistry()
    try:
        with pytest.raises(stageflow.RegistryError) as info:
            registry.register("Bad")(target)
    finally:
        if inspect.iscoroutine(target):
            target.close()
    message = str(info.value)
    assert "'Bad'" in message
    assert "async def" in message
    assert "BaseStage" in message
    assert "Bad" not in registry


def test_a_nameless_stage_needs_an_explicit_name() -> None:
    registry = stageflow.StageRegistry()

    class Callable:
        __name__ = ""

        async def __call__(self, ctx: stageflow.StageContext) -> None:
            return None

    with pytest.raises(stageflow.RegistryError, match="name="):
        registry.add(Callable())


def test_a_spec_of_the_wrong_type_is_rejected() -> None:
    registry = stageflow.StageRegistry()
    with pytest.raises(
        stageflow.RegistryError, match=r"has a spec that is a dict; use stageflow\.StageSpec"
    ):
        registry.register("Bad", spec={"description": "x"})(noop)  # type: ignore[arg-type]


def test_register_without_parentheses_is_a_clear_error() -> None:
    # `@registry.register` (no call) used to replace the class by the inner
    # decorator and register nothing, silently.
    registry = stageflow.StageRegistry()

    with pytest.raises(stageflow.RegistryError, match=r"@registry.register\(\)"):

        @registry.register  # type: ignore[arg-type]
        class Forgot(stageflow.BaseStage):
            async def run(self, ctx: stageflow.StageContext) -> None:
                return None


def test_a_class_that_does_not_implement_run_is_rejected() -> None:
    registry = stageflow.StageRegistry()

    class Lazy(stageflow.BaseStage):
        pass

    with pytest.raises(stageflow.RegistryError, match="run"):
        registry.register()(Lazy)


def test_a_class_that_cannot_be_built_without_arguments_is_rejected() -> None:
    registry = stageflow.StageRegistry()

    class NeedsConfig(stageflow.BaseStage):
        def __init__(self, url: str) -> None:
            self.url = url

        async def run(self, ctx: stageflow.StageContext) -> None:
            return None

    with pytest.raises(stageflow.RegistryError, match="without arguments"):
        registry.register()(NeedsConfig)


class SyncCleanup(stageflow.BaseStage):
    async def run(self, ctx: stageflow.StageContext) -> None:
        return None

    def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:  # type: ignore[override]
        return None


class CleanupWithoutOutcome(stageflow.BaseStage):
    async def run(self, ctx: stageflow.StageContext) -> None:
        return None

    async def cleanup(self, ctx: stageflow.StageContext) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize(
    ("target", "shown"),
    [(SyncCleanup, "a cleanup() that is not async"), (CleanupWithoutOutcome, "cleanup(self, ctx")],
    ids=["sync cleanup", "cleanup without outcome"],
)
def test_a_cleanup_the_engine_cannot_await_is_rejected_when_registered(
    target: type[stageflow.BaseStage], shown: str
) -> None:
    # It would fail after every attempt, each failure a cleanup_failed event.
    with pytest.raises(stageflow.RegistryError) as caught:
        stageflow.StageRegistry().add(target, name="Leaky")
    assert shown in str(caught.value)
    assert "async def cleanup(self, ctx, outcome)" in str(caught.value)


async def needs_more(ctx: stageflow.StageContext, client: object) -> None:
    return None


async def needs_nothing() -> None:
    return None


class RunWithoutContext(stageflow.BaseStage):
    async def run(self) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (needs_more, "takes (ctx: 'stageflow.StageContext', client: 'object')"),
        (needs_nothing, "takes ()"),
        (RunWithoutContext, "has run(self)"),
    ],
    ids=["function with a second argument", "function without one", "run without ctx"],
)
def test_a_stage_that_cannot_take_its_context_is_rejected_when_registered(
    target: object, shown: str
) -> None:
    # A stage class whose constructor needs arguments was rejected; a stage
    # function (or run method) that cannot take the context was registered
    # and then failed every attempt of every run with a TypeError.
    registry = stageflow.StageRegistry()
    with pytest.raises(stageflow.RegistryError, match="alone") as info:
        registry.register("Bad")(target)
    assert shown in str(info.value)
    assert "Bad" not in registry


def test_stages_that_take_their_context_in_other_shapes_are_registered() -> None:
    import functools

    async def with_options(ctx: stageflow.StageContext, *rest: object, **options: object) -> None:
        return None

    registry = stageflow.StageRegistry()
    registry.add(with_options)
    registry.add(functools.partial(needs_more, client=object()), name="Bound")
    assert {"with_options", "Bound"} <= set(registry)
    # Named by what it binds (it said "functools.functools.partial(<function ...>)").
    assert registry.get("Bound").source == f"functools.partial({__name__}.needs_more)"


@pytest.mark.parametrize("name", ["", 3], ids=["empty", "not a string"])
def test_a_stage_name_that_is_no_name_is_rejected(name: object) -> None:
    # add(name="") registered the stage under its function's name instead.
    registry = stageflow.StageRegistry()
    with pytest.raises(stageflow.RegistryError, match="not a non-empty string"):
        registry.add(noop, name=name)  # type: ignore[arg-type]
    assert "noop" not in registry


# ----------------------------------------------------------- default registry


def test_default_registry_through_register_stage_and_get_stages() -> None:
    name = f"DefaultStage_{uuid.uuid4().hex}"
    assert name not in stageflow.get_stages()
    stageflow.register_stage(name)(noop)
    try:
        assert stageflow.get_stages()[name].target is noop
        assert {"WaitStage", "SleepStage"} <= set(stageflow.get_stages())
    finally:
        # The default registry is process-wide: a later test that lists it (the CLI's
        # catalogue and schema commands) must not find this stage.
        del stageflow._stages.default_registry()._entries[name]


def test_get_stages_is_read_only() -> None:
    view: Any = stageflow.get_stages()
    with pytest.raises(TypeError):
        view["Injected"] = None
    with pytest.raises(AttributeError):
        view.clear()


def test_stage_not_found_lists_the_known_names() -> None:
    registry = stageflow.StageRegistry()
    registry.register("Beta")(noop)
    registry.register("Alpha")(noop)
    with pytest.raises(stageflow.StageNotFoundError) as info:
        registry.get("Gamma")
    error = info.value
    assert isinstance(error, KeyError)
    assert (error.name, error.known) == ("Gamma", ("Alpha", "Beta", "SleepStage", "WaitStage"))
    assert str(error).startswith(
        "no stage named 'Gamma' is registered (known: Alpha, Beta, SleepStage, WaitStage)"
    )
    assert "@registry.register('Gamma')" in str(error)


def test_stage_not_found_in_a_fresh_registry_lists_the_core_stages() -> None:
    with pytest.raises(stageflow.StageNotFoundError, match=r"\(known: SleepStage, WaitStage\)"):
        stageflow.StageRegistry().get("x")


def test_a_core_stage_name_cannot_be_taken() -> None:
    with pytest.raises(stageflow.StageConflictError, match="stageflow \\(core\\)"):
        stageflow.StageRegistry().register("WaitStage")(noop)


def test_a_core_stage_name_clash_says_to_rename_not_to_use_another_registry() -> None:
    """Every registry has the core stages: "register into a separate StageRegistry" was no fix."""
    with pytest.raises(stageflow.StageConflictError) as info:
        stageflow.StageRegistry().register("SleepStage")(noop)
    assert str(info.value).endswith(
        "; rename yours: every StageRegistry has the core stage 'SleepStage'"
    )
    assert "separate StageRegistry" not in str(info.value)


# ---------------------------------------------------------------- immutability


def test_stage_spec_is_frozen_and_its_schemas_are_read_only() -> None:
    arguments = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    spec = stageflow.StageSpec(
        arguments=arguments,
        allowed_events=[stageflow.EventSpec("done", schema={"type": "object"})],
        allowed_inputs=[stageflow.InputSpec("approval")],
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.description = "changed"  # type: ignore[misc]
    assert spec.arguments is not None
    with pytest.raises(TypeError):
        spec.arguments["type"] = "array"  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.arguments["properties"]["b"] = {}
    assert spec.arguments["required"] == ("a",)
    assert isinstance(spec.allowed_events, tuple)
    assert isinstance(spec.allowed_inputs, tuple)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.allowed_events[0].type = "other"  # type: ignore[misc]
    # The dict it was built from is not aliased.
    arguments["properties"]["b"] = {"type": "integer"}
    assert "b" not in spec.arguments["properties"]


def test_an_invalid_schema_in_a_spec_is_a_definition_error() -> None:
    with pytest.raises(stageflow.DefinitionError, match="arguments"):
        stageflow.StageSpec(arguments={"type": 5})
    with pytest.raises(stageflow.DefinitionError, match="schema"):
        stageflow.EventSpec("done", schema={"type": "no-such-type"})


def test_two_subclasses_do_not_share_state() -> None:
    class First(stageflow.BaseStage):
        spec = stageflow.StageSpec(description="first", allowed_events=[stageflow.EventSpec("one")])

    class Second(stageflow.BaseStage):
        pass

    assert First.spec.allowed_events == (stageflow.EventSpec("one"),)
    assert Second.spec.allowed_events == ()
    assert Second.spec is stageflow.BaseStage.spec
    assert stageflow.BaseStage.spec == stageflow.StageSpec()


MUTABLE = (list, dict, set, bytearray)


def _stageflow_classes() -> list[type]:
    """Every class defined in the package (public ones report ``stageflow`` as module)."""
    classes: dict[int, type] = {}
    for info in pkgutil.walk_packages(stageflow.__path__, "stageflow."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if inspect.isclass(value) and value.__module__ in (module.__name__, "stageflow"):
                classes[id(value)] = value
    return list(classes.values())


def test_no_class_in_stageflow_has_a_mutable_class_attribute() -> None:
    # Seed defects 5 and 6: class-level dicts and lists shared by every instance.
    offenders = [
        f"{cls.__module__}.{cls.__qualname__}.{attr}"
        for cls in _stageflow_classes()
        for attr, value in vars(cls).items()
        if not (attr.startswith("__") or (attr.startswith("_") and attr.endswith("_")))
        and not (issubclass(cls, tuple) and attr == "_field_defaults")  # NamedTuple's own
        and isinstance(value, MUTABLE)
    ]
    assert len(_stageflow_classes()) > 30
    assert offenders == []


# ------------------------------------------------------------- running stages


def counting_registry(instances: list[object]) -> stageflow.StageRegistry:
    registry = stageflow.StageRegistry()

    @registry.register("Count")
    class Count(stageflow.BaseStage):
        def __init__(self) -> None:
            self.runs = 0
            instances.append(self)

        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            self.runs += 1
            return {"n": ctx.arguments.get("n", 0) + 1, "runs": self.runs}

    return registry


async def test_a_fresh_instance_runs_every_node_execution() -> None:
    instances: list[object] = []
    registry = counting_registry(instances)
    pipeline = stageflow.Pipeline.from_dict(_loop_doc(), registry=registry)
    result = await stageflow.Session(pipeline, registry=registry).run()
    assert result.artifacts == {"n": 3, "runs": 1}  # no state carried between executions
    assert len(instances) == 3
    assert len({id(i) for i in instances}) == 3


def _loop_doc() -> dict[str, Any]:
    return doc(
        [
            stage(
                "count",
                "Count",
                arguments={"n": "n"},
                outputs={"n": "n", "runs": "runs"},
                next="again",
            ),
            {
                "id": "again",
                "type": "condition",
                "conditions": [{"if": {"<": [{"var": "n"}, 3]}, "then": "count"}],
                "else": "end",
            },
            terminal("end", "n", "runs"),
        ]
    )


async def test_stage_context_describes_the_run() -> None:
    seen: list[stageflow.StageContext] = []
    registry = stageflow.StageRegistry()

    @registry.register("Look")
    async def look(ctx: stageflow.StageContext) -> None:
        seen.append(ctx)

    pipeline = stageflow.Pipeline.from_dict(
        doc(
            [
                stage(
                    "look",
                    "Look",
                    arguments={"there": "a", "null": "b", "absent": "c"},
                    config={"k": [1, 2]},
                    next="end",
                ),
                terminal("end"),
            ]
        ),
        registry=registry,
    )
    session = stageflow.Session(
        pipeline, registry=registry, payload={"a": 1, "b": None}, session_id="s-1"
    )
    await session.run()
    [ctx] = seen
    assert dict(ctx.arguments) == {"there": 1, "null": None}  # nothing stored: left out
    assert ctx.config == {"k": [1, 2]}
    assert (ctx.session_id, ctx.node_id, ctx.node_path, ctx.stage, ctx.attempt) == (
        "s-1",
        "look",
        "look",
        "Look",
        1,
    )
    with pytest.raises(TypeError):
        ctx.arguments["there"] = 2  # type: ignore[index]


MISUSES: list[tuple[str, Any, str]] = [
    (
        "a wait for a type no sender can send",
        lambda ctx: ctx.wait_input(123),
        "ctx.wait_input(123) at node 'use': the input type must be a non-empty string",
    ),
    (
        "a wait for the empty type",
        lambda ctx: ctx.wait_input(""),
        "ctx.wait_input('') at node 'use': the input type must be a non-empty string",
    ),
    (
        "a NaN timeout",
        lambda ctx: ctx.wait_input("answer", timeout=float("nan")),
        "ctx.wait_input('answer', timeout=nan) at node 'use': the timeout must be a number",
    ),
    (
        "a timeout given as text",
        lambda ctx: ctx.wait_input("answer", timeout="5"),
        "ctx.wait_input('answer', timeout='5') at node 'use': the timeout must be a number",
    ),
    (
        "a sleep of nothing",
        lambda ctx: ctx.sleep(None),
        "ctx.sleep(None) at node 'use': the duration must be a number of seconds",
    ),
    (
        "a sleep given as text",
        lambda ctx: ctx.sleep("5"),
        "ctx.sleep('5') at node 'use': the duration must be a number of seconds",
    ),
    (
        "a sleep until a text",
        lambda ctx: ctx.sleep_until("2030-01-01T09:00:00+00:00"),
        "sleep_until('2030-01-01T09:00:00+00:00') at node 'use': pass an aware datetime.datetime",
    ),
]


@pytest.mark.parametrize(
    ("call", "expected"), [m[1:] for m in MISUSES], ids=[m[0] for m in MISUSES]
)
async def test_waits_and_sleeps_with_unusable_arguments_fail_the_stage_naming_the_call(
    call: Any, expected: str
) -> None:
    """Each once hung (no sender can send such a type), or failed with a bare Python error."""
    registry = stageflow.StageRegistry()

    @registry.register("Use")
    async def use(ctx: stageflow.StageContext) -> None:
        await call(ctx)

    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("use", "Use", next="end"), terminal("end")]), registry=registry
    )
    session = stageflow.Session(pipeline, registry=registry, payload={})
    with anyio.fail_after(5):  # a guard: a wait that never ends fails the test
        result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.StageError)
    assert result.error.node_id == "use"
    cause = result.error.__cause__
    assert isinstance(cause, TypeError)
    assert str(cause).startswith(expected)


class Registered(stageflow.BaseStage):
    async def run(self, ctx: stageflow.StageContext) -> None:
        return None


@pytest.mark.parametrize("name", [None, "Mine"])
def test_an_instance_of_a_stage_class_is_rejected_naming_the_class_to_register(
    name: str | None,
) -> None:
    """Without a name it was once told to pass name=..., which only led to the next error."""
    registry = stageflow.StageRegistry()
    with pytest.raises(stageflow.RegistryError) as info:
        registry.add(Registered(), name=name)
    assert str(info.value) == (
        f"stage {name or 'Registered'!r} is given as an instance of Registered; register the "
        "class itself (Registered, not Registered()): a fresh instance is made for every attempt"
    )
    assert registry.names(core=False) == ()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        # Each was taken: an empty input type no sender can send; a list of
        # type names (or one name, split into letters), which raised
        # AttributeError ('str' object has no attribute 'type') once a
        # pipeline used the stage; a negative timeout, which no run applied.
        (lambda: stageflow.InputSpec(""), "an input type is a non-empty string"),
        (lambda: stageflow.InputSpec(5), "an input type is a string, not an integer"),
        (
            lambda: stageflow.StageSpec(allowed_inputs=["approval"]),
            r"allowed_inputs\[0\] is a str, not an InputSpec; pass allowed_inputs=\[stageflow",
        ),
        (lambda: stageflow.StageSpec(allowed_inputs="go"), r"allowed_inputs\[0\] is a str"),
        (
            lambda: stageflow.StageSpec(allowed_events=[{"type": "done"}]),
            r"allowed_events\[0\] is a dict, not an EventSpec",
        ),
        (lambda: stageflow.StageSpec(timeout=-1), r"StageSpec\(timeout=-1\) is not a finite"),
        (lambda: stageflow.StageSpec(timeout=float("inf")), r"timeout=inf\) is not a finite"),
        (lambda: stageflow.StageSpec(retry={"attempts": 3}), r"retry=\.\.\.\) was given a dict"),
        (lambda: stageflow.StageSpec(input_from_config=5), r"input_from_config=\.\.\.\) was"),
        # A RetryPolicy made in Python was not checked as the pipeline schema
        # checks a node's "retry": delay="1" made run() itself raise TypeError.
        (lambda: stageflow.RetryPolicy(attempts=3, delay="1"), r"delay='1'\) is not a finite"),
        (lambda: stageflow.RetryPolicy(delay=-1), r"delay=-1\) is not a finite number 0 or"),
        # An OverflowError from math.isfinite before: the int is no float.
        (lambda: stageflow.RetryPolicy(delay=-(10**400)), r"delay=-1000.*\) is not a finite"),
        (lambda: stageflow.RetryPolicy(backoff=10**400), r"backoff=1000.*\) is not a finite"),
        (lambda: stageflow.RetryPolicy(max_delay=float("inf")), r"max_delay=inf\) is not"),
        (lambda: stageflow.RetryPolicy(backoff=0.5), r"backoff=0\.5\) is not a finite number 1"),
        (lambda: stageflow.RetryPolicy(jitter=5), r"jitter=5\) is not a finite number from 0 to 1"),
        (lambda: stageflow.RetryPolicy(jitter=True), r"jitter=True\) is not a finite number"),
        (lambda: stageflow.RetryPolicy(retry_on="ValueError"), r"is not a list of error class"),
        (lambda: stageflow.RetryPolicy(retry_on=[5]), r"holds 5, which is no error class name"),
        (lambda: stageflow.RetryPolicy(retry_on=()), r"retries nothing"),
    ],
)
def test_a_spec_field_of_the_wrong_kind_is_a_definition_error(make: Any, says: str) -> None:
    with pytest.raises(stageflow.DefinitionError, match=says):
        make()


@pytest.mark.parametrize(("name", "named"), [(1, "an int"), (["Greet"], "a list"), (None, "None")])
def test_get_given_no_name_says_what_to_pass(name: object, named: str) -> None:
    # An int was a StageNotFoundError whose fix was "@registry.register(1)";
    # a list was dict's "unhashable type: 'list'".
    registry = stageflow.StageRegistry()
    with pytest.raises(TypeError, match=r"^StageRegistry\.get\(\) was given ") as caught:
        registry.get(name)  # type: ignore[arg-type]
    assert named in str(caught.value)
    assert "WaitStage" in str(caught.value)


def test_get_takes_a_str_subclass_as_register_does() -> None:
    # register() took a StrEnum member as the name (isinstance str), get()
    # refused the same member with a TypeError (it tested type(name) is str).
    class Stages(enum.StrEnum):
        ECHO = "Echo"

    registry = stageflow.StageRegistry()

    @registry.register(Stages.ECHO)
    async def echo(ctx: stageflow.StageContext) -> None:
        return None

    assert registry.get(Stages.ECHO).target is echo
    assert registry.get("Echo").target is echo
