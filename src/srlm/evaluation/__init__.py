"""Evaluation: how well a model judges (agreement with human rankings) and how well it answers (head-to-head win
rates, MT-Bench / AlpacaEval answers, IFEval)."""
