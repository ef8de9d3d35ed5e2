"""The training recipe: YAML in, a validated Recipe out, or a RecipeError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdistil.errors import RecipeError
from localdistil.training.recipe import Recipe, load_recipe, parse_recipe, resolve_data_files

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# recipes/accelerate/ holds accelerate launch configs, not recipes (tests/test_distributed.py)
SHIPPED = sorted(p for p in RECIPES.glob("**/*.yaml")
                 if "accelerate" not in p.relative_to(RECIPES).parts)

EXAMPLE = """\
# python -m localdistil train recipes/three_digit_multiply.yaml
model: smollm2-135m
data:
  train: [traces/three_digit_multiply.jsonl]   # files or globs of records
  function: fn                                  # optional filter when files hold several
  eval_fraction: 0.1                            # or a separate eval file
lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}
train: {epochs: 3, max_steps: null, batch_size: 8, learning_rate: 2.0e-4, max_length: 512, seed: 0}
output: {dir: runs/three_digit_multiply}
"""

MINIMAL = {"model": "smollm2-135m", "data": {"train": ["traces/fn.jsonl"]}}


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def recipe_error(data, overrides=()) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        parse_recipe(data, overrides)
    return info.value


def with_section(section: str, **values) -> dict:
    return {**MINIMAL, section: {**MINIMAL.get(section, {}), **values}}


def test_the_documented_example_loads(tmp_path):
    recipe = load_recipe(write(tmp_path, EXAMPLE))

    assert recipe.model == "smollm2-135m"
    assert recipe.data.train == ["traces/three_digit_multiply.jsonl"]
    assert recipe.data.function == "fn"
    assert recipe.data.eval_fraction == 0.1
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout) == (16, 32, 0.05)
    assert recipe.lora.target_modules == "all-linear"
    assert recipe.train.epochs == 3 and recipe.train.max_steps is None
    assert recipe.train.learning_rate == pytest.approx(2e-4)
    assert (recipe.train.batch_size, recipe.train.max_length, recipe.train.seed) == (8, 512, 0)
    assert recipe.output.dir == "runs/three_digit_multiply"
    assert recipe.source == tmp_path / "recipe.yaml"


def test_only_model_and_data_train_are_required_and_the_rest_defaults():
    recipe = parse_recipe(MINIMAL)

    assert recipe.data.eval is None and recipe.data.function is None
    assert recipe.data.eval_fraction == 0.1 and recipe.data.dedup is True
    assert (recipe.data.prompt_style, recipe.data.completion) == ("compact", "json")
    lora = recipe.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (16, 32, 0.0, "all-linear")
    train = recipe.train
    assert (train.epochs, train.max_steps, train.batch_size) == ("auto", None, 8)
    assert train.gradient_accumulation_steps == 1
    assert (train.learning_rate, train.lr_scheduler) == ("auto", "cosine")
    assert not train.group_by_length
    assert (train.warmup_ratio, train.weight_decay) == (0.03, 0.0)
    assert (train.max_length, train.seed) == (512, 0)
    assert (train.precision, train.quantization) == ("auto", "none")
    assert not (train.gradient_checkpointing or train.packing or train.padding_free)
    assert (train.logging_steps, train.save_steps, train.save_total_limit) == (10, 50, 2)
    assert (train.eval_steps, train.eval_samples) == (None, 50)
    assert (train.eval_every, train.patience) == (None, 2)
    gate = recipe.gate
    assert (gate.min_exact, gate.min_valid, gate.not_worse) == (0.95, 1.0, True)
    assert (recipe.output.dir, recipe.output.plot) == ("runs/model", True)
    assert recipe.source is None


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid_and_says_how_to_run_it(path):
    recipe = load_recipe(path)

    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    relative = path.relative_to(RECIPES).as_posix()
    assert first_line == f"# python -m localdistil train recipes/{relative}"
    assert recipe.source == path


def test_the_shipped_recipes_are_found():
    names = {path.name for path in SHIPPED}
    assert {"three_digit_multiply.yaml", "qwen2.5-0.5b-gpu.yaml"} <= names


def test_a_single_string_for_data_train_becomes_a_list():
    recipe = parse_recipe({"model": "m", "data": {"train": "traces/*.jsonl", "eval": "held.jsonl"}})

    assert recipe.data.train == ["traces/*.jsonl"]
    assert recipe.data.eval == ["held.jsonl"]


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({**MINIMAL, "modle": "x"}, "modle", "Did you mean 'model'?"),
        (with_section("train", learnig_rate=1e-4), "train.learnig_rate",
         "Did you mean 'train.learning_rate'?"),
        (with_section("lora", dropuot=0.1), "lora.dropuot", "Did you mean 'lora.dropout'?"),
        (with_section("data", eval_frac=0.2), "data.eval_frac",
         "Did you mean 'data.eval_fraction'?"),
    ],
)
def test_an_unknown_key_is_rejected_with_the_nearest_valid_key(data, key, suggestion):
    error = recipe_error(data)

    assert error.key == key
    assert f"{key}: unknown key. {suggestion}" in str(error)


def test_a_non_string_key_is_an_unknown_key():
    error = recipe_error({**MINIMAL, 1: "x"})

    assert error.key == "1" and "1: unknown key. Valid keys: model, data" in str(error)


def test_yaml_1_1_exponent_without_a_dot_is_still_a_number(tmp_path):
    # PyYAML reads `2e-4` (no dot) as the string '2e-4'; the recipe still takes it as a float
    text = "model: m\ndata: {train: a.jsonl}\ntrain: {learning_rate: 2e-4}\n"
    recipe = load_recipe(write(tmp_path, text))

    assert recipe.train.learning_rate == pytest.approx(2e-4)


def test_an_unknown_key_with_no_near_match_lists_the_valid_keys():
    error = recipe_error(with_section("output", zzz=1))

    assert "output.zzz: unknown key. Valid keys under output: dir, plot" in str(error)


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        (with_section("train", batch_size="eight"), "train.batch_size", "valid integer"),
        (with_section("train", epochs=0), "train.epochs", "greater than 0"),
        (with_section("data", eval_fraction=0.7), "data.eval_fraction", "less than or equal"),
        (with_section("train", precision="fp8"), "train.precision", "'bf16'"),
        (with_section("lora", target_modules="q_proj"), "lora.target_modules", "[q_proj]"),
        (with_section("lora", target_modules=[]), "lora.target_modules", "empty"),
        ({**MINIMAL, "lora": 5}, "lora", "dictionary"),
        ({"model": "m", "data": {"train": ["a.jsonl", ""]}}, "data.train[1]", "at least 1 char"),
    ],
)
def test_a_wrong_value_names_its_key(data, key, words):
    error = recipe_error(data)

    assert error.key == key
    line = next(line for line in str(error).splitlines() if line.strip().startswith(f"{key}:"))
    assert words in line


def test_every_problem_is_listed_and_missing_keys_are_named():
    error = recipe_error({"data": {}, "train": {"batch_size": 0}})

    message = str(error)
    assert error.key == "model"
    assert "model: required key is missing" in message
    assert "data.train: required key is missing" in message
    assert "train.batch_size: Input should be greater than 0" in message


def test_a_wrong_type_in_the_file_names_the_file_and_key(tmp_path):
    path = write(tmp_path, "model: m\ndata: {train: a.jsonl}\ntrain: {max_length: long}\n")

    with pytest.raises(RecipeError) as info:
        load_recipe(path)

    assert info.value.key == "train.max_length"
    assert str(path) in str(info.value) and "train.max_length: " in str(info.value)


@pytest.mark.parametrize(
    ("data", "key", "both"),
    [
        (with_section("data", eval=["held.jsonl"], eval_fraction=0.2),
         "data.eval", ("data.eval", "data.eval_fraction")),
        (with_section("train", quantization="4bit", precision="fp32"),
         "train.quantization", ("train.quantization", "train.precision")),
        ({**with_section("data", eval_fraction=0), "train": {"eval_steps": 10}},
         "train.eval_steps", ("train.eval_steps", "data.eval_fraction")),
        ({**with_section("data", eval_fraction=0), "train": {"eval_every": 10}},
         "train.eval_every", ("train.eval_every", "data.eval_fraction")),
        (with_section("train", eval_every=10, eval_samples=0),
         "train.eval_every", ("train.eval_every", "train.eval_samples")),
    ],
)
def test_a_cross_field_conflict_names_both_keys(data, key, both):
    error = recipe_error(data)

    assert error.key == key
    assert all(name in str(error) for name in both)


def test_separate_eval_files_replace_the_split():
    recipe = parse_recipe(with_section("data", eval=["held_out.jsonl"]))
    assert recipe.data.eval_fraction == 0

    explicit_zero = parse_recipe(with_section("data", eval=["held_out.jsonl"], eval_fraction=0))
    assert explicit_zero.data.eval_fraction == 0


def test_packing_and_padding_free_together_and_4bit_with_bf16_are_accepted():
    train = {"packing": True, "padding_free": True, "quantization": "4bit", "precision": "bf16"}

    recipe = parse_recipe({**MINIMAL, "train": train})

    assert recipe.train.model_dump(include=set(train)) == train


def test_overrides_parse_numbers_null_lists_and_nested_keys(tmp_path):
    path = write(tmp_path, EXAMPLE.replace("max_steps: null", "max_steps: 500"))

    recipe = load_recipe(path, [
        "train.max_steps=20",
        "train.learning_rate=1e-4",
        "output.dir=/tmp/x",
        "lora.target_modules=[q_proj,v_proj]",
        "data.function=null",
        "model=Qwen/Qwen2.5-0.5B-Instruct",
    ])

    assert recipe.train.max_steps == 20
    assert recipe.train.learning_rate == pytest.approx(1e-4)
    assert recipe.output.dir == "/tmp/x"
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.data.function is None
    assert recipe.model == "Qwen/Qwen2.5-0.5B-Instruct"


def test_an_override_can_null_a_value_and_fill_a_section_the_file_leaves_out():
    overrides = ["train.max_steps=null", "lora.r=4", "lora.alpha=8"]

    recipe = parse_recipe({**MINIMAL, "train": {"max_steps": 7}}, overrides)

    assert recipe.train.max_steps is None
    assert (recipe.lora.r, recipe.lora.alpha) == (4, 8)


def test_later_overrides_win_and_the_input_mapping_is_not_changed():
    data = {**MINIMAL, "train": {"seed": 1}}

    recipe = parse_recipe(data, ["train.seed=2", "train.seed=3"])

    assert recipe.train.seed == 3
    assert data["train"] == {"seed": 1}


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("train.max_steps", "train.max_steps", "is not key=value"),
        ("=3", None, "is not key=value"),
        ("train.learnig_rate=1e-3", "train.learnig_rate", "Did you mean 'train.learning_rate'?"),
        ("trian.seed=1", "trian", "Did you mean 'train'?"),
        ("train.max_steps.x=1", "train.max_steps.x", "train.max_steps is a value, not a section"),
        ("lora.target_modules=[q_proj", "lora.target_modules", "not valid YAML"),
    ],
)
def test_a_bad_override_is_named(override, key, words):
    error = recipe_error(MINIMAL, [override])

    assert error.key == key
    assert repr(override) in str(error) and words in str(error)


def test_an_override_value_of_the_wrong_type_names_the_key():
    error = recipe_error(MINIMAL, ["train.batch_size=big"])

    assert error.key == "train.batch_size"


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "model: m\ndata:\n  train: [a.jsonl\nlora: {r: 8}\n")

    with pytest.raises(RecipeError) as info:
        load_recipe(path)

    assert f"{path}:4:" in str(info.value)
    assert "invalid YAML" in str(info.value)


def test_a_key_given_twice_is_an_error_with_its_line(tmp_path):
    path = write(tmp_path, "model: m\ndata: {train: a.jsonl}\ntrain:\n  seed: 1\n  seed: 2\n")

    with pytest.raises(RecipeError) as info:
        load_recipe(path)

    assert f"{path}:5:" in str(info.value) and "'seed' appears twice" in str(info.value)


def test_a_missing_recipe_file_is_named(tmp_path):
    path = tmp_path / "nope.yaml"

    with pytest.raises(RecipeError, match="no such recipe file") as info:
        load_recipe(path)

    assert str(path) in str(info.value)


@pytest.mark.parametrize(("text", "words"), [("", "empty"), ("- model: m\n", "must be a mapping")])
def test_a_recipe_that_is_not_a_mapping_is_rejected(tmp_path, text, words):
    path = write(tmp_path, text)

    with pytest.raises(RecipeError, match=words) as info:
        load_recipe(path)

    assert str(path) in str(info.value)


def test_to_yaml_round_trips_and_leaves_out_the_source(tmp_path):
    overrides = ["lora.target_modules=[q_proj,v_proj]", "data.eval=held.jsonl"]
    recipe = load_recipe(write(tmp_path, EXAMPLE.replace("  eval_fraction: 0.1", "")), overrides)

    text = recipe.to_yaml()
    again = load_recipe(write(tmp_path, text, "again.yaml"))

    assert again == recipe and again.source != recipe.source
    assert again.as_dict() == recipe.as_dict()
    assert "source" not in recipe.as_dict() and str(tmp_path) not in text


def test_as_dict_is_plain_data_with_every_default():
    as_dict = parse_recipe(MINIMAL).as_dict()

    assert set(as_dict) == {"model", "data", "lora", "train", "gate", "output"}
    assert as_dict["train"]["eval_samples"] == 50 and as_dict["output"]["plot"] is True


def test_every_field_is_documented_where_it_is_declared():
    names = ("data", "lora", "train", "gate", "output")
    sections = [Recipe, *(Recipe.model_fields[name].annotation for name in names)]

    undocumented = [f"{section.__name__}.{name}" for section in sections
                    for name, field in section.model_fields.items() if not field.description]

    assert undocumented == []


def test_data_files_expand_globs_and_directories_relative_to_the_working_directory(
        tmp_path, monkeypatch):
    (tmp_path / "traces" / "old").mkdir(parents=True)
    for name in ("b.jsonl", "a.jsonl", "old/c.jsonl"):
        (tmp_path / "traces" / name).write_text("{}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    files = resolve_data_files(["traces/*.jsonl", "traces/a.jsonl", "traces/**/c.jsonl"])
    assert files == [Path("traces/a.jsonl"), Path("traces/b.jsonl"), Path("traces/old/c.jsonl")]

    data = {"train": "traces", "eval": "traces/old/c.jsonl"}
    recipe = parse_recipe({"model": "m", "data": data})
    assert recipe.data.train_files() == [Path("traces/a.jsonl"), Path("traces/b.jsonl")]
    assert recipe.data.eval_files() == [Path("traces/old/c.jsonl")]
    assert parse_recipe(MINIMAL).data.eval_files() == []


@pytest.mark.parametrize("pattern", ["traces/missing.jsonl", "traces/*.csv", "traces"])
def test_a_data_pattern_that_matches_nothing_names_the_key(tmp_path, monkeypatch, pattern):
    (tmp_path / "traces").mkdir()
    monkeypatch.chdir(tmp_path)

    with pytest.raises(RecipeError) as info:
        resolve_data_files([pattern], key="data.eval")

    assert info.value.key == "data.eval"
    assert str(info.value).startswith("data.eval: ") and repr(pattern) in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_the_gate_section_is_checked_and_overridden_like_the_others():
    recipe = parse_recipe(MINIMAL, ["gate.min_exact=0.8", "gate.not_worse=false"])
    assert (recipe.gate.min_exact, recipe.gate.not_worse) == (0.8, False)

    with pytest.raises(RecipeError) as info:
        parse_recipe(MINIMAL, ["gate.min_valid=1.5"])
    assert info.value.key == "gate.min_valid" and "less than or equal to 1" in str(info.value)
    with pytest.raises(RecipeError, match="Did you mean 'gate.min_exact'"):
        parse_recipe({**MINIMAL, "gate": {"min_exat": 0.9}})
