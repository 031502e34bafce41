"""A stand-in for a GPU detector on a machine without one. Each request: PRE_MS of work of
its own (decode, resize), then BODY_MS holding a lock that every instance shares (the
GPU-heavy forward pass: two at once would share the GPU, so here they queue), then POST_MS
(box decoding). The lock is a file (flock), so instances in separate processes, and
separate tritonservers given the same STAGGER_BODY_LOCK, share one "GPU"."""

import os
import sys

# Triton 2.51's Python backend needs numpy < 2; its stub ignores PYTHONPATH.
sys.path[:0] = [p for p in os.environ.get("STAGGER_MODEL_PATH", "").split(os.pathsep) if p]

import fcntl  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})

        def seconds(name):
            return float(params.get(name, {}).get("string_value", "0")) / 1000

        self.pre, self.body, self.post = seconds("PRE_MS"), seconds("BODY_MS"), seconds("POST_MS")
        lock = os.environ.get("STAGGER_BODY_LOCK") or os.path.join(
            tempfile.gettempdir(), f"stagger-gpu-{os.getppid()}.lock"
        )
        self.gpu = open(lock, "a")  # noqa: SIM115 (held for the model's life)

    def execute(self, requests):
        responses = []
        for request in requests:
            began = time.time()
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            time.sleep(self.pre)
            fcntl.flock(self.gpu, fcntl.LOCK_EX)
            try:
                time.sleep(self.body)
            finally:
                fcntl.flock(self.gpu, fcntl.LOCK_UN)
            time.sleep(self.post)
            # One box whose score is the image's size: enough for the client to check.
            boxes = np.array([[0, 0, 1, 1, float(image.size), 0]], dtype=np.float32)
            times = np.array([began, time.time()], dtype=np.float64)
            outputs = [pb_utils.Tensor("DETECTIONS", boxes), pb_utils.Tensor("TIMES", times)]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses

    def finalize(self):
        self.gpu.close()
