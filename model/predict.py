"""From uint8 frames to class probabilities, with the exact preprocessing that training uses.

Training and inference share :func:`preprocess`, :func:`view_probabilities` (multi-view averaging, see
:mod:`model.views`) and :func:`single_frame_clip` for the ablation, so a model can never see differently prepared
input at prediction time. :class:`VideoClassifier` carries the sampling parameters (``num_frames`` stored frames,
``image_size``), the :class:`~model.views.ViewSpec` and the class names with the weights, so whoever loads it
samples frames the same way as the dataset stage did and looks at them the way evaluation did.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.views import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD, ViewSpec, eval_views, normalise, to_network_input


def preprocess(frames: np.ndarray | torch.Tensor, spec: ViewSpec | None = None) -> torch.Tensor:
    """uint8 ``(B, N, H, W, 3)`` RGB (numpy or tensor, any device) -> float32 ``(B, T, C, H, W)`` on the input's
    device (CPU for numpy). Without ``spec``: every frame, RGB normalised with the ImageNet mean/std (``T = N``;
    models packaged before views existed). With ``spec``: ``N`` must be one view's ``spec.frames_per_view`` frames
    (:func:`model.views.view_indices`), turned into the spec's input form with the spec's mean/std."""
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected frames (B, T, H, W, 3), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {x.dtype}")
    x = rearrange(x, "b t h w c -> b t c h w").float().div_(255.0)
    if spec is None:
        return normalise(x, MEAN, STD)
    if x.shape[1] != spec.frames_per_view:
        raise ValueError(f"a '{spec.input}' view of {spec.num_frames} positions is {spec.frames_per_view} frames, "
                         f"got {x.shape[1]}")
    return to_network_input(x, spec)


def view_probabilities(forward: nn.Module, views: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """uint8 ``(B, V, frames_per_view, H, W, 3)`` -> the mean over the ``V`` views of the softmax, ``(B, K)``
    float32. Averaging probabilities (not logits) is what ViViT's and mmaction2's multi-view testing do."""
    b, v = views.shape[:2]
    logits = forward(preprocess(views.flatten(0, 1), spec)).float()  # (B*V, K)
    return F.softmax(logits, dim=-1).view(b, v, -1).mean(dim=1)


def single_frame_clip(x: torch.Tensor) -> torch.Tensor:
    """The single-frame ablation's input: the middle frame (index ``T // 2``) repeated ``T`` times along dim 1.

    Repeating (rather than feeding ``T = 1``) keeps the network, its tubelets and its parameter count identical to
    the full model, so the ablation removes temporal information and nothing else."""
    t = x.shape[1]
    return x[:, t // 2 : t // 2 + 1].expand(-1, t, *x.shape[2:]).contiguous()


class SingleFrame(nn.Module):
    """Wraps a network so that it only ever sees :func:`single_frame_clip` of its input. Training, evaluation and
    a packaged :class:`VideoClassifier` then all apply the ablation the same way, without a flag to forget."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(single_frame_clip(x))


class VideoClassifier(nn.Module):
    """A trained network packaged for inference: uint8 frames ``(B, F, H, W, 3)`` -> softmax ``(B, K)`` float32.

    Attributes ``classes``, ``num_frames``, ``image_size`` describe what the network was trained on: ``num_frames``
    and ``image_size`` are the frame sampler's parameters a caller must reproduce (``sample_clip(path, num_frames,
    image_size)``). ``view`` says how the stored frames become network input; the views are averaged inside
    ``forward``. Without a view (models packaged before views existed) every frame is one RGB network frame. For
    binary tasks the positive class is ``classes[1]``."""

    def __init__(self, network: nn.Module, *, classes: Sequence[str], num_frames: int, image_size: int,
                 view: ViewSpec | None = None) -> None:
        super().__init__()
        if len(classes) < 2:
            raise ValueError(f"need at least two classes, got {list(classes)}")
        self.network = network
        self.classes = [str(c) for c in classes]
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        if view is not None:
            view.check_stored(self.num_frames)
        self.view = view
        self.eval()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        want = (self.num_frames, self.image_size, self.image_size, 3)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != want:
            raise ValueError(f"expected uint8 frames (B, {', '.join(map(str, want))}), got {tuple(frames.shape)}")
        device = next(self.network.parameters()).device
        frames = frames.to(device)
        view = getattr(self, "view", None)
        if view is None:
            return F.softmax(self.network(preprocess(frames)).float(), dim=-1)
        return view_probabilities(self.network, eval_views(frames, view), view)


@torch.inference_mode()
def predict_proba(model: nn.Module, frames: np.ndarray | torch.Tensor, *, batch_size: int = 16) -> np.ndarray:
    """Class probabilities ``(B, K)`` for uint8 frames ``(B, T, H, W, 3)``, from a :class:`VideoClassifier` or a bare
    network (which then gets :func:`preprocess` and a softmax). Runs in eval mode, in chunks of ``batch_size``."""
    frames_t = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(frames_t), batch_size):
            chunk = frames_t[start : start + batch_size]
            if isinstance(model, VideoClassifier):
                out.append(model(chunk).cpu())
            else:
                device = next(model.parameters()).device
                out.append(F.softmax(model(preprocess(chunk.to(device))).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    finally:
        model.train(was_training)
