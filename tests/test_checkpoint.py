"""Checkpoint formats round-trip exactly; bad checkpoints fail with messages naming the problem."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from videomla import checkpoint as ckpt
from videomla.checkpoint import (
    CheckpointError,
    export_diffusers,
    from_diffusers_key,
    load_metadata,
    load_model,
    read_checkpoint,
    save_model,
    to_diffusers_key,
)
from videomla.cli import main
from videomla.config import preset
from videomla.model import CausalWanModel

from conftest import tiny_model

TINY = preset("tiny")
WAN_FILE = "diffusion_pytorch_model.safetensors"


# -- writers of the foreign formats, as their projects lay them out ------------------------------
def write_wan_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int = 3) -> Path:
    folder.mkdir(parents=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        save_file(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = folder / (WAN_FILE + ".index.json")
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


def fsdp_name(key: str) -> str:
    """How FSDP-wrapped blocks name a parameter inside Self-Forcing's ``model``."""
    return "model._fsdp_wrapped_module." + re.sub(r"^(blocks\.\d+\.)", r"\1_fsdp_wrapped_module.", key)


def write_self_forcing(path: Path, generator: CausalWanModel, ema: CausalWanModel | None, fsdp: bool = False) -> None:
    name = fsdp_name if fsdp else (lambda k: "model." + k)
    obj = {"generator": {name(k): v for k, v in generator.state_dict().items()}, "critic": {"x": torch.zeros(1)}}
    if ema is not None:
        obj["generator_ema"] = {name(k): v for k, v in ema.state_dict().items()}
    torch.save(obj, path)


# -- checks --------------------------------------------------------------------------------------
def outputs(model: CausalWanModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    c, dtype = model.config, next(model.parameters()).dtype
    x = torch.randn(1, c.in_channels, 3, 4, 6, generator=gen).to(dtype)
    t = torch.rand(1, generator=gen) * 1000
    context = torch.randn(1, 5, c.text_dim, generator=gen).to(dtype)
    with torch.no_grad():
        return model(x, t, context)


def assert_same_model(loaded: CausalWanModel, original: CausalWanModel) -> None:
    assert loaded.config == original.config
    a, b = loaded.state_dict(), original.state_dict()
    assert a.keys() == b.keys()
    for k in b:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(outputs(loaded), outputs(original))


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [TINY, TINY.with_mla(), TINY.with_mla(layers=(1,))], ids=["dense", "mla", "mixed"])
def test_videomla_format_round_trip(seed, tmp_path, cfg):
    model = tiny_model(cfg)
    meta = {"codec": {"kind": "pixel", "factor": 2}, "text_encoder": {"name": "hash"}, "stream": {"sink_frames": 1}}
    out = save_model(model, tmp_path / "ckpt", metadata=meta)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_model(load_model(out), model)
    stored = load_metadata(out)
    assert stored == {"format": "videomla", "format_version": 1, **meta}
    state, cfg_read, metadata = read_checkpoint(out)
    assert cfg_read == cfg and metadata == stored and state.keys() == model.state_dict().keys()


def test_videomla_format_keeps_dtypes_and_casts_on_request(seed, tmp_path):
    model = tiny_model(dtype=torch.bfloat16)
    out = save_model(model, tmp_path / "bf16")
    assert_same_model(load_model(out), model)
    assert {p.dtype for p in load_model(out, dtype=torch.float32).parameters()} == {torch.float32}


@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "file"])
def test_wan_single_file_round_trip(seed, tmp_path, as_file):
    model = tiny_model()
    save_file(model.state_dict(), tmp_path / WAN_FILE)
    loaded = load_model(tmp_path / WAN_FILE if as_file else tmp_path, preset="tiny")
    assert_same_model(loaded, model)
    assert load_metadata(tmp_path) == {"format": "wan2.1"}


@pytest.mark.parametrize("via_index", [False, True], ids=["folder", "index"])
def test_wan_sharded_round_trip(seed, tmp_path, via_index):
    model = tiny_model()
    index = write_wan_sharded(model.state_dict(), tmp_path / "wan")
    assert_same_model(load_model(index if via_index else index.parent, preset="tiny"), model)


