"""Unit tests of optcourse.techniques.compression (seconds; no timings asserted)."""
import pytest
import torch

from optcourse.techniques import compression


def test_lora_starts_at_base_and_merges_exactly():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 12)
    layer = compression.LoRALinear(base, r=4, alpha=8)
    x = torch.randn(5, 16)
    assert torch.allclose(layer(x), base(x))  # B = 0 at init
    with torch.no_grad():
        layer.lora_B.normal_()
    assert not torch.allclose(layer(x), base(x))
    assert torch.allclose(layer.merged()(x), layer(x), atol=1e-5)
    assert not base.weight.requires_grad and layer.lora_A.requires_grad


def test_apply_lora_freezes_and_counts():
    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(8, 8, bias=False))
    model.add_module("o_proj", torch.nn.Linear(8, 8, bias=False))
    wrapped = compression.apply_lora(model, ("q_proj",), r=2)
    assert wrapped == ["q_proj"]
    trainable, total = compression.count_parameters(model)
    assert trainable == 2 * 8 + 8 * 2 and total == 128 + trainable
    assert compression.merge_lora(model) == 1 and not any(isinstance(m, compression.LoRALinear) for m in model.modules())


def test_nf4_construction_matches_published_levels():
    assert torch.allclose(compression.nf4_codebook(), compression.NF4_LEVELS, atol=1e-4)


def test_nf4_beats_int4_on_normal_weights_and_double_quant_saves_bits():
    torch.manual_seed(0)
    w = torch.randn(256, 256) * 0.02
    err = {}
    for name, cb in (("nf4", compression.NF4_LEVELS), ("int4", compression.int4_codebook())):
        q = compression.quantize_nf4(w, 64, codebook=cb)
        assert q.codes.max() < len(cb)
        err[name] = (compression.dequantize_nf4(q) - w).pow(2).mean().item()
    assert err["nf4"] < err["int4"]
    q = compression.quantize_nf4(w, 64)
    dq = compression.quantize_nf4(w, 64, double_quant=True)
    assert q.bits_per_parameter == pytest.approx(4.5)
    assert dq.bits_per_parameter == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    int4 = compression.quantize_nf4(w, 64, codebook=compression.int4_codebook())
    assert int4.bits_per_parameter == pytest.approx(4.5)  # 15 levels still take 4 bits each, not log2(15)
    assert (compression.dequantize_nf4(dq) - w).pow(2).mean().item() < 1.05 * err["nf4"]


def test_quantize_handles_ragged_sizes():
    w = torch.randn(7, 13)
    back = compression.dequantize_nf4(compression.quantize_nf4(w, 64))
    assert back.shape == w.shape and (back - w).abs().max() < 0.5 * w.abs().max()


def _tiny_classifier():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 10)).eval()


def test_pruned_copy_reaches_the_sparsity_and_leaves_the_original():
    model = _tiny_classifier()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    scores = compression.taylor_importance(model, x, y, batch_size=16)
    assert set(scores) == {"0", "4"} and all(s.shape == m.weight.shape for s, (m, _) in
                                             zip(scores.values(), compression.prunable_weights(model)))
    assert compression.sparsity(model) == 0.0
    for method in compression.PRUNING_METHODS:
        pruned = compression.pruned_copy(model, 0.5, method, importance=scores)
        assert compression.sparsity(pruned) == pytest.approx(0.5, abs=0.01), method
        assert not any(hasattr(m, "weight_mask") for m in pruned.modules())  # masks baked in
    layerwise = compression.pruned_copy(model, 0.5, "layerwise_magnitude")
    assert all((m.weight == 0).float().mean() == pytest.approx(0.5, abs=0.02) for m, _ in
               compression.prunable_weights(layerwise))
    assert compression.sparsity(model) == 0.0
    with pytest.raises(ValueError):
        compression.pruned_copy(model, 0.5, "global_taylor")
    with pytest.raises(ValueError):
        compression.pruned_copy(model, 0.5, "random")


def test_two_four_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3]])
    assert compression.two_four_mask(w).tolist() == [[False, True, True, False, True, False, False, True]]
    conv = torch.randn(8, 3, 3, 3)  # reduction dim 27: the last group is padded
    mask = compression.two_four_mask(conv)
    assert mask.shape == conv.shape and mask.flatten(1)[:, :24].sum(1).eq(12).all()


