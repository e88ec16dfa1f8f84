"""The engine kernel: everything that runs a session, under the public ``Session``.

Like trio's ``_core``, this package is self-contained and nothing in it
imports the public session module (``stageflow/_session.py``), which is a
handle built on it. From the bottom up:

- ``_backend``: the one place that reaches past anyio to trio (task groups
  and the cancellation check), chosen once per run;
- ``_positions``: the position tree of snapshots, every key declared once;
- ``_inputs``, ``_desk``: the input broker and the sending side of inputs;
- ``_runtime``: what a running stage reaches (waits, sleeps, events);
- ``_frames``: scopes, frames and the typed work records of nodes in flight,
  and the ``Kernel`` protocol the executors use;
- ``_stage``, ``_parallel``, ``_subpipeline``, ``_map``: one executor per node
  kind, each with the save and restore of its own positions;
- ``_state``: a session's state across runs;
- ``_run``: one ``run()``, the single choke point every node goes through;
- ``_snapshot``: the snapshot document, written from and read into the state.

``docs/internals.md`` is the tour.
"""
