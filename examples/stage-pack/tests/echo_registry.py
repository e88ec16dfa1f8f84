"""The stages the pipeline tester uses for this pack: the pack, loaded by its entry point.

``stageflow test`` and the pytest plugin take a stages module with a
``registry`` attribute; this one loads the installed ``echo`` pack into a
fresh registry (``strict=True``: a broken entry point fails the cases loudly).
"""

import stageflow

registry = stageflow.StageRegistry()
registry.load_plugins(["echo"], strict=True)
