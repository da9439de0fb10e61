import subprocess
import sys


def test_import_fgexp_loads_no_mpi_propulate_or_torchvision():
    code = ("import sys, fgexp, fgexp.tangents, fgexp.aggregate, fgexp.directional, "
            "fgexp.functions, fgexp.results; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'mpi4py', 'propulate', 'torchvision', 'GPy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_help_lists_the_main_targets(repo_root):
    out = subprocess.run(["make", "-s", "help"], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout
    for target in ("test", "figure-3", "smoke", "plots", "lr-search", "bench"):
        assert f"  {target} " in out
