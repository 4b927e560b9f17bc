"""Notebook knobs behave as papermill users expect (greenkd_utils/settings/knobs.py, notebook_parameters.py,
notebooks.py).

- the parsers take what papermill sends (``-p seeds '[0, 1]'`` is the string "[0, 1]", ``-y`` real
  YAML values, ``-p seeds 3`` an int) and refuse anything else with an error naming the knob;
- the one set-up of every notebook parses its knobs before anything trains, and refuses a knob the
  notebook's family does not take, naming it and the ones it takes;
- the notebook-side check refuses a knob the notebook does not declare (papermill only warns);
- every notebook's parameters cell is readable by papermill and uses the canonical names, and the cell
  after it passes them all, once, to the one set-up.
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from notebook_runner import REPO, kernel_name

from greenkd_utils.paper import experiments as ex
from greenkd_utils.settings import knobs
from greenkd_utils.settings.knobs import parse
from greenkd_utils.settings.notebook_parameters import declared_knobs
from greenkd_utils.settings.notebooks import FAMILIES, NOTEBOOK_FAMILIES, read_knobs

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Knobs run_all.sh passes to every notebook, and the energy constants every notebook reports with.
EVERY_NOTEBOOK = ("profile", "device", "data_root", "results_dir", "output_dir", "pue", "carbon_intensity_g_per_kwh",
                  "executor", "ray_address")


# -- the parsers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, given, expected",
    [
        ("seeds", "[0, 1]", [0, 1]),  # papermill -p seeds '[0, 1]'
        ("seeds", "0,1", [0, 1]),
        ("seeds", " 0, 1 ", [0, 1]),
        ("seeds", [0, 1], [0, 1]),  # papermill -y / parameters={...}
        ("seeds", (0, 1), [0, 1]),
        ("seeds", range(2), [0, 1]),
        ("seeds", 3, [3]),  # papermill -p seeds 3: an int, one seed
        ("seeds", "3", [3]),
        ("seeds", None, None),
        ("seeds", "None", None),
        ("tau_grid", "[2, 4]", [2.0, 4.0]),
        ("tau_grid", "2,4.5", [2.0, 4.5]),
        ("tau_grid", [1, 2.5], [1.0, 2.5]),
        ("tau_grid", "[1e-3]", [0.001]),
        ("tau_grid", 4, [4.0]),
        ("epochs", 3, 3),
        ("epochs", "3", 3),
        ("epochs", 3.0, 3),  # YAML's 3.0
        ("teacher_epochs", "12", 12),
        ("lr", "0.05", 0.05),
        ("lr", "1e-3", 0.001),  # YAML 1.1 would leave this a string
        ("lr", 0.1, 0.1),
        ("datasets", "cifar10", ["cifar10"]),
        ("datasets", "[cifar10, cifar100]", ["cifar10", "cifar100"]),
        ("datasets", "cifar10,cifar100", ["cifar10", "cifar100"]),
        ("datasets", ["digits"], ["digits"]),
        ("losses", "[hkd, dml]", ["hkd", "dml"]),
        ("losses", "cmc", ["cmc"]),
        ("loss", "dml", "dml"),
        ("profile", "paper", "paper"),
        ("device", "cuda:1", "cuda:1"),
        ("device", "auto", "auto"),
        ("pue", "1.2", 1.2),
        ("pue", 1, 1.0),
        ("carbon_intensity_g_per_kwh", 0, 0.0),
        ("carbon_intensity_g_per_kwh", "350.5", 350.5),
        ("data_root", "/data", "/data"),
        ("data_root", Path("/data"), "/data"),
        ("results_dir", "", None),
        ("batch_sizes", "[8, 16]", [8, 16]),
        ("methods", "cmi", ["cmi"]),
        ("synthesis_batch_size", "2", 2),
        ("gradcam_target", "predicted", "predicted"),
        ("qat_backend", "auto", "auto"),
        ("teacher_model", "resnet18", "resnet18"),
    ],
)
def test_accepted_forms(name, given, expected):
    assert parse(name, given) == expected


@pytest.mark.parametrize(
    "name, given, says",
    [
        ("seeds", "abc", "whole number"),
        ("seeds", "[0, 0]", "more than once"),
        ("seeds", [], "empty"),
        ("seeds", [-1], "below 0"),
        ("seeds", "{a: 1}", "not a list"),
        ("seeds", "[0, 1", "not valid YAML"),
        ("epochs", 2.5, "whole number"),
        ("epochs", "abc", "whole number"),
        ("epochs", 0, "below 1"),
        ("epochs", True, "boolean"),
        ("epochs", [3], "whole number"),
        ("teacher_epochs", -1, "below 1"),
        ("lr", 0, "> 0"),
        ("lr", "fast", "not a number"),
        ("tau_grid", "[0, 2]", "> 0"),
        ("tau_grid", [-1.0], "> 0"),
        ("tau_grid", "[2, .inf]", "finite"),
        ("tau_grid", [float("nan")], "finite"),
        ("pue", 0.5, ">= 1"),
        ("pue", "inf", "finite"),
        ("carbon_intensity_g_per_kwh", -1, ">= 0"),
        ("carbon_intensity_g_per_kwh", float("nan"), "finite"),
        ("profile", "huge", "smoke, demo, paper"),
        ("profile", None, "smoke, demo, paper"),
        ("datasets", "mnist", "digits, cifar10, cifar100, tinyimagenet"),
        ("datasets", "[cifar10, imagenet]", "digits, cifar10, cifar100, tinyimagenet"),
        ("losses", "[hkd, kl]", "cmc, cmc_softmax, cmc_sum, dml, hkd"),
        ("loss", "ce", "cmc, cmc_softmax, cmc_sum, dml, hkd"),
        ("methods", "zskt", "deepinversion, cmi"),
        ("device", "gpu", "cpu, cuda"),
        ("results_dir", 3, "folder path"),
        ("synthesis_batch_size", 1, "below 2"),
        ("gradcam_target", "class", "label, predicted"),
    ],
)
def test_refused_forms_name_the_knob_and_what_it_accepts(name, given, says):
    with pytest.raises(ValueError) as info:
        parse(name, given)
    message = str(info.value)
    assert message.startswith(f"{name}=") and says in message and f"{name} accepts" in message


def test_every_knob_has_help_and_a_description_of_what_it_accepts():
    for name, knob in knobs.KNOBS.items():
        assert knob.name == name and knob.help and knob.accepts
    text = knobs.describe(["seeds", "profile"])
    assert text.splitlines()[0].startswith("seeds: ") and "None: the profile's" in text.splitlines()[0]
    assert "None" not in text.splitlines()[1]


def test_old_names_map_to_the_canonical_knob_with_a_future_warning():
    with pytest.warns(FutureWarning, match="'dataset' is now called 'datasets'"):
        assert knobs.coerce({"dataset": "cifar10"}) == {"datasets": ["cifar10"]}
    with pytest.warns(FutureWarning, match="carbon_intensity_g_per_kwh"):
        assert knobs.coerce({"carbon_intensity": "100"}) == {"carbon_intensity_g_per_kwh": 100.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an old name left at None says nothing
        assert knobs.coerce({"dataset": None, "seeds": "0,1", "not_a_knob": "as is"}) == {
            "seeds": [0, 1], "not_a_knob": "as is"}
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="disagree"):
        knobs.coerce({"carbon_intensity": 100, "carbon_intensity_g_per_kwh": 200})


# -- the setup functions parse before anything trains -------------------------------------------------
def test_experiment_setup_parses_papermill_strings(tmp_path):
    exp = ex.setup("smoke", results_dir=tmp_path, seeds="[0, 1]", tau_grid="2,4", epochs="3", lr="0.02",
                   pue="1.5", carbon_intensity_g_per_kwh="100", datasets="digits")
    assert exp.profile.seeds == (0, 1) and exp.profile.tau_grid == (2.0, 4.0)
    assert exp.profile.student_train["epochs"] == 3 and exp.profile.student_train["lr"] == 0.02
    assert exp.pue == 1.5 and exp.carbon_intensity == 100.0 and exp.profile.datasets == ("digits",)
    with pytest.warns(FutureWarning):
        assert ex.setup("smoke", results_dir=tmp_path, carbon_intensity=50).carbon_intensity == 50.0


@pytest.mark.parametrize(
    "knob, value",
    [("seeds", "abc"), ("epochs", 2.5), ("epochs", "abc"), ("epochs", 0), ("tau_grid", "[0, 2]"), ("pue", 0.5),
     ("carbon_intensity_g_per_kwh", -1), ("carbon_intensity_g_per_kwh", float("nan")), ("datasets", "mnist"),
     ("lr", -0.1), ("device", "gpu"), ("train_subset", 0)],
)
def test_experiment_setup_refuses_a_bad_value_by_name(tmp_path, knob, value):
    with pytest.raises(ValueError, match=f"^{knob}="):
        ex.setup("smoke", results_dir=tmp_path, **{knob: value})


def test_setup_refuses_an_unknown_profile_with_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown profile.*smoke, demo, paper"):
        ex.setup("huge", results_dir=tmp_path)


def test_the_setup_of_every_family_parses_and_refuses_by_name(tmp_path):
    with pytest.raises(ValueError, match="^seeds="):
        ex.setup("smoke", notebook="table7_teacher_student_pairs", results_dir=tmp_path, seeds="abc")
    with pytest.raises(ValueError, match="^epochs="):
        ex.setup("smoke", notebook="table6_dfkd", results_dir=tmp_path, epochs=2.5)
    with pytest.raises(ValueError, match="^synthesis_iterations="):
        ex.setup("smoke", notebook="table6_dfkd", results_dir=tmp_path, synthesis_iterations=0)
    with pytest.raises(ValueError, match="^tau_grid="):
        ex.setup("smoke", notebook="table4_detection", results_dir=tmp_path, tau_grid="[0, 2]")
    with pytest.raises(ValueError, match="^pue="):
        ex.setup("smoke", notebook="table4_detection", results_dir=tmp_path, pue=0.5)
    with pytest.raises(ValueError, match="^seeds="):
        ex.setup("smoke", notebook="beyond_temperature_strategies", results_dir=tmp_path, seeds="abc")

    exp = ex.setup("smoke", notebook="figure3_temperature_and_batch", results_dir=tmp_path,
                   datasets="[digits, cifar10]", seeds="0", lr="0.01", batch_sizes="8,16")
    assert exp.settings.dataset == "digits" and exp.settings.seeds == (0,) and exp.settings.lr == 0.01
    assert exp.settings.batch_sizes == (8, 16)
    exp = ex.setup("smoke", notebook="table6_dfkd", results_dir=tmp_path, methods="cmi", synthesis_iterations="2",
                   synthesis_batch_size=4, student_steps=1, lr="0.01", epochs=1)
    settings = exp.settings
    assert list(settings.methods) == ["cmi"] and settings.kd_steps == 1 and settings.train["lr"] == 0.01
    assert settings.synthesis("cmi").iterations == 2 and settings.synthesis("cmi").batch_size == 4
    detection = ex.setup("smoke", notebook="table4_detection", results_dir=tmp_path, lr="0.02", image_size="40",
                         num_workers=0)
    assert isinstance(detection, ex.DetectionExperiment)
    assert detection.profile.student_train["lr"] == 0.02 and detection.profile.image_size == 40
    with pytest.warns(FutureWarning):
        assert ex.setup("smoke", notebook="table4_detection", results_dir=tmp_path,
                        carbon_intensity=10).carbon_intensity == 10.0
    beyond = ex.setup("smoke", notebook="beyond_temperature_strategies", results_dir=tmp_path, seeds="0,1",
                      tau_grid="[2, 4]")
    assert beyond.settings.seeds == (0, 1) and beyond.settings.tau_grid == (2.0, 4.0)


def test_the_setup_refuses_a_knob_the_notebook_does_not_take_with_the_ones_it_takes(tmp_path):
    with pytest.raises(ValueError) as info:
        ex.setup("smoke", notebook="table4_detection", results_dir=tmp_path, margin_pct=1.0, datasets="digits")
    message = str(info.value)
    assert message.startswith("unknown knob(s) datasets, margin_pct for table4_detection; valid: ")
    assert "image_size" in message and "num_workers" in message
    with pytest.raises(ValueError, match="unknown knob.*epoch.*valid: .*epochs"):
        ex.setup("smoke", results_dir=tmp_path, epoch=3)
    with pytest.raises(ValueError, match="unknown notebook 'table9'; valid: 00_start_here"):
        ex.setup("smoke", notebook="table9", results_dir=tmp_path)


def test_the_setup_keeps_every_knob_parsed_for_the_cells_below(tmp_path):
    exp = ex.setup("smoke", notebook="figure4_logits_gradcam_confusion", results_dir=tmp_path, seed="1",
                   example_class="3", output_dir=str(tmp_path / "out"), executor="local")
    assert exp.knobs["seed"] == 1 and exp.knobs["example_class"] == 3 and exp.knobs["executor"] == "local"
    assert exp.knobs["profile"] == "smoke" and exp.output_dir() == tmp_path / "out"
    assert exp.notebook == "figure4_logits_gradcam_confusion" and exp.settings is None


# -- the notebook-side check --------------------------------------------------------------------------
PARAMETERS_CELL = 'profile = "demo"  # which scale\nseeds = None\ntau_grid = None\ndatasets = None\nepochs = None\n'
SETUP_CELL = ("from greenkd_utils.settings.notebook_parameters import declared_knobs\n"
              'exp = ex.setup(notebook="table1_carbon_footprint", **declared_knobs(globals()))')


def namespace(executed, **values):
    space = {"profile": "demo", "seeds": None, "tau_grid": None, "datasets": None, "epochs": None}
    space.update(values)
    space["In"] = ["", *executed]
    return space


def test_injected_strings_are_parsed():
    injected = '# Parameters\nprofile = "smoke"\nseeds = "[0, 1]"\ntau_grid = "[2, 4]"\n'
    space = namespace([PARAMETERS_CELL, injected, SETUP_CELL], profile="smoke", seeds="[0, 1]", tau_grid="[2, 4]")
    assert declared_knobs(space) == {
        "profile": "smoke", "seeds": [0, 1], "tau_grid": [2.0, 4.0], "datasets": None, "epochs": None}


def test_an_injected_knob_the_notebook_does_not_declare_is_refused_by_name():
    injected = '# Parameters\nprofile = "smoke"\nno_such_knob = 7\nseed = 1\n'
    space = namespace([PARAMETERS_CELL, injected, SETUP_CELL], profile="smoke", no_such_knob=7, seed=1)
    with pytest.raises(ValueError) as info:
        declared_knobs(space)
    message = str(info.value)
    assert "no_such_knob, seed" in message and "profile, seeds, tau_grid, datasets, epochs" in message


def test_a_bad_injected_value_is_refused_by_name():
    injected = '# Parameters\nepochs = "abc"\n'
    with pytest.raises(ValueError, match="^epochs='abc'"):
        declared_knobs(namespace([PARAMETERS_CELL, injected, SETUP_CELL], epochs="abc"))


def test_an_old_name_maps_to_its_knob():
    injected = '# Parameters\ndataset = "cifar10"\n'
    space = namespace([PARAMETERS_CELL, injected, SETUP_CELL], dataset="cifar10")
    with pytest.warns(FutureWarning, match="datasets"):
        assert declared_knobs(space)["datasets"] == ["cifar10"]
    # An old name whose knob this notebook does not have is unknown like any other.
    injected = '# Parameters\ncarbon_intensity = 100\n'
    with pytest.raises(ValueError, match="unknown notebook parameter.*carbon_intensity"):
        declared_knobs(namespace([PARAMETERS_CELL, injected, SETUP_CELL], carbon_intensity=100))


def test_without_papermill_the_declared_values_are_parsed():
    # JupyterLab: the user edited the parameters cell, ran a few cells, then the setup cell again.
    edited = PARAMETERS_CELL.replace("seeds = None", 'seeds = "0,1"')
    space = namespace([edited, SETUP_CELL, "print(1)", SETUP_CELL], seeds="0,1", debug=True)
    assert declared_knobs(space)["seeds"] == [0, 1]
    # A parameters cell of its own that starts like papermill's is not mistaken for an injected one.
    own = "# Parameters of this notebook\n" + PARAMETERS_CELL
    space = namespace(["import os", own, SETUP_CELL], epochs="2")
    assert declared_knobs(space)["epochs"] == 2
    # A cell of assignments run after the parameters cell (as JupyterLab users and a Jupyter-server test
    # inject values) changes some knobs and keeps the others.
    space = namespace([PARAMETERS_CELL, 'profile = "smoke"\nseeds = "0,1"', SETUP_CELL], profile="smoke",
                      seeds="0,1")
    assert declared_knobs(space) == {
        "profile": "smoke", "seeds": [0, 1], "tau_grid": None, "datasets": None, "epochs": None}
    # No IPython history at all (a plain script): every knob found in the namespace is parsed.
    assert declared_knobs({"seeds": "[3]", "profile": "smoke", "other": 1}) == {
        "profile": "smoke", "seeds": [3]}


# -- the notebooks as committed -----------------------------------------------------------------------
def parameters_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def declared(path: Path) -> list:
    return [t.id for s in ast.parse(parameters_cell(path)).body for t in s.targets]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_recognises_every_declared_knob(path):
    import papermill as pm

    inspected = pm.inspect_notebook(str(path))
    assert list(inspected) == declared(path), "papermill cannot read some lines (an '=' in a comment?)"
    for name, parameter in inspected.items():
        assert parameter["help"], f"{path.stem}: {name} has no comment saying what it is"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_share_the_canonical_knob_names(path):
    names = declared(path)
    assert not set(names) & set(knobs.ALIASES), f"{path.stem} declares an old name"
    unknown = [n for n in names if n not in knobs.KNOBS]
    assert not unknown, f"{path.stem} declares knobs the registry does not know: {unknown}"
    missing = [n for n in EVERY_NOTEBOOK if n not in names]
    assert not missing, f"{path.stem} lacks {missing} (run_all.sh passes data_root and device to every notebook)"
    assert names[0] == "profile"
    # The declared defaults are valid values of their knobs.
    defaults = {t.id: ast.literal_eval(s.value) for s in ast.parse(parameters_cell(path)).body for t in s.targets}
    for name, value in defaults.items():
        parse(name, value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_cell_after_the_parameters_passes_them_once_to_the_one_setup(path):
    nb = nbformat.read(path, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    setup = next(c for c in nb.cells[index + 1:] if c.cell_type == "code")
    statements = [s for s in ast.parse(setup.source).body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    assert ast.unparse(statements[0]) == f"exp = ex.setup(notebook='{path.stem}', **declared_knobs(globals()))"
    # No statement reads a knob's raw value (papermill's string, maybe) before binding the name again: the
    # parsed values are exp.knobs.
    raw, statements = set(declared(path)), []
    for cell in nb.cells[index + 1:]:
        statements += ast.parse(cell.source).body if cell.cell_type == "code" else []
    for statement in statements:
        names = [n for n in ast.walk(statement) if isinstance(n, ast.Name)]
        read = {n.id for n in names if isinstance(n.ctx, ast.Load)} & raw
        assert not read, f"{path.stem} reads the raw knobs {sorted(read)}: {ast.unparse(statement)[:80]}"
        raw -= {n.id for n in names if isinstance(n.ctx, ast.Store)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_one_setup_takes_every_knob_the_notebook_declares(path):
    defaults = {t.id: ast.literal_eval(s.value) for s in ast.parse(parameters_cell(path)).body for t in s.targets}
    chosen = read_knobs(path.stem, **{**defaults, "profile": "smoke"})
    assert set(chosen.knobs) == set(defaults)


def test_every_notebook_has_a_family_and_every_family_a_notebook():
    assert sorted(NOTEBOOK_FAMILIES) == [p.stem for p in NOTEBOOKS]
    assert set(NOTEBOOK_FAMILIES.values()) == set(FAMILIES)


# The beyond notebook takes no lr: its students train at the profile's (they are Tables 1 and 4's).
STUDENT_LR_FROM_ITS_OWN_SETTINGS = {"beyond_temperature_strategies"}
# Notebooks that only read the run store.
TRAINS_NOTHING = {"explore_runs"}


def test_every_notebook_that_trains_a_student_offers_lr():
    without = [p.stem for p in NOTEBOOKS if "lr" not in declared(p)
               and p.stem not in STUDENT_LR_FROM_ITS_OWN_SETTINGS | TRAINS_NOTHING]
    assert not without


# -- real papermill runs --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("papermill_knobs")


@pytest.fixture(scope="module", autouse=True)
def one_thread_quiet_kernels():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("GREENKD_PROGRESS", "0")
        yield


def papermill_cli(run_dir: Path, name: str, tag: str, *arguments: str) -> subprocess.CompletedProcess:
    """``papermill`` as a user types it, so ``-p`` values arrive as papermill's command line makes them."""
    out = run_dir / tag
    command = [
        sys.executable, "-m", "papermill", str(REPO / "notebooks" / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
        "-k", kernel_name(), "--cwd", str(REPO / "notebooks"),
        "-p", "profile", "smoke", "-p", "results_dir", str(run_dir / "results"), "-p", "output_dir", str(out),
        *arguments,
    ]
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def executed_text(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.notebook
def test_papermill_strings_reach_the_notebook_parsed(run_dir):
    done = papermill_cli(run_dir, "table1_carbon_footprint", "strings",
                         "-p", "seeds", "[0]", "-p", "tau_grid", "[2, 4]", "-p", "epochs", "1",
                         "-p", "teacher_epochs", "1", "-p", "dataset", "digits", "-p", "carbon_intensity_g_per_kwh", "100")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(run_dir / "strings" / "table1.csv")
    assert (table["n_seeds"] == 1).all() and set(table["dataset"]) == {"digits"}
    assert set(table.loc[table["method"] == "kd_tuned", "grid_size"]) == {2}
    summary = json.loads((run_dir / "strings" / "table1_carbon_footprint.summary.json").read_text())
    assert summary["carbon_intensity_g_per_kwh"] == 100.0
    assert "FutureWarning" in executed_text(run_dir / "strings" / "table1_carbon_footprint.ipynb")


@pytest.mark.notebook
def test_papermill_yaml_values_reach_the_notebook(run_dir):
    import papermill as pm

    out = run_dir / "yaml"
    out.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(REPO / "notebooks" / "table1_carbon_footprint.ipynb"), str(out / "table1_carbon_footprint.ipynb"),
        parameters={"profile": "smoke", "results_dir": str(run_dir / "results"), "output_dir": str(out),
                    "seeds": [0], "tau_grid": [2.0, 4.0], "epochs": 1, "teacher_epochs": 1, "datasets": ["digits"],
                    "pue": 1.2},
        kernel_name=kernel_name(), cwd=str(REPO / "notebooks"), progress_bar=False,
    )
    table = pd.read_csv(out / "table1.csv")
    assert (table["n_seeds"] == 1).all() and len(table) == 4
    summary = json.loads((out / "table1_carbon_footprint.summary.json").read_text())
    assert summary["pue"] == 1.2 and math.isclose(summary["carbon_intensity_g_per_kwh"], 294.0)


@pytest.mark.notebook
def test_papermill_with_an_unknown_knob_fails_naming_it(run_dir):
    done = papermill_cli(run_dir, "00_start_here", "unknown", "-p", "no_such_knob", "7")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "unknown notebook parameter(s) no_such_knob" in output
    assert "this notebook's knobs: profile, epochs" in output
    assert not (run_dir / "unknown" / "start_here_softmax_temperature.png").exists()  # it stopped before drawing
