"""The names of the models and of their presets, as plain tuples (ground floor: nothing imported).

`config` checks settings against these without importing `eagle_index.models` (imports point one
way); `models/registry.py` builds its specs under the same names (`tests/test_models_registry.py`
checks they agree).
"""

from __future__ import annotations

MODEL_IDS = ("ctranspath", "chief", "virchow2")  # the models of the EAGLE pipeline, in pipeline order
PRESETS = ("default", "tiny")  # "default": the official weights; "tiny": seeded random weights (tests, demos)
