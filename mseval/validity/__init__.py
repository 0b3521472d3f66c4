"""Monte Carlo validity studies: repeated simulated trials with known truth, on which the statistics of
`mseval.stats` are scored (CI coverage, test levels, forecast-derived intervals, missing data). Used by the
fast checks in tests/validity and tests/stats and by the full runs in bench/validity*.py (bench/RESULTS.md).

- `observed`: the observed NB2 analysis (coverage, type I error, the reported interval of `stats.observed_ci`);
- `forecast`: forecast-derived rate ratios, counterfactual and calibrated ratios, heterogeneity test;
- `forecasters`: K trained forecasters, the two-level variance;
- `missing`: dropout and missed visits.
"""
