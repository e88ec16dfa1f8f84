"""stageflow's benchmark suite: the engine's own cost next to bare trio and LangGraph.

Run it with ``make bench`` (full run, in its own environment) or
``python -m benchmarks --quick`` (smoke mode). See ``benchmarks/README.md``.
"""
