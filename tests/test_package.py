import subprocess
import sys

import pytest


@pytest.mark.parametrize("modules", [
    "fgexp, fgexp.tangents, fgexp.aggregate, fgexp.directional, fgexp.functions, fgexp.results",
    # the LR package: Propulate and MPI load only inside the Propulate backend's run
    "fgexp.lr, fgexp.lr.recipes, fgexp.lr.grid, fgexp.lr.propulate_backend, "
    "fgexp.lr.closed_form, fgexp.lr.pruning",
])
def test_importing_loads_no_mpi_propulate_or_torchvision(modules):
    code = (f"import sys, {modules}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'mpi4py', 'propulate', 'torchvision', 'GPy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_help_lists_the_main_targets(repo_root):
    out = subprocess.run(["make", "-s", "help"], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout
    for target in ("test", "figure-3", "smoke", "plots", "lr-search", "bench"):
        assert f"  {target} " in out


def test_with_k_is_the_one_rule_of_gradients_and_k():
    from fgexp.paper import CONE_GRADIENTS, PAPER_GRADIENTS, with_k
    assert with_k(None, None, PAPER_GRADIENTS) == PAPER_GRADIENTS
    assert with_k(None, [2, 8], PAPER_GRADIENTS) == ("bp", "fg-mean:2", "fg-mean:8", "frog:2",
                                                     "frog:8")
    assert with_k(None, [3], CONE_GRADIENTS) == ("fg-mean:3", "frog:3")
    assert with_k(["bp", "fg-mean:1", "frog"], [4, 16], ()) == ("bp", "fg-mean:1", "frog:4",
                                                              "frog:16")
    assert with_k(["frog", "fg-mean"], None, ()) == ("frog:1", "fg-mean:1")
    assert with_k(["frog:2", "frog:2"], None, ()) == ("frog:2",)
    for tokens, ks, message in ((None, [0], "every k must be >= 1"), (None, [], "every k"),
                                (["frog:x"], None, "expected a gradient"),
                                (["adam"], [2], "unknown gradient")):
        with pytest.raises(ValueError, match=message):
            with_k(tokens, ks, PAPER_GRADIENTS)


FOLDERS = ("fgexp", "experiments", "benchmarks", "slurm", "tests")


def _code_files(root, folders=FOLDERS):
    for folder in folders:
        yield from (p for p in (root / folder).rglob("*") if p.suffix in (".py", ".sh"))


def test_no_sys_path_inserts(repo_root):
    needle = "sys.path." + "insert"  # split so that this file does not match itself
    hits = [str(p) for p in _code_files(repo_root) if needle in p.read_text()]
    assert hits == []


@pytest.mark.parametrize("definition", [
    '"fg-mean:2", "fg-mean:4"',                 # the paper's gradient list
    "15.0, 30.0, 45.0, 60.0",                   # the cone angles
    '"fc", "resnet18", "vit"',                  # the model names
    '"sphere", "rosenbrock", "styblinski-tang"',  # the function names
    '"frog": "projection"',                     # gradient label -> aggregation
])
def test_the_paper_constants_are_defined_once(repo_root, definition):
    # Tests may spell values out to check them; the code defines each list once.
    hits = [str(p.relative_to(repo_root)) for p in _code_files(repo_root, FOLDERS[:-1])
            if definition in p.read_text()]
    assert hits == ["fgexp/paper.py"]
