"""Synthetic RRMS trial with known ground truth: anatomy, MRI, lesions, counterfactual rates, forecasters."""
