"""AFG: softmax weights over the present features sum to 1 per sample; the three structures, and
when they coincide."""

from __future__ import annotations

import pytest
import torch

from ssl_aver.errors import UserError
from ssl_aver.models.afg import AFG, STRUCTURES, AFGFusion, structures_coincide


@pytest.mark.parametrize("scoring", ["concat", "shared"])
def test_afg_weights_sum_to_one_and_skip_absent_features(scoring):
    torch.manual_seed(0)
    afg = AFG(4, 8, scoring)
    x = torch.randn(5, 4, 8)
    fused, weights = afg(x)
    assert fused.shape == (5, 8) and torch.allclose(weights.sum(1), torch.ones(5))
    assert torch.allclose(fused, (weights[..., None] * x).sum(1))
    present = torch.tensor([[True, True, True, True], [True, False, True, False], [False] * 4, [False, False, False, True], [True] * 4])
    fused, weights = afg(x, present)
    assert torch.allclose(weights[[0, 1, 3, 4]].sum(1), torch.ones(4))
    assert (weights[~present] == 0).all() and (fused[2] == 0).all()
    assert torch.allclose(fused[3], x[3, 3])  # the only present feature passes through


def test_afg_weights_depend_on_the_sample_and_get_gradients():
    torch.manual_seed(0)
    afg = AFG(3, 6)
    x = torch.randn(4, 3, 6)
    fused, weights = afg(x)
    assert not torch.allclose(weights[0], weights[1])
    fused.sum().backward()
    assert afg.score.weight.grad is not None and afg.score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("structure", ["parallel", "pairwise", "hierarchical"])
def test_fusion_structures_fuse_and_handle_a_missing_modality(structure):
    torch.manual_seed(0)
    fusion = AFGFusion(structure, n_acoustic=3, n_visual=2, dim=8)
    a, v = torch.randn(4, 3, 8), torch.randn(4, 2, 8)
    a_present = torch.tensor([True, True, False, True])[:, None].expand(-1, 3)
    v_present = torch.tensor([True, False, True, True])[:, None].expand(-1, 2)
    fused, present, weights = fusion(a, v, a_present, v_present)
    assert fused.shape == (4, 8) and present.all()
    for stage in weights.values():
        live = stage.sum(1) > 0
        assert torch.allclose(stage[live].sum(1), torch.ones(int(live.sum())))
    # a sample without video is fused from its acoustic vectors only: changing its video changes nothing
    v2 = v.clone()
    v2[1] += 5.0
    assert torch.allclose(fusion(a, v2, a_present, v_present)[0][1], fused[1])
    stages = {"parallel": {"top"}, "pairwise": {"pair_0", "pair_1", "pair_2", "top"}, "hierarchical": {"intra", "top"}}
    assert set(weights) == stages[structure]


def test_fusion_rejects_unknown_structure_and_missing_acoustic():
    with pytest.raises(UserError, match="structure"):
        AFGFusion("serial", 2, 1, 8)
    with pytest.raises(UserError, match="acoustic"):
        AFGFusion("pairwise", 0, 2, 8)


def _same_weights_outputs(n_acoustic: int, n_visual: int) -> dict[str, torch.Tensor]:
    """Each structure's fused vectors with every AFG scoring by one and the same Linear(D, 1)."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(8, 1)
    a, v = torch.randn(5, n_acoustic, 8), torch.randn(5, n_visual, 8)
    present_a, present_v = torch.ones(5, n_acoustic, dtype=torch.bool), torch.ones(5, n_visual, dtype=torch.bool)
    out = {}
    for structure in STRUCTURES:
        fusion = AFGFusion(structure, n_acoustic, n_visual, dim=8, scoring="shared")
        for module in fusion.modules():
            if isinstance(module, AFG):
                module.score.load_state_dict(shared.state_dict())
        out[structure] = fusion(a, v, present_a, present_v)[0]
    return out


@pytest.mark.parametrize("counts", [(1, 1), (1, 3), (3, 0)])
def test_structures_coincide_below_two_acoustic_and_one_visual_inputs(counts):
    out = _same_weights_outputs(*counts)
    assert structures_coincide(*counts)
    assert torch.allclose(out["pairwise"], out["parallel"], atol=1e-6) and torch.allclose(out["hierarchical"], out["parallel"], atol=1e-6)


@pytest.mark.parametrize("counts", [(2, 2), (3, 2), (3, 1)])
def test_structures_differ_with_several_acoustic_inputs_and_a_visual_one(counts):
    out = _same_weights_outputs(*counts)
    assert not structures_coincide(*counts)
    for first, second in (("parallel", "pairwise"), ("parallel", "hierarchical"), ("pairwise", "hierarchical")):
        assert (out[first] - out[second]).abs().max() > 1e-3, (first, second)
