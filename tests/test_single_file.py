"""Single-file checkpoints (original LDM layout): write, read offline, round-trip outputs, key
names per family, pickle policy, clear errors. Tiny models built in code; no network."""
from __future__ import annotations

import json
import socket
import struct

import pytest
import torch

from sdlora.config.schema import ModelSection
from sdlora.errors import ModelError
from sdlora.models.loading import load_base_model, resolve_model_path
from sdlora.models.single_file import load_single_file, write_single_file
from sdlora.models.single_file.convert import convert_model, load_diffusers_pipeline
from sdlora.models.tiny import build_tiny_pipeline, save_tiny_model

FAMILIES = ("sd15", "sd2-v", "sdxl")
TOLERANCE = 1e-6

# Names as the original layout has them (SD1.5 / SD2.1 / SDXL base files); the tiny models keep
# the real block numbering (2 levels, 2 layers per block), so these exact names must exist.
KNOWN_KEYS = {
    "common": [
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.time_embed.2.bias",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.0.out_layers.3.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.middle_block.2.in_layers.2.weight",
        "model.diffusion_model.output_blocks.0.0.skip_connection.weight",
        "model.diffusion_model.out.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.conv_in.weight",
        "first_stage_model.encoder.down.0.block.0.norm1.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.block_1.conv1.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.encoder.mid.attn_1.proj_out.weight",
        "first_stage_model.encoder.norm_out.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.decoder.mid.block_2.conv2.weight",
        "first_stage_model.quant_conv.weight",
        "first_stage_model.post_quant_conv.weight",
    ],
    "sd15": [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.ff.net.0.proj.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ],
    "sd2-v": [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "cond_stage_model.model.token_embedding.weight",
        "cond_stage_model.model.positional_embedding",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias",
        "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight",
        "cond_stage_model.model.transformer.resblocks.1.ln_1.weight",
        "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight",
        "cond_stage_model.model.transformer.resblocks.1.mlp.c_proj.bias",
        "cond_stage_model.model.transformer.resblocks.2.ln_2.bias",  # the unused last layer SD2 files hold
        "cond_stage_model.model.ln_final.weight",
        "cond_stage_model.model.text_projection",
    ],
    "sdxl": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.bias",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.1.self_attn.out_proj.weight",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_proj.weight",
        "conditioner.embedders.1.model.token_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.ln_final.bias",
        "conditioner.embedders.1.model.text_projection",
    ],
}
DIFFUSERS_ONLY_PARTS = ("down_blocks", "up_blocks", "mid_block", "resnets", "time_embedding", "conv_norm_out",
                        "group_norm", "downsamplers", "add_embedding")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """{family: (diffusers folder, single file written from it by `convert`)}."""
    root = tmp_path_factory.mktemp("single")
    files = {}
    for family in FAMILIES:
        folder = save_tiny_model(root / family, family)
        path = root / f"{family}.safetensors"
        convert_model(str(folder), path)
        files[family] = folder, path
    return files


def _keys(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys()), handle.metadata()


