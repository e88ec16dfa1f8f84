"""The inputs each stage node can accept, for stages that take the type from config.

A stage such as ``WaitStage`` declares no inputs of its own: it waits for the
type its node's ``config`` names (``StageSpec.input_from_config``), with the
payload schema the node may give in ``config.input_schema``. At session
creation each such node gets its own entry whose spec declares exactly that
input, so the rest of the engine (the input desk's checks, the waiter's
schema, the wait's contract check) treats it like a stage that declares its
inputs. The derived entries are cached per node, so a session restored for
every request does not check the same schema again.
"""

from __future__ import annotations

from typing import Final

import attrs

from stageflow._model import StageNode
from stageflow._specs import InputSpec
from stageflow._stages import StageEntry

__all__ = ["node_entry"]

_CACHE_SIZE: Final = 4096

# id(node) -> (node, registry entry, derived entry); the objects are kept so an
# id reused after garbage collection is never taken for the old node.
_cache: dict[int, tuple[StageNode, StageEntry, StageEntry]] = {}


def node_entry(node: StageNode, entry: StageEntry) -> StageEntry:
    """``entry``, or for a stage that takes its input type from config, one for ``node``.

    Raises:
        DefinitionError: the node's ``config.input_schema`` is not a valid JSON Schema.
    """
    spec = entry.spec
    key = spec.input_from_config
    if key is None or spec.allowed_inputs:
        return entry
    input_type = node.config.get(key)
    if not isinstance(input_type, str):
        return entry  # the config schema reports it at load time
    cached = _cache.get(id(node))
    if cached is not None and cached[0] is node and cached[1] is entry:
        return cached[2]
    declared = InputSpec(input_type, node.config.get("input_schema"))
    # (mypy reads the field's converter, tuple, as wanting an Iterable[_T_co])
    narrowed = attrs.evolve(spec, allowed_inputs=(declared,))  # type: ignore[arg-type]
    derived = attrs.evolve(entry, spec=narrowed)
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[id(node)] = (node, entry, derived)
    return derived
