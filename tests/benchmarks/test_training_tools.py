"""Training-side code of the bundled tiny model: the VQ training forward and the dataset split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.build_emoji_dataset import Emoji, base_key, heldout_keys, read_emoji_test
from training.train_tiny import quantize_for_training, restart_dead_codes, split_scales
from vpg_pipelines.models.var.vqvae import VARVQVAE


def tiny_vae() -> VARVQVAE:
    torch.manual_seed(0)
    return VARVQVAE(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                    v_patch_nums=(1, 2, 4), share_quant_resi=4, test_mode=False).train()


def test_training_quantizer_matches_inference_path():
    vae = tiny_vae()
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    f = vae.encode_features(x)
    f_st, _, hits, residuals = quantize_for_training(vae, f, beta=0.25)
    with torch.no_grad():
        f_hat = vae.indices_to_f_hat(vae.encode_to_indices(x))
    torch.testing.assert_close(f_st, f_hat, atol=1e-5, rtol=1e-5)
    assert int(hits.sum()) == 3 * (1 + 4 + 16) == residuals.shape[0]


def test_training_quantizer_losses_and_gradients():
    vae = tiny_vae()
    f = torch.randn(2, 4, 4, 4, requires_grad=True)
    f_st, vq_loss, _, _ = quantize_for_training(vae, f, beta=0.25)
    # straight-through: d f_st / d f is the identity
    (grad,) = torch.autograd.grad(f_st.sum(), f, retain_graph=True)
    torch.testing.assert_close(grad, torch.ones_like(f))
    # the VQ loss trains the codebook and phi, and commits the encoder output with weight beta
    vae.zero_grad()
    vq_loss.backward()
    assert vae.quantize.embedding.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.quantize.quant_resi.parameters())
    # with f_hat fixed, the gradient wrt f is beta * mean over scales of 2 (f - f_hat_k) / numel
    f_hats, f_hat = [], torch.zeros_like(f)
    with torch.no_grad():
        rest = f.detach()
        for k, pn in enumerate((1, 2, 4)):
            z = rest if pn == 4 else F.interpolate(rest, size=(pn, pn), mode="area")
            idx = vae._nearest_code(z.permute(0, 2, 3, 1).reshape(-1, 4), vae.quantize.embedding.weight)
            h = vae.quantize.embedding(idx.view(2, pn, pn)).permute(0, 3, 1, 2)
            if pn != 4:
                h = F.interpolate(h, size=(4, 4), mode="bicubic")
            h = vae.quantize.quant_resi(h, k, 3)
            f_hat = f_hat + h
            rest = rest - h
            f_hats.append(f_hat.clone())
    expected = sum(0.25 * 2 * (f.detach() - fh) / f.numel() for fh in f_hats) / 3
    torch.testing.assert_close(f.grad, expected)


def test_dead_code_restart_only_touches_unused_codes():
    vae = tiny_vae()
    before = vae.quantize.embedding.weight.detach().clone()
    usage = torch.ones(16)
    usage[[3, 7]] = 0.0
    residuals = torch.randn(50, 4)
    n = restart_dead_codes(vae, usage, residuals, torch.Generator().manual_seed(0), threshold=0.5)
    after = vae.quantize.embedding.weight.detach()
    assert n == 2
    changed = (after != before).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [3, 7]
    assert (usage[[3, 7]] == 0.5).all()


def test_split_scales_sizes():
    parts = split_scales(torch.zeros(2, 1 + 4 + 9 + 16 + 36 + 64, dtype=torch.long))
    assert [p.shape[1] for p in parts] == [1, 4, 9, 16, 36, 64]


EMOJI_TEST = """\
# group: People & Body
# subgroup: hand-fingers-open
1F44B                                                  ; fully-qualified     # 👋 E0.6 waving hand
1F44B 1F3FB                                            ; fully-qualified     # 👋🏻 E1.0 waving hand: light skin tone
1F44B 1F3FF                                            ; fully-qualified     # 👋🏿 E1.0 waving hand: dark skin tone
270B                                                   ; fully-qualified     # ✋ E0.6 raised hand
# subgroup: person
263A                                                   ; unqualified         # ☺ E0.6 smiling face
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
"""


def test_read_emoji_test_keeps_fully_qualified(tmp_path):
    path = tmp_path / "emoji-test.txt"
    path.write_text(EMOJI_TEST, encoding="utf-8")
    emojis = read_emoji_test(path)
    assert [e.key for e in emojis] == ["1F44B", "1F44B 1F3FB", "1F44B 1F3FF", "270B", "263A FE0F"]
    assert emojis[1].name == "waving hand: light skin tone"
    assert emojis[-1].subgroup == "person" and emojis[0].group == "People & Body"


def test_heldout_split_keeps_skin_tone_variants_together():
    emojis = [Emoji((0x1F400 + i,) + tone, "g", "s", "x") for i in range(60) for tone in ((), (0x1F3FB,), (0x1F3FF,))]
    labels = [i % 3 for i in range(60) for _ in range(3)]
    held = heldout_keys(emojis, labels)
    assert all(base_key(e) == f"{e.codepoints[0]:04X}" for e in emojis)
    per_class = [sum(1 for k in held if (int(k, 16) - 0x1F400) % 3 == c) for c in range(3)]
    assert per_class == [2, 2, 2]  # 10% of 20 base emoji per class
    assert heldout_keys(list(reversed(emojis)), list(reversed(labels))) == held  # order-independent
