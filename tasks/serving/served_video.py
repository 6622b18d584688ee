"""The code MLflow runs to build the registered video model (models from code; see ``served_frames.py``)."""
from mlflow.models import set_model

from tasks.serving.pyfunc import VideoPyfunc

set_model(VideoPyfunc())
