"""`info`: parameter and MAC counts against hand counts, and the CLI (table, JSON, zoo, errors).

MAC rule: conv = k_h * k_w * (C_in / groups) * C_out * H_out * W_out; linear = in * out.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from pipeline import info
from pipeline.cli import cli, main
from pipeline.info import markdown_table, parse_input_size, summarize
from pipeline.models import create_model


def weighted_rows(summary):
    return [(r["name"], r["type"], r["output_shape"], r["params"], r["macs"])
            for r in summary["rows"] if r["type"] in ("Conv2d", "Linear")]


def test_lenet5_hand_counts():
    summary = summarize(create_model("lenet5", num_classes=10, in_chans=3), (3, 32, 32))
    assert weighted_rows(summary) == [
        # conv1: 5*5*3*6 = 450 weights + 6 biases; 450 * 28*28 MACs
        ("features.0", "Conv2d", [6, 28, 28], 456, 352_800),
        # conv2 after a 2x2 pool (14x14): 5*5*6*16 = 2,400 weights + 16; 2,400 * 10*10 MACs
        ("features.3", "Conv2d", [16, 10, 10], 2_416, 240_000),
        # fc1 on 16*5*5 = 400 inputs: 400*120 + 120; 48,000 MACs
        ("classifier.1", "Linear", [120], 48_120, 48_000),
        # fc2: 120*84 + 84; fc3: 84*10 + 10
        ("classifier.3", "Linear", [84], 10_164, 10_080),
        ("classifier.5", "Linear", [10], 850, 840),
    ]
    assert summary["totals"] == {"params": 62_006, "trainable_params": 62_006, "macs": 651_720}


def test_simplenn_hand_counts():
    summary = summarize(create_model("simplenn", num_classes=10, in_chans=3), (3, 32, 32))
    assert weighted_rows(summary) == [
        # conv 5x5 3->8: 600 weights (+8 bias); 600 * 28*28 = 470,400 MACs
        ("features.0", "Conv2d", [8, 28, 28], 608, 470_400),
        # conv 3x3 8->16 on 14x14: 1,152 weights (+16); 1,152 * 12*12 = 165,888 MACs
        ("features.3", "Conv2d", [16, 12, 12], 1_168, 165_888),
        # fc1 on 16*6*6 = 576: 69,120 weights (+120); fc2 10,080 (+84); fc3 840 (+10)
        ("classifier.1", "Linear", [120], 69_240, 69_120),
        ("classifier.3", "Linear", [84], 10_164, 10_080),
        ("classifier.5", "Linear", [10], 850, 840),
    ]
    assert summary["totals"]["params"] == 82_030
    assert summary["totals"]["macs"] == 716_328


@pytest.mark.parametrize("shortcut, params, macs", [("A", 269_722, 40_551_040), ("B", 272_474, 40_813_184)])
def test_resnet20_totals(shortcut, params, macs):
    model = create_model("resnet20", num_classes=10, in_chans=3, shortcut=shortcut)
    totals = summarize(model, (3, 32, 32))["totals"]
    assert (totals["params"], totals["macs"]) == (params, macs)


def test_resnet20_shortcut_rows():
    a = summarize(create_model("resnet20", num_classes=10, in_chans=3), (3, 32, 32))
    pads = [r for r in a["rows"] if r["type"] == "PadShortcut"]
    # option A at the two stage transitions: 16x32x32 -> 32x16x16 and 32x16x16 -> 64x8x8, free
    assert [(r["output_shape"], r["params"], r["macs"]) for r in pads] == [
        ([32, 16, 16], 0, 0), ([64, 8, 8], 0, 0)]
    b = summarize(create_model("resnet20", num_classes=10, in_chans=3, shortcut="B"), (3, 32, 32))
    projections = [r for r in b["rows"] if r["name"].endswith("shortcut.0")]
    # 1x1 conv 16->32 on 16x16: 512 weights, 512*256 MACs; 32->64 on 8x8: 2,048 weights, 2,048*64 MACs
    assert [(r["params"], r["macs"]) for r in projections] == [(512, 131_072), (2_048, 131_072)]


def test_grouped_conv_and_token_linear():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Flatten(2),
                          nn.Linear(64, 5))
    rows = summarize(model, (8, 8, 8))["rows"]
    # depthwise: 3*3*(8/8)*8 weights, each used at 8*8 positions
    assert (rows[0]["params"], rows[0]["macs"]) == (72, 72 * 64)
    # Linear(64, 5) applied to 8 vectors (one per channel): 8 * 64 * 5
    assert (rows[2]["output_shape"], rows[2]["params"], rows[2]["macs"]) == ([8, 5], 64 * 5 + 5, 8 * 64 * 5)


class _TwiceAndUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)  # called twice
        self.unused = nn.Linear(4, 2)  # never called
        self.scale = nn.Parameter(torch.ones(4))  # a parameter on the (non-leaf) root

    def forward(self, x):
        return self.fc(self.fc(x.flatten(1))) * self.scale


def test_reused_and_unused_parameters_counted_once():
    model = _TwiceAndUnused().train()
    summary = summarize(model, (1, 2, 2))
    rows = [(r["name"], r["params"], r["macs"]) for r in summary["rows"]]
    # fc: 16 + 4 params once, 16 MACs per call; unused: 8 + 2 params, no MACs; scale: 4
    assert rows == [("fc", 20, 16), ("fc", 0, 16), ("scale", 4, 0), ("unused", 10, 0)]
    assert summary["totals"]["params"] == 34 and summary["totals"]["macs"] == 32
    assert model.training  # summarize runs in eval mode and restores the mode


def test_markdown_table():
    text = markdown_table(["model", "params"], [["lenet5", 62006], ["resnet110", 1727962]])
    assert text.splitlines() == [
        "| model     |    params |",
        "| --------- | --------: |",
        "| lenet5    |    62,006 |",
        "| resnet110 | 1,727,962 |",
    ]
    floats = markdown_table(["run", "acc", "img/s"], [["a", 0.93127, 1215.5], ["b", 0.5, 31.84]])
    assert floats.splitlines()[2:] == ["| a   | 0.9313 | 1,216 |", "| b   |    0.5 | 31.84 |"]


def test_parse_input_size():
    assert parse_input_size("1x28x28") == (1, 28, 28)
    for bad in ("3x32", "3x0x32", "big"):
        with pytest.raises(Exception, match="expected CxHxW"):
            parse_input_size(bad)


# -- CLI -----------------------------------------------------------------------------------------

def test_cli_table_for_lenet5():
    result = CliRunner().invoke(cli, ["info", "--model", "lenet5"])
    assert result.exit_code == 0, result.output
    assert "| features.0   | Conv2d    | 6x28x28      |    456 | 352,800 |" in result.output
    assert "62,006 params (62,006 trainable), 651,720 MACs" in result.output


def test_cli_json_for_timm_model():
    args = ["info", "-m", "timm:test_resnet", "--input", "1x28x28", "--classes", "7", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == "timm:test_resnet" and data["input_size"] == [1, 28, 28]
    assert data["num_classes"] == 7
    assert data["rows"][0]["type"] == "Conv2d" and data["rows"][-1]["output_shape"] == [7]
    expected = create_model("timm:test_resnet", num_classes=7, in_chans=1, input_size=(1, 28, 28))
    assert data["totals"]["params"] == sum(p.numel() for p in expected.parameters())
    assert data["totals"]["macs"] == sum(r["macs"] for r in data["rows"]) > 0


def test_cli_model_opt():
    result = CliRunner().invoke(cli, ["info", "-m", "resnet20", "--model-opt", "shortcut=B", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["opts"] == {"shortcut": "B"}
    assert data["totals"]["params"] == 272_474 and data["totals"]["macs"] == 40_813_184


def test_cli_zoo(monkeypatch):
    import pipeline.models

    monkeypatch.setattr(pipeline.models, "list_models", lambda: ["resnet20", "lenet5", "timm", "resnet110"])
    result = CliRunner().invoke(cli, ["info", "--zoo", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)
    assert [e["model"] for e in entries] == ["lenet5", "resnet20", "resnet110"]  # natural order, no timm
    assert (entries[0]["params"], entries[0]["macs"]) == (62_006, 651_720)
    assert (entries[1]["params"], entries[1]["macs"]) == (269_722, 40_551_040)
    assert entries[1]["options"] == {"shortcut": "A", "zero_init_residual": False}
    table = info.zoo_markdown(entries)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    assert ["resnet20", "shortcut=A, zero_init_residual=False", "269,722", "40,551,040"] in rows


@pytest.mark.parametrize("args, message", [
    (["info", "-m", "nosuchnet"], "error: unknown model 'nosuchnet'; choose from: airbench94, airbench95, airbench96, cnn3, cnn4"),
    (["info", "-m", "lenet5", "--model-opt", "width=2"], "error: model 'lenet5' has no option width"),
    (["info", "-m", "lenet5", "--input", "3x8x8"], "error: model 'lenet5': input 3x8x8 is too small"),
    (["info", "-m", "timm:test_vit", "--input", "3x28x28"], "error: model does not run on input 3x28x28"),
])
def test_cli_errors_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
