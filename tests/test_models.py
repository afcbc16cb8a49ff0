"""Tests for tunesmith.models: names, local folders, parameter counts (no download)."""

import tempfile
from pathlib import Path

import pytest

from tunesmith.errors import ModelError
from tunesmith.models import (
    BUILTIN_MODELS,
    builtin_cache_dir,
    count_params,
    list_models,
    load_model,
    resolve_model,
    tunesmith_home,
)


def test_unknown_model_name_lists_builtins():
    with pytest.raises(ModelError, match="smollm2-135m") as info:
        resolve_model("no-such-model")
    assert "no-such-model" in str(info.value)


def test_load_model_unknown_name_is_model_error():
    with pytest.raises(ModelError, match="smollm2-135m"):
        load_model("no-such-model")


def test_path_without_config_json_is_model_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path))


def test_local_model_folder_resolves_to_itself(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_load_model_from_local_folder(tiny_model_dir, tiny_tokenizer):
    model = load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tiny_tokenizer)


def test_count_params_matches_loaded_model(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    # parameters() yields the tied embedding/output matrix once, as safetensors stores it.
    assert count_params(str(tiny_model_dir)) == sum(p.numel() for p in model.parameters())


def test_count_params_builtin_and_unknown(tmp_path):
    assert count_params("smollm2-135m") == BUILTIN_MODELS["smollm2-135m"].params
    assert count_params(str(tmp_path)) is None  # a folder without weights
    assert count_params("org/some-hub-model") is None


def test_list_models_includes_builtin_with_status():
    rows = {row["name"]: row for row in list_models()}
    row = rows["smollm2-135m"]
    # TUNESMITH_HOME is a temporary folder: "ready" only once another test converted it there.
    if (builtin_cache_dir("smollm2-135m") / "config.json").exists():
        assert row["status"] == "ready"
    else:
        assert row["status"] in {"converts on first use", "package missing"}
    assert str(tunesmith_home()).startswith(str(Path(tempfile.gettempdir())))
    assert row["params"] == BUILTIN_MODELS["smollm2-135m"].params
    assert row["licence"] == "Apache-2.0"