def test_wan_folder_config_json_gives_heads(seed, tmp_path):
    """The original release ships config.json (class WanModel): heads and eps come from it, the rest from shapes."""
    model = tiny_model()
    save_file(model.state_dict(), tmp_path / WAN_FILE)
    wan_config = {"_class_name": "WanModel", "model_type": "t2v", "dim": 64, "num_heads": 2, "eps": 1e-6}
    (tmp_path / "config.json").write_text(json.dumps(wan_config))
    assert_same_model(load_model(tmp_path), model)


def test_sharded_index_naming_absent_tensors(seed, tmp_path):
    index = write_wan_sharded(tiny_model().state_dict(), tmp_path / "wan")
    data = json.loads(index.read_text())
    data["weight_map"]["blocks.9.ghost.weight"] = next(iter(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"blocks\.9\.ghost\.weight"):
        load_model(index.parent, preset="tiny")


@pytest.mark.parametrize("fsdp", [False, True], ids=["plain", "fsdp"])
def test_self_forcing_generator_and_ema(seed, tmp_path, fsdp):
    generator, ema = tiny_model(), tiny_model()
    path = tmp_path / "self_forcing.pt"
    write_self_forcing(path, generator, ema, fsdp)
    assert_same_model(load_model(path, preset="tiny"), ema)  # auto = EMA when present
    assert_same_model(load_model(path, preset="tiny", which="ema"), ema)
    assert_same_model(load_model(path, preset="tiny", which="generator"), generator)
    assert read_checkpoint(path)[2] == {"format": "torch", "state": "generator_ema"}


def test_self_forcing_without_ema(seed, tmp_path):
    generator = tiny_model()
    path = tmp_path / "early.pt"
    write_self_forcing(path, generator, None)
    assert_same_model(load_model(path, preset="tiny"), generator)
    with pytest.raises(CheckpointError, match="no 'generator_ema'"):
        load_model(path, preset="tiny", which="ema")


def test_plain_and_comfyui_state_dicts(seed, tmp_path):
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    assert_same_model(load_model(tmp_path / "plain.pth", preset="tiny"), model)
    comfy = {"model.diffusion_model." + k: v for k, v in model.state_dict().items()}
    save_file(comfy, tmp_path / "comfy.safetensors")
    assert_same_model(load_model(tmp_path / "comfy.safetensors", preset="tiny"), model)
    with pytest.raises(CheckpointError, match="plain state dict"):
        load_model(tmp_path / "plain.pth", preset="tiny", which="generator")
    with pytest.raises(CheckpointError, match="which='ema'"):
        load_model(tmp_path / "comfy.safetensors", preset="tiny", which="ema")


@pytest.mark.parametrize("shard", [None, "20KB"], ids=["single", "sharded"])
def test_diffusers_folder_from_save_pretrained(seed, tmp_path, shard):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.WanTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=128,
        num_layers=2,
    )
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p))
    kwargs = {} if shard is None else {"max_shard_size": shard}
    ref.save_pretrained(tmp_path / "diffusers", **kwargs)
    assert (tmp_path / "diffusers" / (WAN_FILE + ".index.json")).exists() == (shard is not None)
    model = load_model(tmp_path / "diffusers")
    assert model.config == TINY and load_metadata(tmp_path / "diffusers") == {"format": "diffusers"}
    theirs = ref.state_dict()
    ours = model.state_dict()
    assert {to_diffusers_key(k) for k in ours} == set(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[from_diffusers_key(k)], v), k


def test_key_mapping_is_a_bijection_with_the_swapped_norms():
    keys = CausalWanModel(TINY).state_dict().keys()
    mapped = {to_diffusers_key(k) for k in keys}
    assert len(mapped) == len(keys) and all(from_diffusers_key(to_diffusers_key(k)) == k for k in keys)
    assert to_diffusers_key("blocks.3.norm3.weight") == "blocks.3.norm2.weight"
    assert from_diffusers_key("blocks.3.norm2.bias") == "blocks.3.norm3.bias"
    assert to_diffusers_key("head.modulation") == "scale_shift_table"
    assert to_diffusers_key("blocks.0.modulation") == "blocks.0.scale_shift_table"
    assert to_diffusers_key("blocks.0.self_attn.o.weight") == "blocks.0.attn1.to_out.0.weight"
    assert to_diffusers_key("blocks.0.cross_attn.norm_k.weight") == "blocks.0.attn2.norm_k.weight"


def test_export_diffusers_refuses_mla(tmp_path):
    with pytest.raises(CheckpointError, match=r"no MLA attention; layers \[1\]"):
        export_diffusers(tiny_model(TINY.with_mla(layers=(1,))), tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- config resolution ---------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [None, (0,)], ids=["mla", "mixed"])
