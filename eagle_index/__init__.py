"""eagle-index: an embedding database and look-alike slide retrieval service (EAGLE pipeline)."""

import os

# FAISS and torch each bring an OpenMP runtime whose idle threads spin by default; on a small
# machine that makes single-query searches and CPU inference stall each other (measured in
# docs/benchmarks.md). Idle threads sleep instead, unless the user chose otherwise. This must be
# set before either library starts its thread pool, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
