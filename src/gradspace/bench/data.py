"""Real data for the benchmarks: a byte corpus for the language-model task, scikit-learn's digits for the vision task.

Corpus resolution (first hit wins; the result names which one was used):

1. ``--data PATH`` (an explicit path must exist);
2. ``$GRADSPACE_DATA`` (likewise);
3. ``../shared/data/tinyshakespeare.txt`` relative to the current directory, then to the repository root, when present;
4. tiny-shakespeare from the ``gradspace`` cache (``$XDG_CACHE_HOME/gradspace`` or ``~/.cache/gradspace``), downloaded
   there on first use from karpathy/char-rnn and verified by SHA-256; a network failure or a checksum mismatch falls
   through;
5. offline with nothing else: the Python standard library's own ``.py`` source text (real text every install has),
   files in sorted order, up to :data:`STDLIB_BYTES` bytes.

Tokens are raw bytes (vocabulary 256). The first 90 % of the corpus is for training, the last 10 % for validation.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import sysconfig
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHARED_RELATIVE = Path("..") / "shared" / "data" / "tinyshakespeare.txt"
#: size of the standard-library fallback corpus (about tiny-shakespeare's 1.1 MB)
STDLIB_BYTES = 1_200_000
#: repository root of a source checkout (src/gradspace/bench/data.py → the directory holding src/)
REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Corpus:
    """A byte corpus and where it came from (``source`` is one of the five steps of the module docstring)."""

    name: str
    source: str
    data: bytes = field(repr=False)
    path: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source, "path": self.path, "bytes": len(self.data), "sha256": self.sha256}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gradspace`` or ``~/.cache/gradspace``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gradspace"


def _download(url: str, timeout: float = 20.0) -> bytes:
    """Fetch ``url`` (raises ``OSError`` on any network failure). Tests replace this function."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL)
        return response.read()


def _cached_tinyshakespeare() -> Corpus | None:
    path = cache_dir() / "tinyshakespeare.txt"
    if path.is_file():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == TINYSHAKESPEARE_SHA256:
            return Corpus("tinyshakespeare", "cache", data, str(path))
        warnings.warn(f"gradspace: {path} does not match the tiny-shakespeare SHA-256; downloading it again.", stacklevel=3)
    try:
        data = _download(TINYSHAKESPEARE_URL)
    except OSError as err:
        warnings.warn(f"gradspace: could not download tiny-shakespeare ({err}); using the next corpus.", stacklevel=3)
        return None
    if hashlib.sha256(data).hexdigest() != TINYSHAKESPEARE_SHA256:
        warnings.warn("gradspace: the downloaded tiny-shakespeare has the wrong SHA-256; not used.", stacklevel=3)
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as err:  # a read-only home still gets the data for this run
        warnings.warn(f"gradspace: could not cache tiny-shakespeare in {path.parent} ({err}).", stacklevel=3)
    return Corpus("tinyshakespeare", "download", data, str(path))


