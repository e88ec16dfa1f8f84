"""The check for parallel branches that can write one path is linear (issue 19, class 2).

It compared every path of every branch with every path of every other branch:
200 branches of 50 nodes took about 25 s to load. It now looks each path up
with its prefixes. A fuzzer holds it to the old pairwise rule as the oracle.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow._graph import _write_clashes, overlaps


def pairwise(writes: list[set[str]], reducers: dict[str, str]) -> dict[str, tuple[int, int]]:
    """The old rule, pair by pair: the first pair (in children order) per shared path."""
    found: dict[str, tuple[int, int]] = {}
    for a in range(len(writes)):
        for b in range(a + 1, len(writes)):
            for path_a in sorted(writes[a]):
                for path_b in sorted(writes[b]):
                    shared = path_a if len(path_a) <= len(path_b) else path_b
                    if not overlaps(path_a, path_b) or shared in found:
                        continue
                    if path_a == path_b and path_a in reducers:
                        continue
                    found[shared] = (a, b)
    return found


paths = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(".".join)


@settings(max_examples=300, deadline=None)
@given(
    writes=st.lists(st.sets(paths, max_size=4), min_size=1, max_size=5),
    reduced=st.sets(paths, max_size=3),
)
def test_fuzz_clashes_match_the_pairwise_rule(writes: list[set[str]], reduced: set[str]) -> None:
    reducers = dict.fromkeys(reduced, "append")
    assert _write_clashes(writes, reducers) == pairwise(writes, reducers)


def test_three_hundred_branches_of_fifty_nodes_load_in_bounded_time() -> None:
    """About 1.5 MB of document (the old check took about a minute).

    A hard timeout in a subprocess instead of a timed assertion.
    """
    code = textwrap.dedent(
        """
        import stageflow
        registry = stageflow.StageRegistry()

        @registry.register("Set")
        async def set_(ctx):
            return {}

        branches, length = 300, 50
        nodes = [{"id": "fan", "type": "parallel", "next": "end",
                  "children": [f"b{i}_0" for i in range(branches)]}]
        for i in range(branches):
            for j in range(length):
                node = {"id": f"b{i}_{j}", "type": "stage", "stage": "Set",
                        "outputs": {f"o{j}": f"out.b{i}.n{j}"}}
                if j + 1 < length:
                    node["next"] = f"b{i}_{j + 1}"
                nodes.append(node)
        nodes.append({"id": "end", "type": "terminal"})
        pipeline = stageflow.Pipeline.from_dict(
            {"api_version": "1.0", "entry": "fan", "nodes": nodes}, registry=registry
        )
        print("loaded", len(pipeline.nodes))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "loaded 15002"
