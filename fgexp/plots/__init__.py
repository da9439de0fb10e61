"""The plotting stage: one function per figure or table, DataFrame in, matplotlib Figure out.

Nothing here computes results: figures are rebuilt from the CSVs under results/ (`make plots`,
through experiments/plot.py and fgexp.plots.registry). Means, spreads and confidence intervals
are computed here, and always shown with n.

    style          colours, labels and order of the gradients; provenance stamp; saving
    approximation  Figures 3 and 5a
    closed_form    Figures 4, 5b (and the whole Figure 5) and the Appendix C table
    networks       Figure 6 and the ResNet18/ViT table
    benchmarks     the training-step benchmark figure
    data           reading and checking a results CSV
    registry       every figure and table by name, with the CSVs it reads
"""
from fgexp.plots import style  # noqa: F401  (first: selects the Agg backend)
from fgexp.plots.approximation import figure3, figure3_panel_ns, figure5a, figure5a_axes
from fgexp.plots.benchmarks import benchmark_steps
from fgexp.plots.closed_form import figure4, figure5, figure5b_axes, table_c
from fgexp.plots.networks import figure6, table_networks, table_networks_markdown

__all__ = ["benchmark_steps", "figure3", "figure3_panel_ns", "figure4", "figure5", "figure5a",
           "figure5a_axes", "figure5b_axes", "figure6", "table_c", "table_networks",
           "table_networks_markdown"]
