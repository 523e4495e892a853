"""Corpus resolution order, with temporary files and a fake downloader (no network)."""

from __future__ import annotations

import hashlib

import pytest

from gradspace.bench import data


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env var, an empty cwd, no repo-root copy, an empty cache, and a downloader that fails."""
    monkeypatch.delenv("GRADSPACE_DATA", raising=False)
    cwd = tmp_path / "work" / "repo"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "nowhere")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []

    def offline(url, timeout=20.0):
        calls.append(url)
        raise OSError("offline")

    monkeypatch.setattr(data, "_download", offline)
    return tmp_path, calls


def test_explicit_path_wins_over_everything(isolated, monkeypatch):
    tmp, _ = isolated
    mine, env = tmp / "mine.txt", tmp / "env.txt"
    mine.write_text("explicit corpus")
    env.write_text("env corpus")
    monkeypatch.setenv("GRADSPACE_DATA", str(env))
    c = data.resolve_corpus(mine)
    assert (c.source, c.data) == ("--data", b"explicit corpus")


def test_missing_explicit_path_is_an_error(isolated):
    with pytest.raises(FileNotFoundError, match="--data"):
        data.resolve_corpus("/no/such/file.txt")


def test_env_var_before_shared_copy(isolated, monkeypatch):
    tmp, _ = isolated
    env = tmp / "env.txt"
    env.write_text("env corpus")
    shared = tmp / "work" / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "tinyshakespeare.txt").write_text("shared corpus")
    monkeypatch.setenv("GRADSPACE_DATA", str(env))
    assert data.resolve_corpus().source == "$GRADSPACE_DATA"
    monkeypatch.delenv("GRADSPACE_DATA")
    c = data.resolve_corpus()
    assert (c.source, c.data) == ("shared", b"shared corpus")


def test_repo_root_shared_copy_when_cwd_has_none(isolated, monkeypatch):
    tmp, calls = isolated
    root = tmp / "checkout" / "repo"
    root.mkdir(parents=True)
    (tmp / "checkout" / "shared" / "data").mkdir(parents=True)
    (tmp / "checkout" / "shared" / "data" / "tinyshakespeare.txt").write_text("root copy")
    monkeypatch.setattr(data, "REPO_ROOT", root)
    c = data.resolve_corpus()
    assert (c.source, c.data) == ("shared", b"root copy") and not calls


def test_download_is_verified_and_cached(isolated, monkeypatch):
    tmp, _ = isolated
    text = b"First Citizen: a stand-in for the real file"
    monkeypatch.setattr(data, "TINYSHAKESPEARE_SHA256", hashlib.sha256(text).hexdigest())
    monkeypatch.setattr(data, "_download", lambda url, timeout=20.0: text)
    c = data.resolve_corpus()
    assert (c.source, c.data) == ("download", text)
    assert (tmp / "cache" / "gradspace" / "tinyshakespeare.txt").read_bytes() == text

    def fail(url, timeout=20.0):
        raise AssertionError("a valid cache must not download")

    monkeypatch.setattr(data, "_download", fail)
    assert data.resolve_corpus().source == "cache"


def test_bad_checksum_and_network_failure_fall_through_to_stdlib(isolated, monkeypatch):
    _, calls = isolated
    with pytest.warns(UserWarning, match="could not download"):
        c = data.resolve_corpus()
    assert c.source == "stdlib" and calls and len(c.data) > 100_000
    assert b"def " in c.data and c.name.startswith("python")
    monkeypatch.setattr(data, "_download", lambda url, timeout=20.0: b"tampered")
    with pytest.warns(UserWarning, match="wrong SHA-256"):
        assert data.resolve_corpus().source == "stdlib"
    assert data.resolve_corpus(allow_download=False).source == "stdlib"


def test_batches_are_fixed_per_seed_and_validation_shared():
    corpus = data.Corpus("t", "test", bytes(range(256)) * 40)
    a, b, c = (data.ByteBatches(corpus, 16, 4, 2, seed) for seed in (0, 0, 1))
    assert all((x == y).all() for x, y in zip(a.val, c.val))
    assert (a.next_train() == b.next_train()).all()
    assert not (a.next_train() == c.next_train()).all()
    assert a.next_train().shape == (4, 17)


def test_corpus_kind_forces_stdlib_or_refuses_to_fall_back(monkeypatch, tmp_path):
    from gradspace.bench import data as bench_data

    monkeypatch.delenv("GRADSPACE_DATA", raising=False)
    assert bench_data.corpus_key(bench_data.resolve_corpus(kind="stdlib")) == "stdlib"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_data, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="tiny-shakespeare"):
        bench_data.resolve_corpus(kind="tinyshakespeare", allow_download=False)
    with pytest.raises(ValueError, match="corpus kind"):
        bench_data.resolve_corpus(kind="wiki")
