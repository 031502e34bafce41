"""RetinaNet on the GPU behind Triton's Python backend: JPEG bytes in, detections out.
The JPEG is decoded on the GPU (torchvision.io.decode_jpeg, nvjpeg), so decode, resize to
800 px, backbone, heads and post-processing are all the inference's GPU work. The network
is network.py's; the CUDA_GRAPHS parameter ("1") runs its body as a CUDA graph."""

import os
import sys

# Triton 2.51's Python backend needs numpy < 2 (first on the path); torch comes after it.
sys.path[:0] = [p for p in os.environ.get("STAGGER_MODEL_PATH", "").split(os.pathsep) if p]

import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from network import Detector  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})

        def param(name, default=None):
            return params[name]["string_value"] if name in params else default

        device = torch.device("cuda", int(args.get("model_instance_device_id", 0)))
        # Many servers load at once on one GPU: cuDNN's kernel search sizes its trial
        # workspaces by the free memory, so without a share one search (17.5 GiB seen)
        # leaves the next model's start out of memory. Searches skip what does not fit.
        share = os.environ.get("STAGGER_GPU_MEMORY_SHARE")
        if share:
            torch.cuda.set_per_process_memory_fraction(float(share), device)
        self.detector = Detector(
            device,
            score_thresh=float(param("SCORE_THRESH")),
            detections=int(param("DETECTIONS")),
            min_size=int(param("MIN_SIZE")),
            cuda_graphs=param("CUDA_GRAPHS", "0") == "1",
        )

        # A collection in this process holds the next request's start (the GC output).
        self.collections = []
        self.collecting_since = 0.0
        gc.callbacks.append(self.collected)

    def collected(self, phase, info):
        if phase == "start":
            self.collecting_since = time.time()
        elif time.time() - self.collecting_since >= 1e-3:
            self.collections.append((self.collecting_since, time.time()))

    def collections_since_last_answer(self):
        spans, self.collections = self.collections, []
        first, last = max(spans, key=lambda s: s[1] - s[0], default=(0.0, 0.0))
        return np.array([len(spans), sum(e - b for b, e in spans), first, last], np.float64)

    def execute(self, requests):
        responses = []
        for request in requests:
            began = time.time()
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                jpeg = torch.from_numpy(np.ascontiguousarray(data))
                rows = self.detector.detect(jpeg).numpy().astype(np.float32)
            except RuntimeError as e:  # not a JPEG, say: the request fails, the model lives
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"detector: {e}"))
                )
                continue
            out = pb_utils.Tensor("DETECTIONS", rows.reshape(-1, 6))
            times = pb_utils.Tensor("TIMES", np.array([began, time.time()], dtype=np.float64))
            gcs = pb_utils.Tensor("GC", self.collections_since_last_answer())
            responses.append(pb_utils.InferenceResponse([out, times, gcs]))
        return responses
