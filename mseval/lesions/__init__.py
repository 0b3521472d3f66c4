"""Lesions as connected components: counting, NET2 new/enlarging logic, lesion-wise matching."""
