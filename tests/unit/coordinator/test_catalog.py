"""The model catalog: snapshots pulled from Hugging Face folders, listed, resolved and refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.cli import main as swarm_main
from swarm.models import PRESETS
from swarm.models.sources import (
    CATALOG,
    LoadedModel,
    gguf_in_package,
    load_preset,
    save_folder,
    unique_state,
)
from swarm.protocol.errors import ConfigError, NotFoundError

INPUT_IDS = torch.tensor([[1, 60, 61, 62, 200, 7, 258]])


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "data" / "blobs")


@pytest.fixture
def catalog(tmp_path: Path, blobs: BlobStore) -> ModelCatalog:
    return ModelCatalog(tmp_path / "data" / "models", blobs)


def hf_folder(path: Path, seed: int = 3) -> LoadedModel:
    """Write micro-llama (random init from `seed`) as a Hugging Face folder at `path`."""
    loaded = load_preset("micro-llama", seed=seed, chat=True)
    save_folder(loaded, path)
    return loaded


def as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (integer keys become strings)."""
    return json.loads(json.dumps(value))


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits  # type: ignore[no-any-return]


def test_pull_stores_every_file_in_the_blob_store(
    tmp_path: Path, catalog: ModelCatalog, blobs: BlobStore
) -> None:
    loaded = hf_folder(tmp_path / "src-model")
    manifest = catalog.pull(str(tmp_path / "src-model"))

    assert manifest["name"] == "src-model"
    assert manifest["source"] == f"folder:{tmp_path / 'src-model'}"
    assert manifest["model_type"] == "llama"
    assert manifest["config"]["vocab_size"] == 259  # the byte chat tokenizer's
    assert manifest["num_parameters"] == sum(t.numel() for t in unique_state(loaded.model).values())
    files = manifest["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    snapshot = catalog.root / "src-model" / "files"
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(files)
    for path, sha in files.items():
        assert blobs.exists(sha), path
        assert hashlib.sha256(blobs.read(sha)).hexdigest() == sha
        assert (snapshot / path).resolve() == blobs.path(sha).resolve()
    assert catalog.manifest("src-model") == as_json(manifest)
    # The stored weights are the folder's weights.
    stored = load_file(str(blobs.path(files["model.safetensors"])))
    original = load_file(str(tmp_path / "src-model" / "model.safetensors"))
    assert stored.keys() == original.keys()
    for name in original:
        torch.testing.assert_close(stored[name], original[name], rtol=0, atol=0)


def test_a_pulled_snapshot_loads_with_transformers_and_gives_the_same_logits(
    tmp_path: Path, catalog: ModelCatalog
) -> None:
    loaded = hf_folder(tmp_path / "src")
    catalog.pull(str(tmp_path / "src"))

    folder = catalog.root / "src" / "files"
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(logits(model), logits(loaded.model), rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.encode("hi") == loaded.tokenizer.encode("hi")
    assert catalog.tokenizer("src").encode("héllo") == loaded.tokenizer.encode("héllo")


def test_list_shows_pulled_pullable_and_preset_models(
    tmp_path: Path, catalog: ModelCatalog
) -> None:
    hf_folder(tmp_path / "mine")
    catalog.pull(str(tmp_path / "mine"))
    rows = {row["name"]: row for row in catalog.list()}

    assert len(rows) == len(catalog.list())  # one row a name
    assert rows["mine"]["status"] == "ready"
    assert rows["mine"]["family"] == "llama"
    assert rows["mine"]["num_parameters"] > 0
    assert rows["mine"]["source"].startswith("folder:")
    for name, entry in CATALOG.items():
        offline = gguf_in_package(entry) is not None
        assert rows[name]["status"] == ("pullable" if offline else "pullable-online")
        assert rows[name]["num_parameters"] is None
    # gpt2 is in no installed package: only the hub has it.
    assert rows["gpt2"] == {
        "name": "gpt2",
        "status": "pullable-online",
        "family": None,
        "num_parameters": None,
        "source": "hub:openai-community/gpt2",
        "description": CATALOG["gpt2"].description,
    }
    for name, config in PRESETS.items():
        assert rows[name]["status"] == "ready"
        assert rows[name]["family"] == config["model_type"]
        assert rows[name]["source"] == "preset (random init)"
    assert set(rows) == {"mine", *CATALOG, *PRESETS}


def test_list_of_an_empty_catalog_has_no_snapshots(catalog: ModelCatalog) -> None:
    rows = catalog.list()
    assert {row["name"] for row in rows} == {*CATALOG, *PRESETS}
    assert not catalog.root.exists()


def test_resolve_a_pulled_model_names_its_safetensors_blobs(
    tmp_path: Path, catalog: ModelCatalog, blobs: BlobStore
) -> None:
    loaded = hf_folder(tmp_path / "src")
    manifest = catalog.pull(str(tmp_path / "src"))

    base = catalog.resolve("src", seed=0, chat=True)
    assert base.name == "src"
    assert base.config == as_json(manifest)["config"]
    assert base.weight_sha256s == [manifest["files"]["model.safetensors"]]
    assert all(blobs.exists(sha) for sha in base.weight_sha256s)
    # The seed only seeds presets: a snapshot's weights are its own.
    torch.testing.assert_close(logits(base.model), logits(loaded.model), rtol=0, atol=0)


def test_resolve_a_catalog_model_that_is_not_pulled_says_how_to_pull_it(
    catalog: ModelCatalog,
) -> None:
    with pytest.raises(ConfigError, match="swarm models pull gpt2"):
        catalog.resolve("gpt2", seed=0, chat=True)
    with pytest.raises(ConfigError, match="swarm models pull smollm2-135m-instruct"):
        catalog.resolve("smollm2-135m-instruct", seed=0, chat=False)


@pytest.mark.parametrize("name", ["no-such-model", "../x", "a/b", "", "..", ".hidden", "x" * 200])
def test_resolve_unknown_and_hostile_names_is_a_config_error(
    tmp_path: Path, catalog: ModelCatalog, name: str
) -> None:
    hf_folder(tmp_path / "src")
    catalog.pull(str(tmp_path / "src"))
    (catalog.root / "x").mkdir()  # a folder `../x` could reach from a snapshot's folder
    with pytest.raises(ConfigError):
        catalog.resolve(name, seed=0, chat=True)


@pytest.mark.parametrize("name", ["../x", "a/b", "", "..", ".pull-x"])
def test_hostile_names_are_refused_everywhere(
    tmp_path: Path, catalog: ModelCatalog, name: str
) -> None:
    loaded = hf_folder(tmp_path / "src")
    with pytest.raises(ConfigError, match="model name"):
        catalog.manifest(name)
    with pytest.raises(ConfigError, match="model name"):
        catalog.pull(str(tmp_path / "src"), alias=name)
    with pytest.raises(ConfigError, match="model name"):
        catalog.add(
            LoadedModel(
                name=name,
                source="test",
                config=loaded.config,
                model=loaded.model,
                tokenizer=loaded.tokenizer,
            )
        )
    assert not catalog.root.exists() or list(catalog.root.iterdir()) == []
    assert not (tmp_path / "data" / "x").exists()


def test_tokenizer_of_an_unknown_model_is_not_found(catalog: ModelCatalog) -> None:
    with pytest.raises(NotFoundError):
        catalog.tokenizer("no-such-model")


def test_pulling_a_preset_is_refused(catalog: ModelCatalog) -> None:
    with pytest.raises(ConfigError, match="preset"):
        catalog.pull("micro-llama")
    assert not catalog.root.exists()
    assert catalog.manifest("micro-llama") is None


def test_pulling_an_unknown_source_is_a_config_error(tmp_path: Path, catalog: ModelCatalog) -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        catalog.pull(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"config\.json"):
        catalog.pull(str(tmp_path / "empty"))
    assert not catalog.root.exists() or list(catalog.root.iterdir()) == []


def test_pulling_twice_replaces_the_snapshot_cleanly(
    tmp_path: Path, catalog: ModelCatalog, blobs: BlobStore
) -> None:
    hf_folder(tmp_path / "src", seed=1)
    first = catalog.pull(str(tmp_path / "src"))
    newer = hf_folder(tmp_path / "src", seed=2)
    second = catalog.pull(str(tmp_path / "src"))

    assert second["files"]["model.safetensors"] != first["files"]["model.safetensors"]
    assert catalog.manifest("src") == as_json(second)
    assert [p.name for p in catalog.root.iterdir()] == ["src"]  # no staging folders left
    snapshot = catalog.root / "src" / "files"
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(second["files"])
    assert (snapshot / "model.safetensors").resolve() == blobs.path(
        second["files"]["model.safetensors"]
    ).resolve()
    model = AutoModelForCausalLM.from_pretrained(snapshot)
    torch.testing.assert_close(logits(model), logits(newer.model), rtol=0, atol=0)
    assert catalog.resolve("src", seed=0, chat=True).weight_sha256s == [
        second["files"]["model.safetensors"]
    ]
    assert [row["name"] for row in catalog.list()].count("src") == 1


def test_pull_as_an_alias_stores_the_snapshot_under_that_name(
    tmp_path: Path, catalog: ModelCatalog
) -> None:
    hf_folder(tmp_path / "src")
    manifest = catalog.pull(str(tmp_path / "src"), alias="my-model_v1.0")
    assert manifest["name"] == "my-model_v1.0"
    assert [p.name for p in catalog.root.iterdir()] == ["my-model_v1.0"]
    assert catalog.manifest("src") is None
    assert catalog.resolve("my-model_v1.0", seed=0, chat=True).weight_sha256s == [
        manifest["files"]["model.safetensors"]
    ]


def test_a_folder_with_an_unusual_name_is_stored_under_a_plain_one(
    tmp_path: Path, catalog: ModelCatalog
) -> None:
    hf_folder(tmp_path / "My Model (v2)")
    manifest = catalog.pull(str(tmp_path / "My Model (v2)"))
    assert manifest["name"] == "My-Model--v2-"
    assert catalog.manifest("My-Model--v2-") == as_json(manifest)


def test_cli_pull_as_alias_then_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWARM_DATA_DIR", raising=False)
    hf_folder(tmp_path / "src")
    data_dir = tmp_path / "cli-data"
    args = ["models", "--data-dir", str(data_dir)]

    assert swarm_main([*args, "pull", str(tmp_path / "src"), "--as", "renamed"]) == 0
    assert "jobs can now use --model renamed" in capsys.readouterr().out
    assert (data_dir / "models" / "renamed" / "manifest.json").is_file()

    assert swarm_main([*args, "list"]) == 0
    listed = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed["renamed"] == "ready"
    assert listed["gpt2"] == "pullable-online"
    assert listed["micro-llama"] == "ready"
    assert "src" not in listed

    assert swarm_main([*args, "pull", "tiny-llama"]) == 1
    assert "preset" in capsys.readouterr().err


def test_a_damaged_manifest_says_to_pull_again(tmp_path: Path, catalog: ModelCatalog) -> None:
    hf_folder(tmp_path / "src")
    catalog.pull(str(tmp_path / "src"))
    (catalog.root / "src" / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="pull it again"):
        catalog.resolve("src", seed=0, chat=True)


def test_a_snapshot_named_like_a_preset_is_refused_or_used(
    tmp_path: Path, catalog: ModelCatalog
) -> None:
    hf_folder(tmp_path / "src")
    try:
        manifest = catalog.pull(str(tmp_path / "src"), alias="tiny-llama")
    except ConfigError:
        return  # refusing the name is a fine answer
    base = catalog.resolve("tiny-llama", seed=0, chat=True)
    assert base.weight_sha256s == [manifest["files"]["model.safetensors"]]
