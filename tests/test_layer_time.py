"""measure/layer_time.py: what each kernel adds to a step, and the step folded into its layers --
on made-up steps whose answer is known, on the committed H200 step, and refusing what is not a
decode step of that many layers."""
import json
from pathlib import Path

import pytest

from workbench.measure.layer_time import fold_layers, wall_added

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def made_up_step(layers: int, layer: list[tuple[str, float, float]], before=(("embed", 1.0, 1.0),),
                 after=(("lm_head", 5.0, 5.0),)) -> list[list]:
    """[name, span, end] of a step whose kernels add `added` each: (name, span, added) in, ends out.
    A kernel's span may exceed what it adds (it started under the kernel before, as under PDL)."""
    kernels, end = [], 0.0
    for name, span, added in [*before, *layer * layers, *after]:
        end += added
        kernels.append([name, span, end])
    return kernels


LAYER = [("qkv", 5.0, 2.0), ("attn", 4.0, 3.0), ("o", 3.0, 1.5), ("mlp", 6.0, 6.0)]


def test_wall_added_sums_to_the_step_and_ignores_overlap():
    kernels = [["a", 2.0, 2.0], ["b", 5.0, 4.0], ["c", 1.0, 3.5], ["d", 2.0, 6.0]]   # c ends inside b
    assert wall_added(kernels) == [2.0, 2.0, 0.0, 2.0]
    assert sum(wall_added(kernels)) == kernels[-1][2]
    assert wall_added([["a", 2.0], ["b", 3.0]]) == [2.0, 3.0]   # no ends recorded: the spans


def test_fold_finds_the_layer_and_what_stands_outside_it():
    kernels = made_up_step(4, LAYER)
    fold = fold_layers(kernels, 4)
    assert fold.names == ["qkv", "attn", "o", "mlp"]
    assert fold.added_us == [2.0, 3.0, 1.5, 6.0]
    assert fold.span_us == [5.0, 4.0, 3.0, 6.0]
    assert fold.layer_us == [12.5] * 4 and fold.median_layer_us == 12.5
    assert fold.before == [("embed", 1.0)] and fold.after == [("lm_head", 5.0)]
    assert fold.step_us == pytest.approx(kernels[-1][2])


def test_fold_takes_medians_over_layers():
    kernels = made_up_step(3, LAYER)
    kernels[1 + 4][2] += 10.0   # the second layer's qkv ends 10 us late: everything after shifts
    for k in kernels[1 + 5:]:
        k[2] += 10.0
    fold = fold_layers(kernels, 3)
    assert fold.added_us[0] == 2.0                 # one slow layer does not move the median
    assert sorted(fold.layer_us) == [12.5, 12.5, 22.5]


def test_fold_refuses_a_step_of_another_depth_or_without_ends():
    kernels = made_up_step(4, LAYER)
    with pytest.raises(ValueError, match="repeats exactly 5 times"):
        fold_layers(kernels, 5)
    broken = [k for k in kernels if not (k[0] == "attn" and k[2] > 20)]   # one layer lost a kernel
    with pytest.raises(ValueError, match="repeats exactly 4 times"):
        fold_layers(broken, 4)
    last_broken = kernels[:1 + 3 * 4] + [k for k in kernels[1 + 3 * 4:] if k[0] != "attn"]   # the last layer too
    with pytest.raises(ValueError, match="repeats exactly 4 times"):
        fold_layers(last_broken, 4)
    with pytest.raises(ValueError, match="repeats exactly 3 times"):   # fewer layers than the step has
        fold_layers(kernels, 3)
    with pytest.raises(ValueError, match="at least 2 layers"):
        fold_layers(kernels, 1)
    with pytest.raises(ValueError, match="no end times"):
        fold_layers([[k[0], k[1]] for k in kernels], 4)


def test_twin_kernels_outside_the_layers_are_not_a_layer():
    """Two identical copies before the layers repeat twice; the fold of a 2-layer step still takes
    the layer, the run that covers the most of the step."""
    kernels = made_up_step(2, LAYER, before=(("copy", 1.0, 1.0), ("copy", 1.0, 1.0), ("embed", 1.0, 1.0)))
    fold = fold_layers(kernels, 2)
    assert fold.names == ["qkv", "attn", "o", "mlp"] and [n for n, _ in fold.before] == ["copy", "copy", "embed"]


@pytest.mark.parametrize("before,after", [((("embed", 1.0, 1.0), ("mlp", 6.0, 6.0)), (("lm_head", 5.0, 5.0),)),
                                          ((("embed", 1.0, 1.0),), (("qkv", 5.0, 2.0), ("lm_head", 5.0, 5.0)))])
def test_a_kernel_next_to_the_layers_named_as_a_layers_own_is_refused_not_misread(before, after):
    """A layer's last kernel's name just before the layers (or its first just after): the stretch
    holds a partial run more, and where a layer begins is unknown -- refused, not folded one off."""
    kernels = made_up_step(4, LAYER, before=before, after=after)
    with pytest.raises(ValueError, match="repeats exactly 4 times"):
        fold_layers(kernels, 4)