@functools.lru_cache(maxsize=2)
def stdlib_corpus(limit: int = STDLIB_BYTES) -> Corpus:
    """The standard library's ``.py`` files (sorted by relative path, tests and site-packages skipped), concatenated."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages", "test/", "idlelib/", "lib2to3/tests")):
            continue
        try:
            text = path.read_bytes()
        except OSError:
            continue
        chunks.append(text)
        total += len(text)
        if total >= limit:
            break
    version = ".".join(map(str, sys.version_info[:3]))
    return Corpus(f"python{version}-stdlib-source", "stdlib", b"".join(chunks)[:limit], str(root))


#: the corpora the standard benchmark runs on, by the key its result folders use
CORPUS_KINDS = ("tinyshakespeare", "stdlib")


def corpus_key(corpus: Corpus) -> str:
    """``"stdlib"`` for the standard-library fallback, ``"tinyshakespeare"`` for tiny-shakespeare from any source, else
    the corpus name (a ``--data`` file)."""
    if corpus.source == "stdlib":
        return "stdlib"
    if corpus.name == "tinyshakespeare" or corpus.sha256 == TINYSHAKESPEARE_SHA256:
        return "tinyshakespeare"
    return corpus.name


def resolve_corpus(data: str | os.PathLike[str] | None = None, *, allow_download: bool = True,
                   kind: str | None = None) -> Corpus:
    """Find the language-model corpus in the documented order (see the module docstring).

    ``kind="stdlib"`` returns the standard-library corpus whatever else is present; ``kind="tinyshakespeare"`` runs
    steps 2–4 and raises ``FileNotFoundError`` when none of them finds it (no silent fallback)."""
    if kind == "stdlib":
        return stdlib_corpus()
    if kind not in (None, "tinyshakespeare"):
        raise ValueError(f"corpus kind {kind!r} is not one of {CORPUS_KINDS} (or None for the documented order).")
    if kind == "tinyshakespeare" and data is None:
        found = resolve_corpus(None, allow_download=allow_download)
        if corpus_key(found) != "tinyshakespeare":
            raise FileNotFoundError("tiny-shakespeare is not in $GRADSPACE_DATA, ../shared/data or the cache, and "
                                    + ("could not be downloaded" if allow_download else "downloading is off (--offline)")
                                    + "; use --corpus stdlib or pass --data.")
        return found
    if data is not None:
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"--data {str(data)!r} is not a file; pass an existing text file or omit --data.")
        return Corpus(path.stem, "--data", path.read_bytes(), str(path))
    env = os.environ.get("GRADSPACE_DATA")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"$GRADSPACE_DATA={env!r} is not a file; point it at a text file or unset it.")
        return Corpus(path.stem, "$GRADSPACE_DATA", path.read_bytes(), str(path))
    for base in (Path.cwd(), REPO_ROOT):
        path = base / SHARED_RELATIVE
        if path.is_file():
            return Corpus("tinyshakespeare", "shared", path.read_bytes(), str(path.resolve()))
    if allow_download:
        corpus = _cached_tinyshakespeare()
        if corpus is not None:
            return corpus
    return stdlib_corpus()


class ByteBatches:
    """Fixed train/validation batches of ``seq + 1`` byte tokens from a corpus (90/10 split).

    Training batch ``i`` of a run with seed ``s`` comes from ``torch.Generator(10000 + s)``, so every optimizer sees the
    same data in the same order; validation batches are drawn once from ``torch.Generator(1234)`` and shared by all runs.
    """

    def __init__(self, corpus: Corpus, seq: int, batch: int, val_batches: int, seed: int) -> None:
        tokens = torch.frombuffer(bytearray(corpus.data), dtype=torch.uint8).long()
        split = int(0.9 * len(tokens))
        self.train, self.val_tokens = tokens[:split], tokens[split:]
        if len(self.val_tokens) <= seq + 1 or len(self.train) <= seq + 1:
            raise ValueError(f"corpus {corpus.name!r} ({len(tokens)} bytes) is too short for seq={seq}.")
        self.seq, self.batch = seq, batch
        self.gen = torch.Generator().manual_seed(10000 + seed)
        vgen = torch.Generator().manual_seed(1234)
        self.val = [self._block(self.val_tokens, vgen) for _ in range(val_batches)]

    def _block(self, tokens: Tensor, gen: torch.Generator) -> Tensor:
        starts = torch.randint(0, len(tokens) - self.seq - 1, (self.batch,), generator=gen)
        return torch.stack([tokens[s : s + self.seq + 1] for s in starts.tolist()])

    def next_train(self) -> Tensor:
        return self._block(self.train, self.gen)


def load_digits_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8×8 digits (1797 images), pixels scaled to [0, 1]; a fixed 80/20 split (``seed`` 0 always)."""
    from sklearn.datasets import load_digits  # lazy: only the digits task needs scikit-learn

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    tr, va = perm[:cut], perm[cut:]
    return x[tr], y[tr], x[va], y[va]
