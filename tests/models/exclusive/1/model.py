"""A model with a known body: PRE_MS of free work, then BODY_MS holding an exclusive file
lock shared by all its instances (separate processes, so flock, not a threading lock), then
POST_MS. Two requests overlap freely except in the body: the knee of a sweep is BODY_MS."""

import os
import sys

# Triton 2.51's Python backend needs numpy < 2; its stub ignores PYTHONPATH.
sys.path[:0] = [p for p in os.environ.get("STAGGER_MODEL_PATH", "").split(os.pathsep) if p]

import fcntl  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})

        def ms(name):
            return float(params.get(name, {}).get("string_value", "0")) / 1000

        self.pre, self.body, self.post = ms("PRE_MS"), ms("BODY_MS"), ms("POST_MS")
        lock = os.environ.get("STAGGER_BODY_LOCK") or os.path.join(
            tempfile.gettempdir(), f"stagger-body-{os.getppid()}.lock"
        )
        self.lock = open(lock, "a")  # noqa: SIM115 (held for the model's life)

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            time.sleep(self.pre)
            fcntl.flock(self.lock, fcntl.LOCK_EX)
            try:
                time.sleep(self.body)  # the device's exclusive section
            finally:
                fcntl.flock(self.lock, fcntl.LOCK_UN)
            time.sleep(self.post)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x + 1)]))
        return responses

    def finalize(self):
        self.lock.close()
