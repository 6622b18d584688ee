"""What the pretrain stage leaves in MLflow beyond a run of its own (``training_run``, ``log_*``): the tag on a
registered version that says its encoder was pretrained, and on what. The model card (:mod:`.card`) reads the
train run's ``pretrain.*`` params; this tag is there for a reader of the registry alone."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

PRETRAINED_ON = "pretrained_on"
PRETRAIN_RUN = "pretrain_run_id"


def tag_pretrained(name: str, version: int, pretrained_on: str, pretrain_run_id: str | None) -> None:
    """Tags ``pretrained_on`` (and ``pretrain_run_id``) on version ``version`` of registered model ``name``."""
    client = MlflowClient()
    client.set_model_version_tag(name, str(version), PRETRAINED_ON, pretrained_on[:5000])
    if pretrain_run_id:
        client.set_model_version_tag(name, str(version), PRETRAIN_RUN, pretrain_run_id)
