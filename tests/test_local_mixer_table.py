"""The LocalMixer table builder (fgexp/plots/local_mixer.py) on a small hand-made run directory."""
import pytest

from fgexp.nn.local_runs import COLUMNS, KEY_COLUMNS, SEARCH_COLUMNS, SEARCH_KEY_COLUMNS
from fgexp.plots.registry import BUILDERS
from fgexp.results import RunDir

# (method, aggregation, k) -> final test accuracy of seeds 0 and 1
FINAL = {("bp", "", ""): (0.97, 0.95), ("fg-a", "mean", 1): (0.90, 0.90),
         ("lg-fg-a", "mean", 1): (0.94, 0.94), ("lg-fg-a", "projection", 16): (0.93, 0.91)}


@pytest.fixture
def results(tmp_path):
    rd = RunDir(tmp_path, "local_mixer", {"epochs": 2}, COLUMNS, KEY_COLUMNS).start("cpu")
    for (method, aggregation, k), accs in FINAL.items():
        for seed, acc in enumerate(accs):
            rows = [{"size": "M/1/16", "dataset": "mnist5k", "method": method,
                     "aggregation": aggregation, "k": k, "seed": seed, "lr": 0.1, "epoch": e,
                     "train_acc": 0.99, "test_acc": acc - 0.2 * (e == 1), "train_loss": 0.1,
                     "val_loss": 0.1, "val_acc": 0.9, "test_loss": 0.2, "status": "completed"}
                    for e in (1, 2)]
            rd.write_cell(f"{method}{aggregation}{k}_{seed}", rows)
    rd.finish()
    search = RunDir(tmp_path, "local_mixer_lrs", {}, SEARCH_COLUMNS, SEARCH_KEY_COLUMNS)
    search.start("cpu")
    for lr, loss, acc, status in ((0.01, 0.5, 0.88, "completed"), (0.1, 0.4, 0.9, "completed"),
                                  (1.0, 0.1, 0.1, "diverged")):
        search.write_cell(f"bp{lr}", [{"size": "M/1/16", "dataset": "mnist5k", "method": "bp",
                                       "aggregation": "mean", "k": 1, "lr": lr, "epochs": 2,
                                       "val_loss": loss, "val_acc": acc, "status": status}])
    search.finish()
    return tmp_path


def test_table_puts_final_errors_beside_ren_et_al(results):
    outputs = BUILDERS["table-local-mixer"].build(results)
    text = outputs["table_local_mixer.md"]
    assert "3,500 training" in text and "REDUCED RUN (preset cpu)" in text
    assert "| BP | 4.00 ± 1.41 / 1.00 (n=2, lr 0.1) | 2.41 / 0.00 |" in text
    assert "| LG-FG-A, projection, k=16 | 8.00 ± 1.41 / 1.00 (n=2, lr 0.1) |  |" in text
    # gap closed: (FG-A 10 - LG-FG-A 6) / (FG-A 10 - BP 4) = 0.67; Ren et al.: 0.90
    assert "| M/1/16 mnist5k | 0.67 | 0.90 |" in text
    assert text.index("| BP |") < text.index("| FG-A |") < text.index("| LG-FG-A |")
    # the search table: the chosen rate is the least validation loss among runs not diverged
    assert "| gradient | M/1/16 mnist5k |\n|---|---|\n| BP | 10.0 |" in text
