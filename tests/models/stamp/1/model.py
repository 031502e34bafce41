"""OUTPUT0 = [Unix time when execute began] (FP64): when the gate let the request through."""

import os
import sys

# Triton 2.51's Python backend needs numpy < 2; its stub ignores PYTHONPATH.
sys.path[:0] = [p for p in os.environ.get("STAGGER_MODEL_PATH", "").split(os.pathsep) if p]

import time  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def execute(self, requests):
        now = time.time()
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", np.array([now], dtype=np.float64))]
            )
            for _ in requests
        ]
