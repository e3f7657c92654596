"""The memory planner: GGUF sizes against what llama.cpp allocates (tiny models), placement rules, the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_gguf import write_tiny_model

from edge_spec.backend import TierConfig, measure_allocation
from edge_spec.cli import main
from edge_spec.errors import ConfigError
from edge_spec.memory import GIB, MIB, ModelShape, max_parallel, output_rows, parse_size, plan, read_shape


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with 4 layers and 4 KV heads: a KV cache comparable to its weights."""
    return write_tiny_model(tmp_path_factory.mktemp("mem") / "wide.gguf", n_layer=4, n_head_kv=4)


@pytest.mark.parametrize(("n_ctx", "cache"), [(512, "f16"), (1024, "q8_0"), (2048, "q4_0"), (256, "f32")])
@pytest.mark.parametrize("model", ["tiny_target", "wide_model"])
def test_predictions_match_llama_cpp(
    model: str, n_ctx: int, cache: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(model)
    shape = read_shape(path)
    actual = measure_allocation(path, TierConfig(n_ctx=n_ctx, cache_type=cache, n_gpu_layers=0))
    kv = sum(v for k, v in actual.items() if k.startswith("KV:"))
    assert shape.weight_bytes == pytest.approx(actual["weights"], rel=0.10)
    assert shape.kv_bytes(n_ctx, cache) == pytest.approx(kv, rel=0.10)


@pytest.mark.parametrize(("n_ctx", "n_seq", "cache"), [(512, 2, "f16"), (256, 4, "q8_0"), (300, 3, "f32")])
def test_predictions_match_llama_cpp_for_sequences(
    wide_model: Path, n_ctx: int, n_seq: int, cache: str
) -> None:
    shape = read_shape(wide_model)
    config = TierConfig(n_ctx=n_ctx, n_seq=n_seq, cache_type=cache, n_gpu_layers=0)
    actual = measure_allocation(wide_model, config)
    kv = sum(v for k, v in actual.items() if k.startswith("KV:"))
    assert shape.kv_bytes(n_ctx, cache, n_seq=n_seq) == pytest.approx(kv, rel=0.01)  # 300 -> 512 cells each
    assert shape.kv_bytes(n_ctx, cache, n_seq=n_seq) == n_seq * shape.kv_bytes(n_ctx, cache)


def test_read_shape(tiny_target: Path) -> None:
    s = read_shape(tiny_target)
    assert (s.n_layer, s.n_embd, s.n_head, s.n_ctx_train) == (2, 128, 4, 2048)
    assert s.kv_width == (2 * 2 * 32, 2 * 2 * 32)  # 2 KV heads x (32 + 32)
    assert s.n_vocab > 400 and s.input_bytes == s.n_vocab * 128 * 4


def _shape(n_layer: int = 10, layer: int = 100 * MIB, vocab: int = 1000) -> ModelShape:
    return ModelShape(
        Path("m.gguf"), n_layer, vocab, 1024, 8, 32768, (layer,) * n_layer, MIB, MIB, (1024,) * n_layer
    )


def test_gpu_plan_puts_the_target_first_then_the_rest() -> None:
    shapes = {"target": _shape(), "draft": _shape(4)}
    p = plan(shapes, int(1.7 * GIB), n_ctx=4096, device="gpu")
    target, draft = p.tiers[1], p.tiers[0]
    assert (target.role, target.gpu_layers) == ("target", 11)  # all layers and the output head
    assert draft.role == "draft" and 0 < draft.gpu_layers < 5
    assert p.device_bytes <= p.usable and p.cache_type == "f16" and p.n_ctx == 4096


def test_gpu_plan_quantizes_the_cache_before_moving_target_layers_off() -> None:
    big_kv = replace(_shape(), kv_width=(64 * 1024,) * 10)  # 512 MiB f16 KV per layer at 4096 tokens
    p = plan({"target": big_kv}, 4 * GIB, n_ctx=4096, device="gpu")
    assert p.tiers[0].gpu_layers == 11 and p.cache_type in ("q8_0", "q4_0")


def test_cpu_plan_shrinks_context_and_nothing_fits_names_the_smallest() -> None:
    kv_heavy = replace(_shape(2, MIB), kv_width=(64 * 1024,) * 2)
    p = plan({"target": kv_heavy}, 2 * GIB, n_ctx=32768, device="cpu")
    assert p.n_ctx < 32768 and sum(t.host_bytes for t in p.tiers) <= p.usable
    with pytest.raises(
        ConfigError, match=r"do not fit in 1.00 GiB .* needs .* give --budget [\d.]+GB or more"
    ):
        plan({"target": _shape()}, GIB, device="cpu")


@pytest.mark.parametrize(
    ("text", "size"), [("8GB", 8 * GIB), ("8", 8 * GIB), ("512MB", 512 * MIB), ("1.5GiB", 3 * GIB // 2)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_cli_plan(tiny_target: Path, tiny_noisy: Path) -> None:
    args = [
        "plan",
        "--target",
        str(tiny_target),
        "--draft",
        str(tiny_noisy),
        "--ctx",
        "1024",
        "--device",
        "cpu",
    ]
    ok = CliRunner().invoke(main, [*args, "--budget", "2GB"])
    assert (
        ok.exit_code == 0 and "target.gguf" in ok.output and "context 1024 tokens, KV cache f16" in ok.output
    )
    bad = CliRunner().invoke(main, [*args, "--budget", "100MB"])
    assert bad.exit_code == 2 and "do not fit" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert CliRunner().invoke(main, [*args, "--budget", "lots"]).exit_code == 2


def test_run_with_budget_applies_the_plan(tiny_target: Path) -> None:
    args = ["run", "hello", "--target", str(tiny_target), "--budget", "4GB", "--max-tokens", "4", "--raw"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "budget plan: context 2048, KV cache f16" in result.output  # capped at the training length


def test_every_candidate_draft_is_placed_after_the_target() -> None:
    shapes = {"target": _shape(), "draft": _shape(4), "draft 2": _shape(4), "draft 3": _shape(2)}
    p = plan(shapes, int(2.2 * GIB), n_ctx=4096, device="gpu")
    assert [t.role for t in p.tiers] == ["draft 3", "draft 2", "draft", "target"]
    assert p.tiers[-1].gpu_layers == 11 and p.device_bytes <= p.usable
    cpu = plan(shapes, 4 * GIB, n_ctx=4096, device="cpu")
    one = plan({"target": _shape(), "draft": _shape(4)}, 4 * GIB, n_ctx=4096, device="cpu")
    assert sum(t.host_bytes for t in cpu.tiers) > sum(t.host_bytes for t in one.tiers)  # all counted
    with pytest.raises(ConfigError, match="at most a qualifier and drafts"):
        plan({"target": _shape(), "draft 2": _shape(4)}, 4 * GIB)  # a second draft without a first


def test_cli_plan_with_candidate_drafts(tiny_target: Path, tiny_noisy: Path, tiny_same: Path) -> None:
    args = ["plan", "--budget", "2GB", "--target", str(tiny_target), "--device", "cpu"]
    args += ["--draft", str(tiny_noisy), "--draft", "ngram", "--draft", str(tiny_same)]
    ok = CliRunner().invoke(main, args)
    assert ok.exit_code == 0, ok.output
    roles = [line.split()[0:2] for line in ok.output.splitlines() if line.startswith("draft")]
    assert roles == [["draft", "2"], ["draft", "noisy.gguf"]]
    assert "same.gguf" in ok.output


def test_output_rows() -> None:
    assert output_rows(1, 512) == output_rows(1, 8) == 32  # one sequence: as before
    assert output_rows(4, 512) == 128 and output_rows(64, 512) == 512  # a block each, one decode at most
    assert output_rows(4, 16) == 32


def test_plan_counts_every_sequence() -> None:
    shapes = {"target": _shape(), "draft": _shape(4)}
    one = plan(shapes, 8 * GIB, n_ctx=4096, device="cpu")
    four = plan(shapes, 8 * GIB, n_ctx=4096, device="cpu", n_seq=4)
    kv = _shape().kv_bytes(4096, "f16") + _shape(4).kv_bytes(4096, "f16")
    more_rows = 2 * 4 * 1000 * (128 - 32)  # two tiers, 1000-token vocabulary, float32
    assert sum(t.host_bytes for t in four.tiers) - sum(t.host_bytes for t in one.tiers) == 3 * kv + more_rows
    assert (four.n_ctx, four.cache_type, four.n_seq) == (4096, "f16", 4)
    assert "context 4096 tokens x 4 sequences, KV cache f16;" in four.table()
    assert "context 4096 tokens, KV cache f16;" in one.table()


def test_plan_batch_holds_tokens_of_every_sequence() -> None:
    small = {"target": _shape(2, MIB)}
    one, two = (plan(small, 8 * GIB, n_ctx=256, n_batch=512, device="cpu", n_seq=n) for n in (1, 2))
    kv = _shape(2, MIB).kv_bytes(256, "f16")
    compute = 4 * (512 - 256) * (1000 + 4 * 1024)  # a batch of 512 tokens, not 256
    rows = 4 * 1000 * (64 - 32)
    assert two.tiers[0].host_bytes - one.tiers[0].host_bytes == kv + compute + rows


def test_plan_shrinks_the_context_of_each_sequence() -> None:
    kv_heavy = replace(_shape(2, MIB), kv_width=(64 * 1024,) * 2)  # 256 KiB of f16 KV per position
    contexts = [
        plan({"target": kv_heavy}, 2 * GIB, n_ctx=32768, device="cpu", n_seq=n).n_ctx for n in (1, 2, 4)
    ]
    assert contexts == [16384, 8192, 4096]  # the same q4_0 KV cache, shared out
    assert plan({"target": kv_heavy}, 2 * GIB, n_ctx=4096, device="cpu", cache_type="f16").cache_type == "f16"


def test_max_parallel_on_cpu() -> None:
    # 1 GiB leaves 512 MiB usable: weights 4 MiB, compute 9.95 MiB (512-token batch), output buffer 1.95 MiB
    # (512 rows), 16 MiB of f16 KV cache per 4096-token sequence: 31 sequences (511.9 MiB), not 32.
    small = {"target": _shape(2, MIB)}
    assert max_parallel(small, GIB, n_ctx=4096, device="cpu", most=64) == 31
    assert max_parallel(small, GIB, n_ctx=4096, device="cpu", most=8) == 8
    assert max_parallel(small, GIB, n_ctx=4096, n_batch=16, device="cpu", most=64) == 16  # a row each
    # a q4_0 cache: 4.5 MiB per sequence, floor(496.1 / 4.5) = 110
    assert max_parallel(small, GIB, n_ctx=4096, device="cpu", cache_type="q4_0", most=256) == 110
    kv_heavy = replace(_shape(2, MIB), kv_width=(64 * 1024,) * 2)  # a second sequence would halve the context
    assert max_parallel({"target": kv_heavy}, 2 * GIB, n_ctx=32768, device="cpu", most=64) == 1
    with pytest.raises(ConfigError, match="do not fit"):
        max_parallel({"target": _shape()}, GIB, device="cpu", most=4)


def test_max_parallel_on_gpu_keeps_the_one_sequence_placement() -> None:
    shapes = {"target": _shape(), "draft": _shape(4)}
    # 2560 MiB usable; both tiers whole on the GPU take 1421.9 MiB plus 112 MiB of f16 KV per sequence
    # (8 MiB per layer at 4096 tokens): 10 sequences, where an 11th would need a q8_0 cache.
    n = max_parallel(shapes, 3 * GIB, n_ctx=4096, device="gpu", most=64)
    assert n == 10
    at_most = plan(shapes, 3 * GIB, n_ctx=4096, device="gpu", n_seq=n)
    assert (at_most.cache_type, [t.gpu_layers for t in at_most.tiers]) == ("f16", [5, 11])
    assert plan(shapes, 3 * GIB, n_ctx=4096, device="gpu", n_seq=n + 1).cache_type == "q8_0"
    # At 1.7 GiB a second sequence keeps the layers but costs the f16 cache: one sequence.
    assert max_parallel(shapes, int(1.7 * GIB), n_ctx=4096, device="gpu", most=64) == 1
