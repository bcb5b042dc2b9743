"""Supervised data sets with headroom, generated locally from code shipped in a package.

`mnist1d` (Greydanus 2020, PyPI `mnist1d`): 10 digit-like 1-D templates, each randomly padded,
translated, scaled, sheared and noised into 40-sample signals. Why: the bundled scikit-learn
sets are solved by tiny MLPs (digits ~0.97), while on MNIST-1D small MLPs plateau around
0.6-0.7 test accuracy and small conv nets reach ~0.94 (the package's published figures), so
there is room for architecture search to show progress.

No network and no pickle: the package's `get_dataset` downloads and unpickles a file, so it is
never called; `mnist1d.data.make_dataset(get_dataset_args())` generates the same published
recipe (5,000 samples: its 4,000 "train" and 1,000 "test"; seed 42) in ~2 s of CPU.

Cached on disk, checked by content: a node starts three processes that each need the data (the
daemon, its evolution and its verifier children), and a 4-node testnet generated it twelve
times, ~24 CPU s of its start-up on 2 cores. The arrays are written once to
`$QUDAG_CACHE_DIR` (default `$XDG_CACHE_HOME/qudag-evo`, else `~/.cache/qudag-evo`) as an
uncompressed .npz read without pickle, under a name carrying the BLAKE3 digest of the
published recipe's arrays (`MNIST1D_DIGEST`, pinned here); a file whose content does not hash
to it is ignored and regenerated over, so a corrupt or edited cache cannot change the task.
`QUDAG_CACHE_DIR=off` (or an unwritable directory) means generate every time.

Splits: the package's 1,000 test samples are our test split; its 4,000 train samples are split
stratified 75/25 into train (3,000) and val (1,000) with `tasks.SPLIT_SEED`. Inputs are
standardised per feature from our train split, as for every data task.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import blake3
import numpy as np

MNIST1D_SEED = 42  # the package's default (the published data set)
MNIST1D_SAMPLES = 5000
MNIST1D_TRAIN_FRACTION = 0.8
MNIST1D_LENGTH = 40
# BLAKE3 of the four arrays the pinned recipe generates (`arrays_digest`): what a cached file
# must hash to. mnist1d 0.0.2.post1, numpy 2.x, scipy interpolation; a package update that
# changed the data would change it, and the cache would then simply not be used.
MNIST1D_DIGEST = "aff5457b73fcfbd52e4ff101bf7a81a4e43011af7514c69c4535c7915b3df4d4"
_ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


_MNIST1D: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []


def mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train (4000, 40) float32, y_train int64, x_test (1000, 40), y_test), read-only.

    Read from the checked cache, or generated (~2 s) and cached; kept in memory per process.
    """
    if not _MNIST1D:
        arrays = _read_cache() or _generate_and_cache()
        for a in arrays:
            a.setflags(write=False)
        _MNIST1D.append(arrays)
    return _MNIST1D[0]


Arrays4 = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def arrays_digest(arrays: Arrays4) -> str:
    """BLAKE3 over each array's dtype, shape and bytes."""
    h = blake3.blake3()
    for a in arrays:
        h.update(str(a.dtype).encode() + repr(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cache_dir() -> Path | None:
    """Where generated data sets are cached, or None (`QUDAG_CACHE_DIR=off`)."""
    configured = os.environ.get("QUDAG_CACHE_DIR", "")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qudag-evo"


def _cache_path() -> Path | None:
    directory = cache_dir()
    return None if directory is None else directory / f"mnist1d-{MNIST1D_DIGEST[:32]}.npz"


def _read_cache() -> Arrays4 | None:
    path = _cache_path()
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = tuple(np.ascontiguousarray(npz[name]) for name in _ARRAY_NAMES)
    except (OSError, ValueError, KeyError):
        return None
    if arrays_digest(arrays) != MNIST1D_DIGEST:  # type: ignore[arg-type]
        return None
    return arrays  # type: ignore[return-value]


def _generate_and_cache() -> Arrays4:
    arrays = generate_mnist1d()
    path = _cache_path()
    if path is None or arrays_digest(arrays) != MNIST1D_DIGEST:
        return arrays
    try:  # write-then-rename: a reader never sees half a file; a failure leaves no file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".mnist1d-", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                x, y, x_test, y_test = arrays
                np.savez(f, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # no cache (read-only home, full disk): generate next time too
    return arrays


def generate_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the package's generator with the pinned recipe (no cache; see `mnist1d_arrays`).

    `make_dataset` seeds Python's and NumPy's global generators; both are saved and restored so
    a host program's random streams are untouched.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    # Pin the recipe explicitly (a package update changing a default must not change the task).
    args.num_samples = MNIST1D_SAMPLES
    args.train_split = MNIST1D_TRAIN_FRACTION
    args.final_seq_length = MNIST1D_LENGTH
    args.seed = MNIST1D_SEED
    args.shuffle_seq = False
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        data: dict[str, Any] = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (
        np.ascontiguousarray(data["x"], dtype=np.float32),
        np.ascontiguousarray(data["y"], dtype=np.int64),
        np.ascontiguousarray(data["x_test"], dtype=np.float32),
        np.ascontiguousarray(data["y_test"], dtype=np.int64),
    )


def mnist1d_task() -> Any:
    """The `tasks.Task` named `mnist1d` (see the module doc for data and splits)."""
    from sklearn.model_selection import train_test_split

    from qudag.evolution.tasks import SPLIT_SEED, Task, _standardisation

    x, y, x_test, y_test = mnist1d_arrays()
    idx = np.arange(len(y))
    train, val = train_test_split(idx, test_size=0.25, random_state=SPLIT_SEED, stratify=y)
    train, val = np.sort(train), np.sort(val)
    mean, scale = _standardisation(x[train])
    return Task(
        name="mnist1d",
        version=1,
        kind="classification",
        n_inputs=MNIST1D_LENGTH,
        n_outputs=10,
        input_mean=mean,
        input_scale=scale,
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        x_test=x_test,
        y_test=y_test,
        description="MNIST-1D (generated locally, 40 inputs, 10 classes), 3000/1000/1000",
        default_hidden=(64,),
        class_names=tuple(str(i) for i in range(10)),
    )
