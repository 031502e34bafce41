"""Decoupled: for INPUT0 of n values, n responses OUTPUT0 = [v], then an empty final one."""

import os
import sys

# Triton 2.51's Python backend needs numpy < 2; its stub ignores PYTHONPATH.
sys.path[:0] = [p for p in os.environ.get("STAGGER_MODEL_PATH", "").split(os.pathsep) if p]

import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            for i in range(len(x)):
                out = pb_utils.Tensor("OUTPUT0", x[i : i + 1])
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
