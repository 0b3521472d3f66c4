"""Trial statistics: count regression, treatment effects, responders, prognostic adjustment, power, bootstrap."""
