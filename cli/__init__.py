"""distnode's command line: parses arguments and delegates to `node`."""

import os

# Every distnode process computes with numpy's ufunc loops, never with BLAS,
# yet importing numpy starts OpenBLAS's thread pool (one spinning thread per
# core): ~0.1 CPU-seconds per daemon at start-up, a second and a half for 16
# daemons on two cores. Set here, before anything imports numpy; a user's
# own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