def test_block_channel_pruning_and_bn_recalibration_on_the_digits_resnet():
    from optcourse.models.digits import load_digits_resnet

    teacher = load_digits_resnet()
    slim = compression.prune_block_channels(teacher, 0.5)
    assert slim.layer1.conv1.out_channels == teacher.layer1.conv1.out_channels // 2
    assert slim.layer1.conv2.in_channels == slim.layer1.bn1.num_features == slim.layer1.conv1.out_channels
    x = torch.randn(16, 1, 64, 64)
    assert slim(x).shape == teacher(x).shape == (16, 10)
    before = slim.layer1.bn1.running_mean.clone()
    compression.recalibrate_bn(slim, x, batch_size=8)
    assert not torch.equal(before, slim.layer1.bn1.running_mean) and not slim.training


def test_finetune_lowers_the_loss_and_is_seeded():
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    loss = lambda m: torch.nn.functional.cross_entropy(m(x), y).item()  # noqa: E731
    a = compression.finetune(_tiny_classifier(), x, y, epochs=5, lr=1e-2)
    b = compression.finetune(_tiny_classifier(), x, y, epochs=5, lr=1e-2)
    assert loss(a) < loss(_tiny_classifier()) and loss(a) == loss(b) and not a.training


def test_distillation_loss_is_zero_for_equal_logits_and_students_train():
    logits = torch.randn(4, 10)
    assert compression.distillation_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert compression.distillation_loss(logits, -logits, 4.0).item() > 0
    x, y = torch.randn(40, 1, 64, 64), torch.randint(0, 10, (40,))
    plain = compression.train_student(x, y, steps=3, batch_size=8)
    kd = compression.train_student(x, y, steps=3, batch_size=8, transfer_x=x, teacher_logits=torch.randn(40, 10))
    assert isinstance(plain, compression.StudentCNN) and not plain.training
    assert not torch.equal(plain.net[0].weight, kd.net[0].weight)  # the soft targets changed training
    # paired by seed: with the soft targets weighted 0 the student sees the same labelled batches and ends the same
    weightless = compression.train_student(x, y, steps=3, batch_size=8, transfer_x=x, teacher_logits=torch.randn(40, 10),
                                           alpha=0.0)
    assert torch.equal(plain.net[0].weight, weightless.net[0].weight)


def test_nf4_roundtrip_copy_changes_only_the_named_layers():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    copied = compression.nf4_roundtrip_copy(model, ["0"], 64)
    assert not torch.equal(copied[0].weight, model[0].weight) and torch.equal(copied[1].weight, model[1].weight)
    expected = compression.dequantize_nf4(compression.quantize_nf4(model[0].weight, 64))
    assert torch.equal(copied[0].weight, expected)


def test_mlp_projections_are_seeded_and_scaled_to_keep_activations_near_one():
    up, down = compression.mlp_projections(256, 1024, dtype=torch.float32, seed=3)
    assert up.shape == (1024, 256) and down.shape == (256, 1024)
    assert torch.equal(up, compression.mlp_projections(256, 1024, dtype=torch.float32, seed=3)[0])
    assert not torch.equal(up, compression.mlp_projections(256, 1024, dtype=torch.float32, seed=4)[0])
    y = compression.mlp_forward(torch.randn(64, 256), up, down)
    assert y.shape == (64, 256) and 0.7 < y.std().item() < 1.4


def test_channel_prune_mlp_keeps_the_largest_features_and_computes_their_part_of_the_product():
    up, down = compression.mlp_projections(64, 128, dtype=torch.float32)
    up[5] *= 10  # the largest row by L1 norm must stay
    p_up, p_down = compression.channel_prune_mlp(up, down, 0.5)
    assert p_up.shape == (64, 64) and p_down.shape == (64, 64)
    keep = up.abs().sum(1).topk(64).indices.sort().values
    assert 5 in keep.tolist()
    assert torch.equal(p_up, up[keep]) and torch.equal(p_down, down[:, keep])
    x = torch.randn(8, 64)
    torch.testing.assert_close(compression.mlp_forward(x, p_up, p_down), (x @ up[keep].T) @ down[:, keep].T)
    with pytest.raises(ValueError, match="keep_frac"):
        compression.channel_prune_mlp(up, down, 0.0)
    with pytest.raises(ValueError, match="pair"):
        compression.channel_prune_mlp(up, up, 0.5)


