"""A packaged :class:`~model.predict.VideoClassifier` as one traceable module, for TorchScript and ONNX.

``VideoClassifier.forward`` computes the evaluation views' frame indices with numpy from the input's shape, which a
tracer cannot follow. :class:`ExportableClassifier` computes them once (the stored frame count is fixed by the
model) and keeps them as a buffer; the rest is the same functions (:func:`model.predict.preprocess`, the softmax
averaged over the views), so the exported file computes what the registered model computes: uint8 ``(B, F, S, S,
3)`` RGB in, probabilities ``(B, K)`` out, any batch size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.predict import VideoClassifier, preprocess
from model.views import view_indices


def static_adaptive_avg_pool3d(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool3d(x, grid)`` from plain average pools and slices, for ONNX (whose exporter has no
    adaptive 3D pool): the input's size is fixed by the model, so the windows are known. A size the grid divides
    is one ``avg_pool3d``; otherwise each cell averages PyTorch's own window ``[floor(i*n/g), ceil((i+1)*n/g))``."""
    sizes = tuple(int(n) for n in x.shape[-3:])
    if all(n % g == 0 for n, g in zip(sizes, grid)):
        k = tuple(n // g for n, g in zip(sizes, grid))
        return F.avg_pool3d(x, kernel_size=k, stride=k)
    windows = [[(i * n // g, -(-(i + 1) * n // g)) for i in range(g)] for n, g in zip(sizes, grid)]
    cells = [x[..., t0:t1, h0:h1, w0:w1].mean(dim=(-3, -2, -1))
             for t0, t1 in windows[0] for h0, h1 in windows[1] for w0, w1 in windows[2]]
    return torch.stack(cells, dim=-1).reshape(*x.shape[:-3], *grid)


class _StaticI3DViViT(nn.Module):
    """An :class:`~model.i3d_vivit.I3DViViT` whose pooling of the stem's map exports to ONNX (same weights, same
    computation)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem, self.encoder, self.until = net.stem, net.encoder, net.until

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.stem.forward_features(x.transpose(1, 2), self.until)
        return self.encoder(static_adaptive_avg_pool3d(maps, tuple(self.encoder.grid)))


class ExportableClassifier(nn.Module):
    def __init__(self, classifier: VideoClassifier) -> None:
        super().__init__()
        from model.i3d_vivit import I3DViViT

        net = classifier.network
        self.network = _StaticI3DViViT(net) if isinstance(net, I3DViViT) else net
        self.spec = getattr(classifier, "view", None)
        f = classifier.num_frames
        if self.spec is None:  # packaged before views existed: every stored frame, RGB
            idx = np.arange(f)[None]
        else:
            idx = np.stack([view_indices(f, self.spec, view=v) for v in range(self.spec.test_views)])
        self.num_views, self.frames_per_view = int(idx.shape[0]), int(idx.shape[1])
        self.register_buffer("index", torch.from_numpy(idx.reshape(-1).astype(np.int64)), persistent=False)
        self.eval()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        h, w = frames.shape[2], frames.shape[3]
        views = frames.index_select(1, self.index).reshape(-1, self.frames_per_view, h, w, 3)  # (B*V, fpv, H, W, 3)
        logits = self.network(preprocess(views, self.spec)).float()
        return F.softmax(logits, dim=-1).reshape(-1, self.num_views, logits.shape[-1]).mean(dim=1)
