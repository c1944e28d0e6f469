"""eagle-index: an embedding database and look-alike slide retrieval service (EAGLE pipeline)."""

import os

# FAISS and torch each bring an OpenMP runtime whose idle threads spin by default; on a small
# machine that makes single-query searches and CPU inference stall each other (measured in
# docs/benchmarks.md). Idle threads sleep instead, unless the user chose otherwise. This must be
# set before either library starts its thread pool, hence here (a write for those libraries; eagle-index
# itself reads the environment only in eagle_index/config.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