def test_semi_structured_comparison_refuses_a_cpu_and_bad_arguments():
    assert "compute capability 8.0" in compression.semi_structured_support("cpu")
    with pytest.raises(RuntimeError, match="NVIDIA GPU"):
        compression.compare_semi_structured_mlp(64, 128, [16], device="cpu")
    for kwargs, match in ((dict(hidden=60), "multiples of 64"), (dict(tokens=[]), "token counts"),
                          (dict(tokens=[0]), "token counts"), (dict(dtype=torch.float32), "float16"),
                          (dict(backend="cusparse"), "backend"), (dict(rounds=0), "rounds")):
        args = dict(hidden=64, intermediate=128, tokens=[16], device="cpu") | kwargs
        with pytest.raises(ValueError, match=match):
            compression.compare_semi_structured_mlp(args.pop("hidden"), args.pop("intermediate"), args.pop("tokens"),
                                                    **args)


def test_semi_structured_comparison_rows_with_the_kernel_stood_in_for_on_a_cpu(monkeypatch):
    """The GPU-only pieces (the capability check, the compression for the sparse kernels) replaced on a CPU: the
    masks handed to the kernel are 2:4, the error is measured against the masked dense product, and the rows carry
    what the lecture reads. The sparse kernels themselves run only on a GPU (the lecture's cuda run)."""
    handed = []

    def stand_in(w):  # what a correct kernel computes: the product of the masked weights
        handed.append(w.clone())
        return w + 0.01 * w.abs().max() * torch.ones_like(w) * (w != 0)  # a small, measurable difference

    monkeypatch.setattr(compression, "semi_structured_support", lambda device: None)
    monkeypatch.setattr(compression, "_to_semi_structured", stand_in)
    rows = compression.compare_semi_structured_mlp(64, 128, [8, 32], device="cpu", dtype=torch.bfloat16, rounds=2,
                                                   repeat=2, min_sample_ms=0.05)
    assert [r["tokens"] for r in rows] == [8, 32]
    assert len(handed) == 2 and [tuple(w.shape) for w in handed] == [(128, 64), (64, 128)]
    for w in handed:  # exactly 2 non-zeros in every group of 4 along the reduction dimension
        assert ((w.view(w.shape[0], -1, 4) != 0).sum(-1) == 2).all()
    for r in rows:
        for key in ("dense_ms", "sparse_ms", "channel_pruned_ms", "sparse_speedup", "channel_speedup", "dense_tflops"):
            assert r[key] > 0, key
        assert r["sparse_speedup_min"] <= r["sparse_speedup"] <= r["sparse_speedup_max"]
        assert r["channel_speedup_min"] <= r["channel_speedup"] <= r["channel_speedup_max"]
        assert 1e-3 < r["sparse_rel_error"] < 0.2  # the stand-in's difference is seen
        assert 0 < r["rounding_rel_error"] < 0.05  # bf16 against fp32
        assert r["calls_per_sample"] >= 1


def test_semi_structured_comparison_reports_a_failed_graph_capture_instead_of_stopping(monkeypatch):
    """``cuda_graphs=True`` where the capture cannot work (here: no CUDA at all): the eager rows stay, and
    ``graph_error`` says why; no ``graph_*`` timing is made up."""
    monkeypatch.setattr(compression, "semi_structured_support", lambda device: None)
    monkeypatch.setattr(compression, "_to_semi_structured", lambda w: w)
    rows = compression.compare_semi_structured_mlp(64, 128, [8], device="cpu", dtype=torch.bfloat16, rounds=1,
                                                   repeat=1, min_sample_ms=0.05, cuda_graphs=True)
    assert rows[0]["graph_error"] and rows[0]["dense_ms"] > 0
    assert not [k for k in rows[0] if k.startswith("graph_") and k != "graph_error"]
    assert rows[0]["dense_host_share"] > 0 and rows[0]["sparse_host_share"] > 0
