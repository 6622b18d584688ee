"""The code MLflow runs to build the registered frames model (models from code): the instance set here is empty,
and its ``load_context`` rebuilds the classifier from the model's ``classifier`` artifact with
``torch.load(weights_only=True)``. Nothing of the model is unpickled, so it also loads where MLflow refuses pickles
(``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``)."""
from mlflow.models import set_model

from tasks.serving.pyfunc import ClassifierPyfunc

set_model(ClassifierPyfunc())
