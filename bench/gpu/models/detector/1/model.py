"""RetinaNet on the GPU behind Triton's Python backend: JPEG bytes in, detections out.
The JPEG is decoded on the GPU (torchvision.io.decode_jpeg, nvjpeg), so decode, resize to
800 px, backbone, heads and post-processing are all the inference's GPU work."""

import os
import sys

# Triton 2.51's Python backend needs numpy < 2 (first on the path); torch comes after it.
sys.path[:0] = [p for p in os.environ.get("STAGGER_MODEL_PATH", "").split(os.pathsep) if p]

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

WARMUP = 5


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})

        def param(name):
            return params[name]["string_value"]

        self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0)))
        torch.backends.cudnn.benchmark = True
        self.model = (
            torchvision.models.detection.retinanet_resnet50_fpn(
                weights=None,
                weights_backbone=None,
                score_thresh=float(param("SCORE_THRESH")),
                detections_per_img=int(param("DETECTIONS")),
                min_size=int(param("MIN_SIZE")),
            )
            .eval()
            .to(self.device)
        )
        frame = torch.randint(0, 255, (3, 1080, 1920), dtype=torch.uint8)
        jpeg = torchvision.io.encode_jpeg(frame, quality=90)
        for _ in range(WARMUP):  # cuDNN picks its kernels now, not on the first frames
            self._detect(jpeg)

    def _detect(self, jpeg):
        with torch.inference_mode():
            image = torchvision.io.decode_jpeg(jpeg, device=self.device)
            out = self.model([image.float() / 255])[0]
            rows = torch.cat(
                [out["boxes"], out["scores"][:, None], out["labels"][:, None].float()], dim=1
            )
            return rows.cpu().numpy().astype(np.float32)  # waits for the GPU

    def execute(self, requests):
        responses = []
        for request in requests:
            began = time.time()
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                rows = self._detect(torch.from_numpy(np.ascontiguousarray(data)))
            except RuntimeError as e:  # not a JPEG, say: the request fails, the model lives
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"detector: {e}"))
                )
                continue
            out = pb_utils.Tensor("DETECTIONS", rows.reshape(-1, 6))
            times = pb_utils.Tensor("TIMES", np.array([began, time.time()], dtype=np.float64))
            responses.append(pb_utils.InferenceResponse([out, times]))
        return responses
