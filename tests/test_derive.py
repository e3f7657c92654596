"""Derived drafts on the tiny f32 target: each kind loads, stacks under its target, speculates losslessly,
and bad input ends in one clear error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from gguf import GGUFReader
from tiny_gguf import write_not_gguf

from edge_spec import derive as derive_module
from edge_spec.api import Pyramid
from edge_spec.backend import Tier, TierConfig
from edge_spec.cli import main
from edge_spec.derive import Derived, Recipe, derive, parse_kind, quantize
from edge_spec.errors import ConfigError, ModelError
from edge_spec.pyramid import StageConfig

EXACT = TierConfig(n_ctx=256, cache_type="f32", flash_attn=False, n_threads=1, n_gpu_layers=0)
"""Batched and single-token decodes agree to ~1e-5: a lossless pyramid then matches the target exactly."""
PROMPT = "hello world"
N_TOKENS = 48
KINDS = ["q8_0", "q4_0", "q2_k", "mxfp4", "prune:1", "q4_0+prune:1"]


@pytest.fixture(scope="module")
def derived(tiny_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Derived]:
    """Derive (once per kind) a draft from the 2-block tiny target."""
    out_dir = tmp_path_factory.mktemp("derived")
    cache: dict[str, Derived] = {}

    def get(kind: str) -> Derived:
        if kind not in cache:
            cache[kind] = derive(tiny_target, kind, out_dir, threads=1)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def target_alone(tiny_target: Path) -> list[int]:
    """The target's own greedy continuation of PROMPT."""
    with Tier(tiny_target, EXACT) as target:
        return Pyramid(target).generate(PROMPT, max_tokens=N_TOKENS, raw=True).token_ids


def _weight_types(path: Path) -> dict[str, str]:
    """Tensor name -> ggml type name, for the 2-D weights."""
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) == 2}


def test_parse_kind() -> None:
    assert parse_kind("q4_0") == Recipe("q4_0", None)
    assert parse_kind("prune:16") == Recipe(None, 16)
    assert parse_kind("Q4_0 + prune:16") == Recipe("q4_0", 16)
    assert parse_kind("prune:16+mxfp4").name == "mxfp4-prune16"