def test_the_committed_h200_step_folds_into_its_28_layers():
    rows = json.loads((RESULTS / "decode-ab-gemv-double-h200.json").read_text())
    current = [r for r in rows if r["variant"] == "current"][-1]
    fold = fold_layers(current["step_kernels"], 28)
    assert fold.names == ["_gemv_kernel", "_qk_norm_rope_store_kernel", "_attention_split_kernel",
                          "_attention_merge_kernel", "_gemv_kernel", "_gemv_kernel", "_gemv_kernel"]
    assert len(fold.layer_us) == 28
    assert [name for name, _ in fold.after][:2] == ["_add_rms_norm_kernel", "_gemv_kernel"]   # final norm, LM head
    assert fold.step_us == pytest.approx(current["step_kernels"][-1][2], abs=0.05)
    for wrong in (2, 4, 14, 27, 29):   # 14: two layers would be one run repeated; 27: a layer left over
        with pytest.raises(ValueError, match=f"repeats exactly {wrong} times"):
            fold_layers(current["step_kernels"], wrong)


def test_layer_gemv_bytes_match_projections_only_where_four_decode_gemvs_run():
    from workbench.measure.layer_time import layer_gemv_bytes
    from workbench.model import ModelConfig
    shape = ModelConfig.from_preset("qwen3-0.6b")
    rows = json.loads((RESULTS / "decode-ab-gemv-double-h200.json").read_text())
    fold = fold_layers([r for r in rows if r["variant"] == "current"][-1]["step_kernels"], 28)
    weights = layer_gemv_bytes(fold, shape)
    assert weights == {0: ("qkv_proj", 1024 * 4096 * 2), 4: ("o_proj", 2048 * 1024 * 2),
                       5: ("gate_up_proj", 1024 * 6144 * 2), 6: ("down_proj", 3072 * 1024 * 2)}
    cublas_layer = fold_layers(made_up_step(28, [("nvjet_gemm", 5.0, 2.0), ("attn", 4.0, 3.0)]), 28)
    assert layer_gemv_bytes(cublas_layer, shape) == {}   # no name to match a weight to: nothing claimed
    # o_proj inside the merge: three GEMVs a layer, matched only when the caller says which three
    rows = json.loads((RESULTS / "decode-ab-dattn-o-proj-h200.json").read_text())
    folded = fold_layers([r for r in rows if r["variant"] == "dattn-o-proj"][-1]["step_kernels"], 28)
    assert layer_gemv_bytes(folded, shape) == {}
    without_o_proj = layer_gemv_bytes(folded, shape, projections=("qkv_proj", "gate_up_proj", "down_proj"))
    assert [proj for proj, _ in without_o_proj.values()] == ["qkv_proj", "gate_up_proj", "down_proj"]
    assert "merge" in folded.names[min(i for i in without_o_proj if without_o_proj[i][0] == "gate_up_proj") - 1]


def test_the_cli_folds_a_recorded_step_and_refuses_a_live_one_on_a_cpu(capsys, tmp_path):
    from workbench.__main__ import main
    out = tmp_path / "layers.json"
    assert main(["measure", "layers", "--from-json", str(RESULTS / "decode-ab-dattn-splits-h200.json"),
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    layer = [r for r in rows if r["part"] == "a layer"]
    assert [r["projection"] for r in layer] == ["qkv_proj", "", "", "", "o_proj", "gate_up_proj", "down_proj"]
    assert [r["kernel"] for r in rows if r["part"] == "after the layers"][:2] == ["_add_rms_norm_kernel", "_gemv_kernel"]
    assert all(r["layers"] == 28 and r["gpu"] == "NVIDIA H200" and r["source"].endswith("dattn-splits-h200.json")
               for r in rows), "the recorded step's machine, not this one's"
    assert "a layer adds" in capsys.readouterr().out
    assert main(["measure", "layers", "--from-json", str(RESULTS / "decode-ab-dattn-splits-h200.json"),
                 "--preset", "tiny"]) == 2   # a 2-layer model's fold of a 28-layer step: refused
    assert "repeats exactly 2 times" in capsys.readouterr().err
    not_rows = tmp_path / "not-rows.json"
    not_rows.write_text("{}")
    assert main(["measure", "layers", "--from-json", str(not_rows)]) == 2
    assert "want a list of rows" in capsys.readouterr().err
    assert main(["measure", "layers", "--from-json", str(RESULTS / "decode-ab-dattn-splits-h200.json"),
                 "--variant", "no-such-variant"]) == 2
    assert "has no profiled step of variant 'no-such-variant'; its variants with one: current," in capsys.readouterr().err
    import torch
    if not torch.cuda.is_available():
        assert main(["measure", "layers"]) == 2
        assert "fold a recorded step instead" in capsys.readouterr().err
