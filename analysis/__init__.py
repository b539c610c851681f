"""Statistical analysis of LoRA vs full fine-tuning timings: fitted overhead factors, honest
validation, crossover widths with bootstrap intervals and extrapolation to GPT-scale widths.

Compute first, render second: `analysis.fit`, `analysis.validate`, `analysis.bootstrap`,
`analysis.crossover_table`, `analysis.curves` and `analysis.factors` return frozen
dataclasses; `analysis.report`, `analysis.crossover_notes` and `analysis.plots` only render
them. The command line is `python -m analysis.crossover`. Nothing imports `analysis`.
"""
