"""Video transformers (ViViT, arXiv:2103.15691, and the original per-frame baseline) and their training loop.

Entry points: :mod:`model.presets` (``build_model``, ``describe``, ``PRESETS``), :mod:`model.training`
(``TrainOptions``, ``fit``), :mod:`model.predict` (``preprocess``, ``VideoClassifier``, ``predict_proba``),
:mod:`model.dataset` (the stored dataset's format: ``load_dataset``, ``write_dataset_files``).
Pure PyTorch: no tracking or orchestration library is imported here.
"""
