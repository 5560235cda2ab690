"""The MDM-compatible network: official state-dict layout, both tensor layouts, classifier.

Where the expected key list comes from: the official MDM implementation,
https://github.com/GuyTevet/motion-diffusion-model, ``model/mdm.py`` (class ``MDM`` with
``arch='trans_enc'``, ``data_rep='hml_vec'``, ``njoints=263``, ``nfeats=1``, ``cond_mode='text'``,
``latent_dim=512``, ``ff_size=1024``, ``num_layers=8``, ``num_heads=4``) as it builds its modules
(``input_process.poseEmbedding``, ``sequence_pos_encoder`` with a ``pe`` buffer of 5000
positions, ``seqTransEncoder`` = ``nn.TransformerEncoder``, ``embed_timestep`` holding
``time_embed`` and the shared ``sequence_pos_encoder``, ``embed_text``,
``output_process.poseFinal``); its training loop deletes ``clip_model.*`` before saving, so
``humanml_trans_enc_512/model000475000.pt`` holds exactly the keys below. The list is written out
here by hand from that reading, not produced by our own module.
"""

import pytest
import torch
from genneg_motion.mdm import MDM, MDMClassifier, load_mdm_checkpoint

from genneg.diffusion.vp import VPConfig, VPProcess
from genneg.testing import ClassifierContract, NetworkContract

D, FF, L, V = 512, 1024, 8, 263


def official_layout():
    keys = {
        "input_process.poseEmbedding.weight": (D, V),
        "input_process.poseEmbedding.bias": (D,),
        "sequence_pos_encoder.pe": (5000, 1, D),
        "embed_timestep.sequence_pos_encoder.pe": (5000, 1, D),
        "embed_timestep.time_embed.0.weight": (D, D),
        "embed_timestep.time_embed.0.bias": (D,),
        "embed_timestep.time_embed.2.weight": (D, D),
        "embed_timestep.time_embed.2.bias": (D,),
        "embed_text.weight": (D, 512),
        "embed_text.bias": (D,),
        "output_process.poseFinal.weight": (V, D),
        "output_process.poseFinal.bias": (V,),
    }
    for i in range(L):
        p = f"seqTransEncoder.layers.{i}."
        keys.update(
            {
                p + "self_attn.in_proj_weight": (3 * D, D),
                p + "self_attn.in_proj_bias": (3 * D,),
                p + "self_attn.out_proj.weight": (D, D),
                p + "self_attn.out_proj.bias": (D,),
                p + "linear1.weight": (FF, D),
                p + "linear1.bias": (FF,),
                p + "linear2.weight": (D, FF),
                p + "linear2.bias": (D,),
                p + "norm1.weight": (D,),
                p + "norm1.bias": (D,),
                p + "norm2.weight": (D,),
                p + "norm2.bias": (D,),
            }
        )
    return keys


MDM_PROCESS = VPProcess(VPConfig(timesteps=1000, schedule="cosine", prediction="x0"))
SMALL = {"latent_dim": 32, "ff_size": 64, "num_layers": 2, "num_heads": 4, "dropout": 0.0}


def test_state_dict_matches_the_official_layout():
    sd = MDM().state_dict()
    expected = official_layout()
    assert set(sd) == set(expected)
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    n_params = sum(p.numel() for p in MDM().parameters())
    assert n_params == pytest.approx(17.88e6, rel=1e-3)  # MDM reports 17.88M trainable


def test_an_official_style_checkpoint_loads_with_weights_only(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in official_layout().items()}
    ref = MDM().state_dict()
    state["sequence_pos_encoder.pe"] = ref["sequence_pos_encoder.pe"]
    state["embed_timestep.sequence_pos_encoder.pe"] = ref["sequence_pos_encoder.pe"]
    state["clip_model.ln_final.weight"] = torch.ones(512)  # would be skipped if present
    path = tmp_path / "model000475000.pt"
    torch.save(state, path)
    model = MDM()
    load_mdm_checkpoint(model, str(path))
    assert torch.equal(model.embed_text.weight, state["embed_text.weight"])
    bad = dict(state)
    bad["output_process.poseFinal.weight"] = torch.zeros(251, D)  # a KIT model
    torch.save(bad, path)
    with pytest.raises(RuntimeError, match="poseFinal"):
        load_mdm_checkpoint(MDM(), str(path))


def test_genneg_layout_equals_upstream_layout():
    torch.manual_seed(0)
    m = MDM(**SMALL).eval()
    x = torch.randn(3, 20, V)
    t = torch.tensor([0.0, 17.0, 999.0])
    text = torch.randn(3, 512)
    ours = m(x, t, text=text)
    theirs = m.forward_mdm(x.permute(0, 2, 1)[:, :, None], t.long(), text)
    assert theirs.shape == (3, V, 1, 20)
    assert torch.allclose(ours, theirs[:, :, 0].permute(0, 2, 1), atol=1e-6)
    # the text changes the output; an unconditioned model has no embed_text
    assert not torch.allclose(ours, m(x, t), atol=1e-4)
    assert "embed_text.weight" not in MDM(text=False, **SMALL).state_dict()