@pytest.mark.parametrize(
    "kind", ["q5_k", "", "q4_0+q8_0", "prune:2+prune:1", "prune:x", "prune:0", "prune:-1"]
)
def test_bad_kinds_are_config_errors(kind: str) -> None:
    with pytest.raises(ConfigError, match=r"derive kind|prune:N"):
        parse_kind(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_derived_draft_is_lossless_under_its_target(
    kind: str, derived: Callable[[str], Derived], tiny_target: Path, target_alone: list[int]
) -> None:
    d = derived(kind)
    assert d.path.is_file() and d.size == d.path.stat().st_size
    assert d.n_layer == (1 if "prune" in kind else 2)
    with Tier(tiny_target, EXACT) as target, Tier(d.path, EXACT) as draft:
        assert draft.n_layer == d.n_layer
        target.check_compatible(draft)
        pyr = Pyramid(target, None, draft, [StageConfig(lookahead="fixed:4")])
        result = pyr.generate(PROMPT, max_tokens=N_TOKENS, raw=True)
    assert result.token_ids == target_alone
    (stage,) = result.stats.stages
    assert stage.proposed > 0 and stage.accepted / stage.proposed > (0.9 if kind == "q8_0" else 0.3)


def test_tensor_types_follow_the_kind(derived: Callable[[str], Derived]) -> None:
    """q4_0 and mxfp4 cover every weight, the embeddings and output included; prune copies the kept blocks."""
    assert set(_weight_types(derived("q4_0").path).values()) == {"Q4_0"}
    assert set(_weight_types(derived("mxfp4").path).values()) == {"MXFP4"}
    pruned = _weight_types(derived("prune:1").path)
    assert set(pruned.values()) == {"F32"} and not any(name.startswith("blk.1.") for name in pruned)
    assert "blk.0.attn_q.weight" in pruned and "output.weight" in pruned


def test_fallbacks_are_reported(derived: Callable[[str], Derived]) -> None:
    """Q2_K needs 256-value rows: the tiny model's 128-value rows fall back to Q4_0, and the notes say so."""
    d = derived("q2_k")
    assert d.fallbacks and all(f.row_length == 128 and f.used == "q4_0" for f in d.fallbacks)
    notes = d.notes()  # one per wanted type: Q2_K's mix asks q3_K for some tensors
    assert all(" tensor(s) with 128-value rows stored as q4_0, not q" in n for n in notes)
    assert sum(int(n.split()[0]) for n in notes) == len(d.fallbacks)


def test_default_out_is_the_model_cache(
    tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SPEC_MODEL_DIR", str(tmp_path / "cache"))
    d = derive(tiny_target, "prune:1", threads=1)
    assert d.path == tmp_path / "cache" / f"{tiny_target.stem}-prune1.gguf"
    assert sorted(p.name for p in d.path.parent.iterdir()) == [d.path.name]  # no partial file left


@pytest.mark.parametrize("kind", ["prune:2", "prune:9"])
def test_pruning_every_block_is_refused(kind: str, tiny_target: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fewer blocks than target\.gguf has \(2\): use 1 to 1"):
        derive(tiny_target, kind, tmp_path / "d.gguf")


def test_missing_or_bad_target(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        derive(tmp_path / "missing.gguf", "q8_0", tmp_path / "d.gguf")
    with pytest.raises(ModelError, match="cannot read GGUF"):
        derive(write_not_gguf(tmp_path / "text.gguf"), "q8_0", tmp_path / "d.gguf")


def test_unwritable_out_and_overwriting_the_target(tiny_target: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="cannot write"):
        derive(tiny_target, "q8_0", a_file / "d.gguf")
    with pytest.raises(ConfigError, match="would overwrite its target"):
        derive(tiny_target, "q8_0", tiny_target)


def test_a_failed_quantization_leaves_no_file(
    tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(src: Path, dst: Path, **_: object) -> None:
        dst.write_bytes(b"half")
        raise ModelError("llama.cpp could not quantize")

    monkeypatch.setattr(derive_module, "quantize", failing)
    with pytest.raises(ModelError):
        derive(tiny_target, "q8_0", tmp_path / "d.gguf")
    assert list(tmp_path.iterdir()) == []


def test_llama_cpp_reason_is_in_the_error(tmp_path: Path) -> None:
    not_gguf = write_not_gguf(tmp_path / "text.gguf")
    with pytest.raises(ModelError, match=r"could not quantize text\.gguf: .*failed to load model"):
        quantize(not_gguf, tmp_path / "d.gguf", file_type="q8_0", threads=1)
    with pytest.raises(ConfigError, match="unknown tensor type"):
        quantize(not_gguf, tmp_path / "d.gguf", file_type="q8_0", tensor_types={".": "q3_k"})


@pytest.fixture
def cli() -> Callable[..., Result]:
    """`edge-spec derive ARGS...` in this process."""
    runner = CliRunner()
    return lambda *args: runner.invoke(main, ["derive", *map(str, args)])


def test_cli_prints_the_path_and_a_summary(
    cli: Callable[..., Result], tiny_target: Path, tmp_path: Path
) -> None:
    result = cli(tiny_target, "--kind", "q2_k", "--out", tmp_path, "--threads", 1)
    assert result.exit_code == 0, result.stderr
    path = tmp_path / f"{tiny_target.stem}-q2_k.gguf"
    assert result.stdout == f"{path}\n"
    notes = result.stderr.splitlines()
    assert "stored as q4_0" in notes[0] and notes[-1].startswith(
        f"edge-spec: derived {path} from target.gguf"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "q3"], "unknown derive kind 'q3'"),
        (["--kind", "prune:0"], "must keep at least one block"),
        (["--kind", "prune:2"], "must keep fewer blocks"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    cli: Callable[..., Result], tiny_target: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli(tiny_target, *args, "--out", tmp_path / "d.gguf")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("edge-spec: error: ") and message in line


def test_cli_missing_target_exits_2(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli(tmp_path / "missing.gguf", "--kind", "q8_0")
    assert result.exit_code == 2
    assert result.stderr == f"edge-spec: error: model file not found: {tmp_path / 'missing.gguf'}\n"