def test_mla_config_inferred_from_keys(seed, tmp_path, layers):
    """No config in the file: MLA layers and dims come from the keys, heads from q_rope / k_rope."""
    model = tiny_model(TINY.with_mla(layers=layers))
    save_file(model.state_dict(), tmp_path / "mla.safetensors")
    assert_same_model(load_model(tmp_path / "mla.safetensors"), model)
    assert_same_model(load_model(tmp_path / "mla.safetensors", preset="tiny"), model)  # preset + detected MLA


def test_heads_are_ambiguous_without_a_preset(seed, tmp_path):
    save_file(tiny_model().state_dict(), tmp_path / "dense.safetensors")
    with pytest.raises(CheckpointError, match="number of attention heads of a dim-64 model"):
        load_model(tmp_path / "dense.safetensors")


def test_stored_config_must_agree_with_a_given_one(seed, tmp_path):
    out = save_model(tiny_model(), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"dim 64 \(checkpoint\) vs 1536"):
        load_model(out, preset="wan2.1-t2v-1.3b")
    with pytest.raises(CheckpointError, match=r"num_layers 2 \(checkpoint\) vs 3"):
        load_model(out, config=dataclasses.replace(TINY, num_layers=3))
    with pytest.raises(ValueError, match="either preset or config"):
        load_model(out, preset="tiny", config=TINY)


# -- bad checkpoints -----------------------------------------------------------------------------
def saved_state(tmp_path: Path, edit) -> Path:
    state = tiny_model().state_dict()
    edit(state)
    tmp_path.mkdir(exist_ok=True)
    save_file(state, tmp_path / WAN_FILE)
    return tmp_path


def test_missing_key_is_named(tmp_path):
    path = saved_state(tmp_path, lambda s: (s.pop("blocks.1.ffn.2.weight"), s.pop("head.modulation")))
    with pytest.raises(CheckpointError) as err:
        load_model(path, preset="tiny")
    msg = str(err.value)
    assert "2 missing keys: blocks.1.ffn.2.weight, head.modulation" in msg
    assert "preset 'tiny'" in msg and str(path) in msg and "unexpected" not in msg