def test_integer_steps_index_the_table_and_fractions_interpolate():
    m = MDM(**SMALL).eval()
    emb = m.embed_timestep
    t = torch.tensor([3, 4])
    exact = emb(t)
    assert torch.equal(emb(t.float()), exact)  # on the levels: upstream's lookup, bit for bit
    half = emb(torch.tensor([3.5]))
    pe = m.sequence_pos_encoder.pe
    assert torch.allclose(half, emb.time_embed(0.5 * (pe[3:4] + pe[4:5])).permute(1, 0, 2))
    with pytest.raises(ValueError, match="timesteps"):
        m(torch.randn(1, 5, V), torch.tensor([6000.0]))


def test_classifier_ignores_padding_and_has_no_text():
    torch.manual_seed(0)
    c = MDMClassifier(**SMALL).eval()
    assert c.granularity == "sample" and c.embed_text is None
    x = torch.randn(2, 12, V)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 8:] = False
    t = torch.tensor([5.0, 500.0])
    a = c(x, t, mask=mask)
    x2 = x.clone()
    x2[:, 8:] = 100.0
    assert a.shape == (2,)
    assert torch.allclose(a, c(x2, t, mask=mask), atol=1e-5)


def _batch(n):
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, 10, V, generator=g), {
        "mask": torch.ones(n, 10, dtype=torch.bool),
        "text": torch.randn(n, 512, generator=g),
    }


class TestMDMContract(NetworkContract):
    process = MDM_PROCESS

    def make_network(self):
        return MDM(**SMALL)

    def make_batch(self, n):
        return _batch(n)


class TestClassifierContract(ClassifierContract):
    process = MDM_PROCESS

    def make_classifier(self):
        return MDMClassifier(**SMALL)

    def make_batch(self, n):
        return _batch(n)


def test_import_mdm_writes_a_baseline_the_engine_reads(tmp_path):
    from genneg_motion import plugin
    from genneg_motion.mdm_import import import_mdm

    from genneg import Experiment, load_checkpoint
    from genneg.plugins import build_registry

    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(s, generator=g) for k, s in official_layout().items()}
    src = tmp_path / "model000475000.pt"
    torch.save(state, src)
    registry = build_registry(extra_plugins={"motion": plugin}, autoload=False)
    path = import_mdm(str(src), str(tmp_path / "mdm-baseline"), "motion-paper", registry)
    assert path == tmp_path / "mdm-baseline" / "ckpt" / "baseline.pt"  # what baseline_from reads
    cfg = registry.get("presets", "motion-paper")()
    den = Experiment(cfg, registry=registry, device="cpu").new_denoiser()
    den.load_state_dict(load_checkpoint(path)["modules"]["denoiser"])
    assert torch.equal(
        den.network.output_process.poseFinal.bias, state["output_process.poseFinal.bias"]
    )


class TestPerFrameClassifierContract(ClassifierContract):
    process = MDM_PROCESS

    def make_classifier(self):
        return MDMClassifier(granularity="element", **SMALL)

    def make_batch(self, n):
        return _batch(n)


def test_per_frame_classifier_trains_on_frame_labels():
    """One Eq. 13 step on per-frame labels runs and gives per-frame logits."""
    from genneg.guidance import TimeClassifier
    from genneg.losses import label_weights, weighted_bce

    torch.manual_seed(0)
    clf = TimeClassifier(MDMClassifier(granularity="element", **SMALL), MDM_PROCESS)
    x, cond = _batch(4)
    frames = torch.ones(4, 10, dtype=torch.bool)
    frames[1, 3] = False
    labels = frames.all(1)
    sigma = MDM_PROCESS.t_to_sigma(torch.tensor([1, 10, 100, 999]))
    logits = clf(x, sigma, **cond)
    assert logits.shape == (4, 10)
    loss = weighted_bce(
        logits,
        labels,
        label_weights(labels, 0.8, "is", 0.75),
        element_labels=frames,
        mask=cond["mask"],
    )
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="granularity"):
        MDMClassifier(granularity="frame")


@pytest.mark.parametrize("granularity", ["sample", "element"])
def test_stacked_classifiers_match_their_members(granularity):
    """A stack of 3 evaluated as one batched network (genneg.stacking), padded frames masked:
    the members' logits and the guidance of the per-classifier loop, to float64 tolerance."""
    from genneg.testing import check_stacked_forward

    torch.manual_seed(0)
    nets = [MDMClassifier(**SMALL, granularity=granularity).double() for _ in range(3)]
    x = torch.randn(4, 9, V, dtype=torch.float64)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    sigma = MDM_PROCESS.sampling_sigmas(7)[:4].double()  # fractional and integer steps
    check_stacked_forward(nets, MDM_PROCESS, x, sigma, {"mask": mask})
