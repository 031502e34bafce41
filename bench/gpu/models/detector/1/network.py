"""The detector's network, without Triton: RetinaNet (torchvision ``retinanet_resnet50_fpn``,
random weights) on one GPU, a JPEG in, detections out. ``model.py`` serves it; the bench
checks and times it directly (``bench.gpu.graphs``).

With ``cuda_graphs``, the backbone and the heads (every kernel whose shapes are fixed by the
frame size: most of the GPU work) run as one CUDA graph captured for the first frame size
seen; decode, resize, anchors' split and post-processing (data-dependent shapes, NMS) stay
eager, and the anchors are computed once per size. Eager, each of the body's few hundred
kernels is launched from Python and the GPU idles between launches where kernels are
short: the graph makes the body GPU-dense, which is what a stagger's slot needs to hold it.
Frames of another size run the body eager. Without ``cuda_graphs`` it is torchvision's own
call, as before."""

from __future__ import annotations

import torch
import torchvision
from torch.profiler import record_function

WARMUP = 5


class Detector:
    def __init__(
        self,
        device: torch.device,
        *,
        score_thresh: float = 0.05,
        detections: int = 100,
        min_size: int = 800,
        cuda_graphs: bool = False,
    ) -> None:
        self.device = device
        torch.backends.cudnn.benchmark = True
        self.model = (
            torchvision.models.detection.retinanet_resnet50_fpn(
                weights=None,
                weights_backbone=None,
                score_thresh=score_thresh,
                detections_per_img=detections,
                min_size=min_size,
            )
            .eval()
            .to(device)
        )
        self.cuda_graphs = cuda_graphs
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: torch.Tensor | None = None
        self._static_out: tuple[list[torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._anchors: dict[torch.Size, list[torch.Tensor]] = {}
        frame = torch.randint(0, 255, (3, 1080, 1920), dtype=torch.uint8)
        jpeg = torchvision.io.encode_jpeg(frame, quality=90)
        for _ in range(WARMUP):  # cuDNN picks its kernels now, not on the first frames
            self.detect(jpeg)
        # cuDNN's search tried workspaces as large as the free memory; hand them back
        torch.cuda.empty_cache()

    def _body(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        features = list(self.model.backbone(batch).values())
        return features, self.model.head(features)

    def _capture(self, batch: torch.Tensor) -> None:
        """The body as a CUDA graph on ``batch``'s shape (warmed on a side stream first, as
        capture requires)."""
        self._static_in = batch.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._body(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self._body(self._static_in)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """One image's detections: eager, torchvision's own call; with graphs, RetinaNet's
        inference path (``RetinaNet.forward``) with the body replayed from the graph."""
        if not self.cuda_graphs:
            return self.model([image])[0]
        model = self.model
        original_size = (int(image.shape[-2]), int(image.shape[-1]))
        with record_function("transform"):
            images, _ = model.transform([image])
        batch = images.tensors
        if self._graph is None:
            self._capture(batch)
        assert self._static_in is not None and self._static_out is not None
        with record_function("body"):
            if self._static_in.shape == batch.shape:
                self._static_in.copy_(batch)
                self._graph.replay()
                features, head_outputs = self._static_out
            else:
                features, head_outputs = self._body(batch)
        return self._postprocess(images, features, head_outputs, original_size)

    @record_function("postprocess")
    def _postprocess(
        self,
        images: torchvision.models.detection.image_list.ImageList,
        features: list[torch.Tensor],
        head_outputs: dict[str, torch.Tensor],
        original_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        model = self.model
        batch = images.tensors
        if batch.shape not in self._anchors:
            # Anchors depend on the batch and feature sizes only: computed once per size.
            self._anchors[batch.shape] = model.anchor_generator(images, features)
        per_level = [f.size(2) * f.size(3) for f in features]
        per_anchor = head_outputs["cls_logits"].size(1) // sum(per_level)
        per_level = [hw * per_anchor for hw in per_level]
        split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in self._anchors[batch.shape]]
        detections = model.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
        return model.transform.postprocess(detections, images.image_sizes, [original_size])[0]

    def detect(self, jpeg: torch.Tensor) -> torch.Tensor:
        """Detections of one JPEG (bytes as a uint8 tensor), rows of x1 y1 x2 y2 score label,
        on the CPU (the copy waits for the GPU)."""
        # The ranges name the phases for torch.profiler (bench.gpu.graphs); no cost otherwise.
        with torch.inference_mode():
            with record_function("decode"):
                image = torchvision.io.decode_jpeg(jpeg, device=self.device)
            with record_function("network"):
                out = self.forward(image.float() / 255)
            with record_function("to-cpu"):
                rows = torch.cat(
                    [out["boxes"], out["scores"][:, None], out["labels"][:, None].float()],
                    dim=1,
                )
                return rows.cpu()
