"""SAD: shapes for both presets, training reduces the loss, checkpoints round trip exactly,
adaptation trains only the new subject's projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdecode.models.sad import SAD, count_parameters, sad_preset
from rtdecode.models.train import (
    SubjectData,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    train_sad,
)


def tiny(**kw):
    return sad_preset("toy", {"s1": 30, "s2": 24}, hidden=32, n_tokens=5, token_dim=8,
                      refine_width=16, refine_layers=1, refine_heads=2, **kw)


def test_shapes_toy_and_steps():
    torch.manual_seed(0)
    m = SAD(tiny()).eval()
    x = torch.randn(3, 30)
    assert m(x, "s1", steps=0).shape == (3, 3, 5, 8)
    assert m(x, "s1", steps=4).shape == (3, 3, 5, 8)
    with pytest.raises(ValueError, match="24"):
        m(torch.randn(2, 30), "s2")
    with pytest.raises(KeyError, match="s9"):
        m(x, "s9")


def test_paper_preset_shapes_on_meta_device():
    """The paper's sizes (3 x 77 x 768 targets, hidden 4096) without allocating them; the real
    forward/backward and its CPU latency are measured by bench/sad_presets.py."""
    cfg = sad_preset("paper", {"s1": 13447, "s2": 9114})
    with torch.device("meta"):
        m = SAD(cfg)
        out = m(torch.randn(2, 9114), "s2", steps=2)
        terms = m.losses(torch.randn(2, 13447), "s1", torch.randn(2, 3, 77, 768))
    assert out.shape == (2, 3, 77, 768)
    assert terms["loss"].shape == ()
    assert count_parameters(m) > 500e6  # dominated by the 4096 -> 3 x 77 x 768 head


def _data(rng, n=96):
    # Targets are a fixed nonlinear function of a latent the voxels carry linearly.
    z = rng.normal(size=(n, 6)).astype(np.float32)
    W = rng.normal(size=(6, 3 * 5 * 8)).astype(np.float32)
    Y = np.tanh(z @ W).reshape(n, 3, 5, 8).astype(np.float32)
    A1, A2 = rng.normal(size=(6, 30)), rng.normal(size=(6, 24))
    ids = np.arange(n)
    d1 = SubjectData("s1", (z @ A1 + 0.1 * rng.normal(size=(n, 30))).astype(np.float32),
                     ids, ids % 8 == 0)
    d2 = SubjectData("s2", (z @ A2 + 0.1 * rng.normal(size=(n, 24))).astype(np.float32),
                     ids, ids % 8 == 0)
    return [d1, d2], (lambda c: Y[c])


def test_training_reduces_loss_and_checkpoint_round_trip(tmp_path):
    data, targets = _data(np.random.default_rng(0))
    summary = train_sad(data, targets, tiny(dropout=0.0),
                        TrainConfig(epochs=25, batch_size=16, lr=3e-3, threads=1),
                        tmp_path / "run", progress=False)
    import csv
    rows = list(csv.DictReader((tmp_path / "run" / "loss.csv").open()))
    assert float(rows[-1]["train_loss"]) < 0.6 * float(rows[0]["train_loss"])
    assert summary["best_val_error"] < float(rows[0]["val_error"])
    model, meta = load_checkpoint(tmp_path / "run")
    x = torch.from_numpy(data[0].X[:4])
    again, _ = load_checkpoint(tmp_path / "run")
    assert torch.equal(model(x, "s1", steps=0), again(x, "s1", steps=0))
    save_checkpoint(model, tmp_path / "copy", meta)
    copy, _ = load_checkpoint(tmp_path / "copy")
    for (k, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_continues_from_saved_epoch(tmp_path):
    data, targets = _data(np.random.default_rng(1))
    cfg = TrainConfig(epochs=3, batch_size=32, threads=1)
    train_sad(data, targets, tiny(), cfg, tmp_path, progress=False)
    more = train_sad(data, targets, tiny(), TrainConfig(epochs=5, batch_size=32, threads=1),
                     tmp_path, progress=False)
    assert more["epochs"] == 5  # 3 from before + 2 new


def test_adaptation_changes_only_the_new_projection():
    from rtdecode.models.sad import adapt_subject

    torch.manual_seed(0)
    m = SAD(tiny())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 17)).astype(np.float32)
    Y = rng.normal(size=(40, 3, 5, 8)).astype(np.float32)
    adapt_subject(m, "new", X, Y, epochs=3, lr=1e-2)
    after = m.state_dict()
    changed = [k for k in after if k not in before or not torch.equal(after[k], before[k])]
    assert changed and all(k.startswith("proj.new.") for k in changed)


def test_mlp_baseline_has_no_refiner_and_trains():
    from rtdecode.models.sad import mlp_baseline

    cfg = mlp_baseline({"s1": 30}, hidden=32, n_tokens=5, token_dim=8)
    m = SAD(cfg)
    assert m.refiner is None
    terms = m.losses(torch.randn(8, 30), "s1", torch.randn(8, 3, 5, 8))
    assert float(terms["refine"]) == 0.0
    terms["loss"].backward()
    assert m(torch.randn(2, 30), "s1", steps=4).shape == (2, 3, 5, 8)


def test_crossfit_ridge_predicts_each_run_from_the_others():
    from rtdecode.models.train import crossfit_ridge
    from rtdecode.ridge import DualRidge

    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 25)).astype(np.float32) + 0.5
    Y = (X @ rng.normal(size=(25, 4)) + rng.normal(size=(60, 4)) + 2.0).astype(np.float32)
    groups = np.repeat(np.arange(3), 20)
    out = crossfit_ridge(X, Y, groups, 10.0)
    for g in range(3):
        m = groups == g
        want = DualRidge(X[~m], [10.0]).predict(X[m], Y[~m], 10.0)
        np.testing.assert_allclose(out[m], want, rtol=1e-4, atol=1e-4)


def test_ridge_init_starts_as_the_ridge_decoder_and_stays_fixed(tmp_path):
    """With proj_init="ridge" the untrained model decodes exactly as the ridge fitted on the
    training windows (the rank covers its fitted space here); training feeds cross-fitted
    ridge outputs for the training windows, the layer's own for validation; the layer is
    never trained."""
    from rtdecode.models.train import ridge_init
    from rtdecode.ridge import DualRidge

    data, targets = _data(np.random.default_rng(4))
    cfg = tiny()
    assert cfg.proj_init == "ridge"
    model = SAD(cfg).eval()
    Y = {d.label: torch.from_numpy(targets(d.clip_ids)) for d in data}
    tr = [torch.from_numpy(np.flatnonzero(~d.val)) for d in data]
    model.set_target_stats(torch.cat([Y[d.label][i] for d, i in zip(data, tr)]))
    feats = ridge_init(model, data, Y, progress=False)
    d, ix = data[0], tr[0].numpy()
    first = model.proj["s1"][0]
    with torch.no_grad():
        own = first(torch.from_numpy(d.X))
        est = model.estimate(model.encode(torch.from_numpy(d.X), "s1")).flatten(1)
    assert torch.allclose(feats["s1"][d.val], own[d.val])
    assert not torch.allclose(feats["s1"][ix], own[ix], atol=1e-2)  # cross-fitted
    Z = model.standardize(Y["s1"][ix]).flatten(1).numpy()
    dr = DualRidge(d.X[ix], cfg.ridge_alphas)
    ridge = dr.predict(d.X, Z, dr.select_alpha(Z))
    np.testing.assert_allclose(est.numpy(), ridge, rtol=1e-3, atol=1e-3)
    # Training leaves the ridge layer as fitted.
    train_sad(data, targets, cfg, TrainConfig(epochs=2, batch_size=16, threads=1),
              tmp_path, progress=False)
    trained, _ = load_checkpoint(tmp_path)
    assert torch.equal(trained.proj["s1"][0].weight, first.weight)


def test_preconditioned_refineformer_keeps_a_barely_noised_input():
    """refine_skip: sqrt(ab) x_t + sqrt(1 - ab) F, so at the first timestep the prediction
    is the input up to a 1 % share of the network's output (an x0-predicting network has to
    learn the identity, and a briefly trained one does not: it cost caption accuracy)."""
    torch.manual_seed(0)
    m = SAD(tiny()).eval()
    assert m.cfg.refine_skip
    x_t = torch.randn(6, 5, 8)
    cond = torch.randn(6, m.head.in_features)
    level = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        out = m.refiner(x_t, torch.zeros(6, dtype=torch.long), cond, level)
        m.refiner.skip = False
        raw = m.refiner(x_t, torch.zeros(6, dtype=torch.long), cond, level)
    ab = float(m.alpha_bar[0])
    torch.testing.assert_close(out, ab ** 0.5 * x_t + (1 - ab) ** 0.5 * raw)
    assert float((out - x_t).abs().max()) < 0.05 * float(raw.abs().max()) + 1e-3
