"""BIDS in and out: a cohort written as a BIDS dataset (`export`), a BIDS dataset read into a cohort
(`importer`), one grid per patient (`grids`), and the entities both sides use (`entities`)."""
