"""OUTPUT0 = INPUT0 + 1, after SLEEP_MS (a model config parameter) of wall time."""

import os
import sys

# Triton 2.51's Python backend needs numpy < 2; its stub ignores PYTHONPATH.
sys.path[:0] = [p for p in os.environ.get("STAGGER_MODEL_PATH", "").split(os.pathsep) if p]

import json  # noqa: E402
import time  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.sleep_s = float(params.get("SLEEP_MS", {}).get("string_value", "0")) / 1000

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if self.sleep_s:
                time.sleep(self.sleep_s)
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(x.dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
