"""Evaluation passes: the averaged evaluation views of every clip, their report, and the per-clip table."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from model.metrics import classification_report
from model.predict import view_probabilities
from model.views import ViewSpec


def autocast(device: torch.device, dtype: torch.dtype | None = None):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)



def evaluate(forward: nn.Module, loader: DataLoader, device: torch.device, classes: list[str],
             view: ViewSpec, amp: torch.dtype | None = None, probabilities=None) -> dict[str, Any]:
    """The classification report for every clip of ``loader`` (evaluation views averaged, no augmentation), with
    the plain (unweighted, unsmoothed) cross-entropy of the averaged probabilities as ``loss``."""
    labels, probs, loss = predict_probabilities(forward, loader, device, classes, view, amp, probabilities)
    return classification_report(labels, probs, classes, loss=loss)



@torch.inference_mode()
def predict_probabilities(forward: nn.Module, loader: DataLoader, device: torch.device, classes: list[str], view: ViewSpec,
             amp: torch.dtype | None = None, probabilities=None):
    """``(labels (N,), probabilities (N, K), mean cross-entropy or None)`` in the loader's order. ``probabilities``
    replaces :func:`model.predict.view_probabilities` for loaders of something other than frames (cached stem maps:
    :func:`model.i3d_vivit.map_view_probabilities`)."""
    forward.eval()
    probs, labels, loss_sum = [], [], 0.0
    for views, y in loader:  # views: (B, V, frames_per_view, S, S, 3) uint8
        y = y.to(device)
        with autocast(device, amp):
            views = views.to(device, non_blocking=True)
            p = (view_probabilities(forward, views, view) if probabilities is None else probabilities(forward, views)).float()
        loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum").item()
        probs.append(p.cpu())
        labels.append(y.cpu())
    n = sum(len(y) for y in labels)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(classes)))
    t = torch.cat(labels).numpy() if labels else np.zeros(0, np.int64)
    return t, p, loss_sum / n if n else None



def prediction_table(rows: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per clip: ``clip_id``, ``label``, ``predicted``, ``correct``, ``p_<class>`` for every class, and
    for two classes ``p_positive`` (the probability of ``classes[1]``, the positive class), so that a user can
    re-threshold or find the clips the model gets wrong."""
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    table = pd.DataFrame({
        "clip_id": rows["clip_id"].to_numpy(), "label": rows["label"].to_numpy(),
        "predicted": [classes[i] for i in predicted],
    })
    table["correct"] = table["label"] == table["predicted"]
    for k, c in enumerate(classes):
        table[f"p_{c}"] = probs[:, k].astype(float)
    if len(classes) == 2:
        table["p_positive"] = probs[:, 1].astype(float)
    return table