def test_unexpected_key_is_named(tmp_path):
    path = saved_state(tmp_path, lambda s: s.update({"blocks.0.lora_A.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: blocks\.0\.lora_A\.weight"):
        load_model(path, preset="tiny")


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    path = saved_state(tmp_path, lambda s: s.update({"blocks.0.ffn.0.weight": torch.zeros(256, 64)}))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.0\.weight expected \(128, 64\) found \(256, 64\)"):
        load_model(path, preset="tiny")


def test_long_key_lists_are_cut_with_a_count(tmp_path):
    path = saved_state(tmp_path, lambda s: [s.pop(k) for k in list(s) if k.startswith("blocks.1.")])
    with pytest.raises(CheckpointError) as err:
        load_model(path, preset="tiny")
    assert "missing keys: blocks.1." in str(err.value) and "more" in str(err.value)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_truncated_file_names_the_file(seed, tmp_path, name):
    path = tmp_path / name
    model = tiny_model()
    if name.endswith(".pt"):
        torch.save({"generator": model.state_dict()}, path)
    else:
        save_file(model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path} is truncated"):  # found from the header, before reading
        load_model(path, preset="tiny")


def test_unknown_formats_list_the_accepted_ones(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "notes.txt", tmp_path):
        with pytest.raises(CheckpointError) as err:
            load_model(path, preset="tiny")
        msg = str(err.value)
        assert "cannot tell the checkpoint format" in msg and str(path) in msg
        assert "diffusers WanTransformer3DModel folder" in msg and ".pt/.pth" in msg
    assert "notes.txt" in msg  # the folder's listing
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_model(tmp_path / "absent")


def test_corrupt_config_json_names_the_file(seed, tmp_path):
    out = save_model(tiny_model(), tmp_path / "ckpt")
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cannot read .*config\.json"):
        load_model(out)


# -- atomic saving -------------------------------------------------------------------------------
def test_crash_mid_write_keeps_the_old_checkpoint(seed, tmp_path, monkeypatch):
    old = tiny_model()
    out = save_model(old, tmp_path / "ckpt", metadata={"step": 1})

    def crash(state, file, metadata=None):
        Path(file).write_bytes(b"partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_model(), out, metadata={"step": 2})
    monkeypatch.undo()
    assert_same_model(load_model(out), old)
    assert load_metadata(out)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folder left behind


def test_overwrite_replaces_and_refuses_foreign_folders(seed, tmp_path):
    out = save_model(tiny_model(), tmp_path / "ckpt", metadata={"step": 1})
    newer = tiny_model()
    save_model(newer, out, metadata={"step": 2})
    assert_same_model(load_model(out), newer)
    assert load_metadata(out)["step"] == 2 and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff")
    with pytest.raises(CheckpointError, match=r"refusing to replace .*\['cat.jpg'\]"):
        save_model(newer, tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").exists()


def test_reserved_and_unserialisable_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"reserved"):
        save_model(tiny_model(), tmp_path / "a", metadata={"model": {}})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_model(tiny_model(), tmp_path / "b", metadata={"codec": torch.zeros(1)})
    assert not list(tmp_path.iterdir())


def test_saved_tensors_are_contiguous_copies(seed, tmp_path):
    """A transposed (non-contiguous) parameter still saves and loads to the same values."""
    model = tiny_model()
    with torch.no_grad():
        w = model.blocks[0].ffn[0].weight
        model.blocks[0].ffn[0].weight = torch.nn.Parameter(w.t().contiguous().t())
    assert not model.blocks[0].ffn[0].weight.is_contiguous()
    assert_same_model(load_model(save_model(model, tmp_path / "c")), model)


# -- CLI -----------------------------------------------------------------------------------------
def test_info_cli_describes_a_checkpoint(seed, tmp_path, capsys):
    model = tiny_model(TINY.with_mla(layers=(1,)))
    out = save_model(model, tmp_path / "ckpt", metadata={"codec": {"kind": "pixel"}})
    assert main(["info", "--checkpoint", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["mla_layers"] == [1]
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["checkpoint"]["metadata"]["codec"] == {"kind": "pixel"}
    assert main(["info", "--checkpoint", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MLA in 1/2 layers" in text and "metadata: codec" in text
    bad = saved_state(tmp_path / "bad", lambda s: s.pop("head.head.bias"))
    assert main(["info", "--checkpoint", str(bad), "--preset", "tiny"]) == 2
    assert "head.head.bias" in capsys.readouterr().err


def test_meta_built_models_have_real_rope_tables():
    """Loading builds the model on the meta device; its RoPE frequencies must stay real tensors."""
    with torch.device("meta"):
        model = CausalWanModel(TINY)
    assert model.blocks[0].self_attn.rotary.freqs[0].device.type == "cpu"
    assert ckpt.expected_shapes(TINY)["head.modulation"] == (1, 2, 64)


# -- sharded videomla models ------------------------------------------------------------------------
def test_sharded_save_round_trips_and_replaces_either_layout(seed, tmp_path):
    """Shards under the cap, an index naming every tensor, the same model and metadata back."""
    model = tiny_model(TINY.with_mla(layers=(1,)))
    state = model.state_dict()
    cap = max(t.numel() * t.element_size() for t in state.values()) + 1
    out = save_model(model, tmp_path / "m", metadata={"codec": {"kind": "pixel"}}, max_shard_bytes=cap)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert all(re.fullmatch(rf"model-\d{{5}}-of-{len(shards):05d}\.safetensors", n) for n in shards)
    for name in shards:  # each shard's tensors fit under the cap
        held = read_checkpoint(out / name)[0]
        assert sum(t.numel() * t.element_size() for t in held.values()) <= cap
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(shards)
    assert_same_model(load_model(out), model)
    assert load_metadata(out)["codec"] == {"kind": "pixel"}
    assert_same_model(load_model(save_model(model, out)), model)  # single file replaces the shards
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    save_model(model, out, max_shard_bytes=cap)  # and shards replace the single file
    assert not (out / "model.safetensors").exists()
    with pytest.raises(ValueError, match="max_shard_bytes"):
        save_model(model, tmp_path / "z", max_shard_bytes=0)


def test_sharded_save_with_a_missing_shard_or_index_is_named(seed, tmp_path):
    model = tiny_model()
    out = save_model(model, tmp_path / "m", max_shard_bytes=4096)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=rf"missing: .*{victim.name}"):
        load_model(out)
    (out / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor model\.safetensors\.index\.json"):
        load_model(out)
