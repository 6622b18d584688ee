"""What a registered model runs, shipped with it: the pyfunc classes (:mod:`.pyfunc`) and the models-from-code
files MLflow executes to build them (``served_frames.py``, ``served_video.py``).

A container serving a model needs the network and the decoding, not the pipeline: this package imports only
``model/``, MLflow's pyfunc and the library's prediction stream (``tasks/lib/predicting.py`` and the decoding it
imports), never Prefect or Dask. ``CODE`` is all of the project a logged model carries, ``REQUIREMENTS`` its pip
requirements; tests/test_layers.py checks ``CODE`` holds every project module this package imports, and
tests/test_serving.py loads and predicts with a registered model where Prefect cannot be imported.
"""

# Paths from the project root, copied into the model in this layout (``tasks/tracking/models.py`` ``log_classifier``).
CODE = ("model", "tasks/__init__.py", "tasks/serving", "tasks/lib/__init__.py", "tasks/lib/predicting.py",
        "tasks/lib/filtering.py", "tasks/lib/sampling.py", "tasks/lib/paths.py", "tasks/lib/reports.py")

REQUIREMENTS = ["torch==2.13.0", "einops==0.8.2", "numpy", "pandas", "av==18.1.0", "pydantic"]