def _outputs(parts: dict, family: str) -> dict:
    """UNet, VAE and text-encoder outputs on fixed inputs."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])
        out["text_encoder"] = parts["text_encoder"](ids, output_hidden_states=True).hidden_states[-1]
        if "text_encoder_2" in parts:
            te2 = parts["text_encoder_2"](ids, output_hidden_states=True)
            out["text_encoder_2"], out["text_encoder_2.text_embeds"] = te2.hidden_states[-2], te2.text_embeds
        image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
        latents = parts["vae"].encode(image).latent_dist.mean
        out["vae.encode"], out["vae.decode"] = latents, parts["vae"].decode(latents).sample
        unet = parts["unet"]
        context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen)
        extra = {}
        if family == "sdxl":
            extra["added_cond_kwargs"] = {
                "text_embeds": torch.randn(1, parts["text_encoder_2"].config.projection_dim, generator=gen),
                "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
            }
        out["unet"] = unet(torch.randn(1, 4, 8, 8, generator=gen), 500, context, **extra).sample
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_outputs_are_identical_offline(family, tiny_files, no_network):
    folder, path = tiny_files[family]
    reference = load_diffusers_pipeline(folder).components
    loaded = load_single_file(path)
    assert (loaded.family, loaded.prediction_type) == (family, "v_prediction" if family == "sd2-v" else "epsilon")
    assert set(loaded.config_sources.values()) == {"metadata"}
    diffs = {}
    expected, got = _outputs(reference, family), _outputs(loaded.components, family)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        diffs[name] = (got[name] - value).abs().max().item()
    print(family, diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in reference:  # the weights themselves come back bit-exact
            ref, new = reference[name].state_dict(), loaded.components[name].state_dict()
            assert ref.keys() == new.keys()
            assert all(torch.equal(ref[k], new[k]) for k in ref), name
    tokens = loaded.components["tokenizer"]("a photo of a cat").input_ids
    assert tokens == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert type(loaded.components["scheduler"]) is type(reference["scheduler"])


@pytest.mark.parametrize("family", FAMILIES)
def test_written_keys_follow_the_original_layout(family, tiny_files):
    keys, metadata = _keys(tiny_files[family][1])
    missing = [k for k in KNOWN_KEYS["common"] + KNOWN_KEYS[family] if k not in keys]
    assert not missing, missing
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model." if family != "sdxl" else "conditioner.")
    assert all(k.startswith(prefixes) for k in keys)
    assert not [k for k in keys if any(f".{part}." in f".{k}." for part in DIFFUSERS_ONLY_PARTS)]
    if family != "sd15":
        assert not [k for k in keys if ".model." in k and any(f"{p}_proj" in k for p in "qkv")]  # OpenCLIP fuses q/k/v
    assert metadata["modelspec.architecture"] == {
        "sd15": "stable-diffusion-v1", "sd2-v": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base"
    }[family]
    assert json.loads(metadata["sdlora.config.unet"])["block_out_channels"] == [32, 64]


def test_vae_attention_is_stored_as_1x1_convolutions(tiny_files):
    from safetensors import safe_open

    with safe_open(str(tiny_files["sd15"][1]), framework="pt") as handle:
        assert handle.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape() == [32, 32, 1, 1]
        assert handle.get_slice("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight").get_shape() == [49408, 32]


def test_sd2_file_keeps_a_padding_layer_that_loading_drops(tiny_files):
    keys, _ = _keys(tiny_files["sd2-v"][1])
    layers = {int(k.split(".")[4]) for k in keys if ".resblocks." in k}
    assert layers == {0, 1, 2}  # tiny SD2 text encoder: 2 layers + the unused last one, as in real files (24 vs 23)
    assert load_single_file(tiny_files["sd2-v"][1]).components["text_encoder"].config.num_hidden_layers == 2


def test_without_sdlora_metadata_configs_are_inferred_from_shapes(tmp_path):
    pipe = build_tiny_pipeline("sdxl")
    path = write_single_file(pipe, tmp_path / "plain.safetensors", embed_configs=False)
    loaded = load_single_file(path)
    assert set(loaded.config_sources.values()) == {"inferred", "shipped"}  # scheduler: shipped
    unet, original = loaded.components["unet"].config, pipe.unet.config
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "cross_attention_dim",
                "use_linear_projection", "transformer_layers_per_block", "addition_embed_type",
                "addition_time_embed_dim", "projection_class_embeddings_input_dim", "in_channels"):
        assert json.dumps(unet[key], default=list) == json.dumps(original[key], default=list), key
    te2 = loaded.components["text_encoder_2"].config
    assert (te2.hidden_size, te2.num_hidden_layers, te2.intermediate_size, te2.projection_dim) == (32, 2, 37, 32)
    assert list(loaded.components["vae"].config.block_out_channels) == [16, 32, 32, 32]
    for name in ("unet", "vae", "text_encoder_2"):  # every weight found its place (strict load)
        ref, new = getattr(pipe, name).state_dict(), loaded.components[name].state_dict()
        assert all(torch.equal(ref[k], new[k]) for k in ref)


def test_sd2_prediction_type_from_option_or_metadata(tmp_path):
    pipe = build_tiny_pipeline("sd2-v")
    plain = write_single_file(pipe, tmp_path / "sd2.safetensors", embed_configs=False)
    _strip_metadata(plain, drop=("sdlora.prediction_type", "modelspec.prediction_type", "modelspec.architecture"))
    assert load_single_file(plain).family == "sd2-v"  # SD2 without a word: 768-v, as diffusers assumes
    forced = load_single_file(plain, prediction_type="epsilon")
    assert (forced.family, forced.components["scheduler"].config.prediction_type) == ("sd2", "epsilon")
    assert load_single_file(plain, family="sd2").prediction_type == "epsilon"
    _strip_metadata(plain, add={"modelspec.prediction_type": "epsilon"})
    assert load_single_file(plain).family == "sd2"
    with pytest.raises(ModelError, match="holds an sd2 checkpoint"):
        load_single_file(plain, family="sdxl")


def _strip_metadata(path, drop=(), add=None):
    from safetensors.torch import load_file, save_file

    from sdlora.models.single_file import read_metadata

    metadata = {k: v for k, v in read_metadata(path).items() if k not in drop}
    metadata.update(add or {})
    save_file(load_file(str(path)), str(path), metadata=metadata)


def test_load_base_model_accepts_single_files(tiny_files, no_network):
    base = load_base_model(ModelSection(path=str(tiny_files["sd2-v"][1])))
    assert (base.family, base.prediction_type, base.noise_scheduler.config.prediction_type) == (
        "sd2-v", "v_prediction", "v_prediction")
    assert type(base.noise_scheduler).__name__ == "DDPMScheduler"
    assert base.tokenizer.pad_token_id == 0  # OpenCLIP pads with '!'
    xl = load_base_model(ModelSection(path=str(tiny_files["sdxl"][1])))
    assert xl.family == "sdxl" and xl.text_encoder_2 is not None and xl.tokenizer_2.pad_token == "!"
    from sdlora.models.family import detect_family
    from sdlora.sample import inference_pipeline

    assert [detect_family(tiny_files[f][1]) for f in FAMILIES] == list(FAMILIES)
    assert type(inference_pipeline(base).scheduler).__name__ == "DDIMScheduler"


def test_ckpt_is_refused_by_default_and_read_weights_only_when_allowed(tiny_files, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(tiny_files["sd15"][1]))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 1}, ckpt)
    with pytest.raises(ModelError, match="allow_pickle") as refused:
        resolve_model_path(str(ckpt))
    assert "sdlora convert" in str(refused.value)
    with pytest.raises(ModelError, match="pickle"):
        load_single_file(ckpt)
    base = load_base_model(ModelSection(path=str(ckpt), allow_pickle=True))
    assert base.family == "sd15"
    reference = load_single_file(tiny_files["sd15"][1]).components["unet"].state_dict()
    assert all(torch.equal(v, base.unet.state_dict()[k]) for k, v in reference.items())

    class Payload:  # any object beyond tensors and plain containers is refused by weights_only
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "x": Payload()}, evil)
    with pytest.raises(ModelError, match="weights-only"):
        load_single_file(evil, allow_pickle=True)


def test_malformed_files_give_clear_errors(tiny_files, tmp_path):
    data = tiny_files["sd15"][1].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or damaged"):
        load_single_file(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(ModelError, match="not a readable .safetensors"):
        load_base_model(ModelSection(path=str(garbage)))
    from safetensors.torch import save_file

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(ModelError, match="not a Stable Diffusion checkpoint.*LoRA"):
        load_single_file(lora)
    text = tmp_path / "model.txt"
    text.write_text("x")
    with pytest.raises(ModelError, match="not a model sdlora can read"):
        resolve_model_path(str(text))


def test_convert_cli_both_directions_and_user_errors(tiny_files, tmp_path, capsys):
    from sdlora.cli import main

    folder, path = tiny_files["sd15"]
    assert main(["convert", str(path), "-o", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model_index.json").is_file()
    assert main(["convert", str(tmp_path / "back"), "-o", str(tmp_path / "again.safetensors"), "--dtype", "fp16"]) == 0
    keys, _ = _keys(tmp_path / "again.safetensors")
    assert keys == _keys(path)[0]
    half = load_single_file(tmp_path / "again.safetensors").components["unet"]
    assert next(half.parameters()).dtype == torch.float16
    assert main(["convert", str(folder), "-o", str(tmp_path / "folder_again")]) == 2
    assert main(["convert", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "already a diffusers folder" in err and "not found" in err


def test_write_is_atomic_and_checks_family(tmp_path):
    pipe = build_tiny_pipeline("sd15")
    with pytest.raises(ModelError, match="not sdxl"):
        write_single_file(pipe, tmp_path / "x.safetensors", family="sdxl")
    with pytest.raises(ModelError, match=".safetensors"):
        write_single_file(pipe, tmp_path / "x.ckpt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.slow
def test_full_size_sd15_single_file_has_the_known_shapes(tmp_path):
    """Opt-in: a random-weight SD1.5 (real architecture) written as a community-style file (no sdlora
    configs in metadata) and read back through the shipped standard configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlora.models.single_file.configs import shipped_configs

    configs = shipped_configs("sd15")
    torch.manual_seed(0)
    components = {
        "unet": UNet2DConditionModel.from_config(configs["unet"]).half(),
        "vae": AutoencoderKL.from_config(configs["vae"]).half(),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).half(),
    }
    path = write_single_file(components, tmp_path / "sd15.safetensors", "sd15", embed_configs=False)
    keys, _ = _keys(path)
    assert "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "model.diffusion_model.input_blocks.11.0.out_layers.3.weight" in keys
    loaded = load_single_file(path)
    assert set(loaded.config_sources.values()) == {"shipped"}
    unet = loaded.components["unet"]
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    expected = {
        "conv_in.weight": (320, 4, 3, 3),
        "down_blocks.0.attentions.0.proj_in.weight": (320, 320, 1, 1),
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight": (10240, 1280),
        "up_blocks.3.resnets.2.conv_shortcut.weight": (320, 640, 1, 1),
        "conv_out.weight": (4, 320, 3, 3),
    }
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert {k: shapes[k] for k in expected} == expected
    for name, module in components.items():
        ref, new = module.state_dict(), loaded.components[name].state_dict()
        assert {k: v.shape for k, v in ref.items()} == {k: v.shape for k, v in new.items()}, name
        assert all(torch.equal(ref[k], new[k]) for k in ref), name
    assert sum(p.numel() for p in loaded.components["text_encoder"].parameters()) == 123_060_480
    assert sum(p.numel() for p in loaded.components["vae"].parameters()) == 83_653_863


@pytest.mark.parametrize("family", FAMILIES)
def test_a_single_file_base_gives_the_same_check_shape_as_its_folder(family, tiny_files):
    from sdlora.export.convert import shape_for_base

    folder, path = tiny_files[family]
    from_file, from_folder = shape_for_base(str(path)), shape_for_base(str(folder))
    assert from_file.family == from_folder.family == family
    for name in from_folder.components:
        wanted = from_folder.config(name)
        got = from_file.config(name)
        keys = ("cross_attention_dim", "block_out_channels", "hidden_size", "num_hidden_layers",
                "projection_class_embeddings_input_dim", "transformer_layers_per_block")
        assert {k: got.get(k) for k in keys if k in wanted} == {k: wanted[k] for k in keys if k in wanted}, name
